//! `test-vectors check DIR`: runs every vector file in DIR through kagi's host and card SCP03
//! and closes with `N passed, M failed`.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: test-vectors check DIR\n\nRuns every *.json vector file in DIR through the host and card implementations.\nWithout DIR, checks the repository's own copy."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = match args.as_slice() {
        [cmd] if cmd == "check" => test_vectors::bundled_dir(),
        [cmd, dir] if cmd == "check" => PathBuf::from(dir),
        _ => return usage(),
    };
    let report = match test_vectors::check_dir(&dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot read directory {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    for file in &report.files {
        println!("{}", file.line());
        for (i, why) in &file.failures {
            println!("  vector {i}: {why}");
        }
    }
    if report.files.is_empty() {
        println!("no *.json vector files in {}", dir.display());
    }
    println!("{} passed, {} failed", report.passed(), report.failed());
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
