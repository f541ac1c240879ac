//! `test-vectors check [DIR] [--expect N]`: runs every vector file in DIR through kagi's host
//! and card SCP03 and closes with `N passed, M failed`.
//!
//! Exit codes: 0 everything passed (and, with `--expect N`, exactly N vectors passed);
//! 1 a vector or file failed, or the passed count differs from N; 2 usage error or unreadable
//! directory.

use std::path::PathBuf;
use std::process::ExitCode;

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "{why}\nusage: test-vectors check [DIR] [--expect N]\n\nRuns every *.json vector file in DIR through the host and card implementations.\nWithout DIR, checks the repository's own copy. With --expect N, also fails unless exactly\nN vectors passed (pins the count so a dropped file or vector cannot go unnoticed)."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("check") {
        return usage("the only command is `check`");
    }
    let mut dir = None;
    let mut expect = None;
    while let Some(a) = args.next() {
        if a == "--expect" {
            let Some(n) = args.next() else {
                return usage("--expect needs a number");
            };
            match n.parse::<usize>() {
                Ok(n) => expect = Some(n),
                Err(_) => return usage(&format!("--expect: '{n}' is not a count")),
            }
        } else if dir.is_none() && !a.starts_with("--") {
            dir = Some(PathBuf::from(a));
        } else {
            return usage(&format!("unexpected argument '{a}'"));
        }
    }
    let dir = dir.unwrap_or_else(test_vectors::bundled_dir);
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
    let mut ok = report.ok();
    if let Some(n) = expect
        && report.passed() != n
    {
        println!(
            "expected exactly {n} passed vectors in {}, got {}: a file or vector was added or dropped; update the pinned count only after checking why",
            dir.display(),
            report.passed()
        );
        ok = false;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
