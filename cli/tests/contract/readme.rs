//! The README runs: every ` ```sh ` block of `README.md` is executed, in order, by bash in one
//! scratch directory (`scripts/` linked, `examples/` copied, `../shared` beside it), with the
//! `kagi` and `kagi-example-service` binaries of this build first on `PATH`.
//!
//! The README's own conventions (stated in its "Using it" section):
//! - a command must exit 0, unless a comment line `#> exit N` follows it;
//! - each other `#> TEXT` line after a command: its output (stdout and stderr) contains TEXT;
//! - a command ending in `&` runs in the background and is stopped when its block ends
//!   (the whole process group gets SIGTERM, then SIGKILL).
//!
//! The one line not run is `scripts/test.sh`: that is the suite this test is part of.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One `sh` block: the line number of its first command line and its lines.
struct Block {
    first_line: usize,
    lines: Vec<String>,
}

/// One command of a block (continuation lines joined) with its expectations.
#[derive(Debug, PartialEq)]
struct Step {
    line: usize,
    text: String,
    exit: i32,
    contains: Vec<String>,
}

/// The ` ```sh ` blocks of a Markdown text, in order.
fn sh_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in markdown.lines().enumerate() {
        let fence = line.trim_start().starts_with("```");
        match (&mut current, fence) {
            (None, true) if line.trim() == "```sh" => {
                current = Some(Block {
                    first_line: i + 2,
                    lines: Vec::new(),
                })
            }
            (Some(_), true) => blocks.extend(current.take()),
            (Some(b), false) => b.lines.push(line.to_string()),
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "README.md: an sh block is not closed");
    blocks
}

/// The commands of a block with their `#>` expectations.
fn steps(block: &Block) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    let mut lines = block.lines.iter().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let line_no = block.first_line + i;
        let t = line.trim();
        if let Some(expect) = t.strip_prefix("#>") {
            let step = out
                .last_mut()
                .unwrap_or_else(|| panic!("README.md:{line_no}: `#>` before any command"));
            let expect = expect.trim();
            match expect.strip_prefix("exit ") {
                Some(n) => step.exit = n.parse().expect("`#> exit N` takes a number"),
                None => step.contains.push(expect.to_string()),
            }
            continue;
        }
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let mut text = line.clone();
        while text.trim_end().ends_with('\\') {
            let Some((_, next)) = lines.next() else { break };
            text.push('\n');
            text.push_str(next);
        }
        out.push(Step {
            line: line_no,
            text,
            exit: 0,
            contains: Vec::new(),
        });
    }
    out
}

/// Single-quoted for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The bash script that runs a block's steps and checks each one.
fn script(steps: &[Step]) -> String {
    let mut s =
        String::from("set -uo pipefail\n__fail() { echo \"README.md:$1: $2\" >&2; exit 1; }\n");
    for step in steps {
        let cmd = step.text.trim_end();
        let l = step.line;
        s.push_str(&format!("echo {}\n", quote(&format!("$ {cmd}"))));
        if cmd.split_whitespace().next() == Some("scripts/test.sh") {
            s.push_str("echo '(not run here: this test is part of it)'\n");
        } else if cmd.ends_with('&') && !cmd.ends_with("&&") {
            s.push_str(&format!("{cmd}\n"));
        } else if step.exit == 0 && step.contains.is_empty() {
            // Run in this shell so that assignments, exports and eval take effect.
            s.push_str(&format!(
                "{cmd}\n__rc=$?; [ $__rc -eq 0 ] || __fail {l} \"exit $__rc, expected 0\"\n"
            ));
        } else {
            s.push_str(&format!(
                "__o=$( {{\n{cmd}\n}} 2>&1 ); __rc=$?\nprintf '%s\\n' \"$__o\"\n\
                 [ $__rc -eq {e} ] || __fail {l} \"exit $__rc, expected {e}\"\n",
                e = step.exit
            ));
            for c in &step.contains {
                s.push_str(&format!(
                    "grep -qF -- {q} <<<\"$__o\" || __fail {l} {m}\n",
                    q = quote(c),
                    m = quote(&format!("the output lacks: {c}"))
                ));
            }
        }
    }
    s
}

/// Runs one block's script in `dir`; returns (success, combined output).
fn run(script: &str, dir: &Path, path: &str, limit: Duration) -> (bool, String) {
    let bin_dir = path.split(':').next().unwrap_or_default();
    let log = dir.join(".readme-block.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("PATH", path)
        .env("KAGI_BIN_DIR", bin_dir)
        .env_remove("KAGI_KEY")
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .process_group(0)
        .spawn()
        .expect("bash");
    let pgid = child.id() as i32;
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if start.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Stop what the block left in the background (servers), then anything that ignores it.
    for sig in ["-TERM", "-KILL"] {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(300));
    }
    let _ = child.wait();
    let mut out = String::new();
    let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut out));
    match status {
        Some(st) => (st.success(), out),
        None => (false, format!("{out}\n(timed out after {limit:?})")),
    }
}

fn link(from: &Path, to: &Path) {
    std::os::unix::fs::symlink(from, to).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            if e.file_name() != "target" {
                copy_dir(&e.path(), &target);
            }
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn every_readme_command_block_runs_in_order() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let shared = repo.join("../shared");
    if !shared.is_dir() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "../shared is missing; CI always has it beside the clone"
        );
        eprintln!("WARNING: ../shared is missing: the README blocks were NOT run");
        return;
    }
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let root = super::scratch("readme");
    let dir = root.join("kagi");
    std::fs::create_dir_all(&dir).unwrap();
    link(
        &repo.join("scripts").canonicalize().unwrap(),
        &dir.join("scripts"),
    );
    copy_dir(&repo.join("examples"), &dir.join("examples"));
    link(&shared.canonicalize().unwrap(), &root.join("shared"));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_kagi"));
    let bin_dir = bin.parent().unwrap();
    if !bin_dir.join("kagi-example-service").exists() {
        // `cargo test --workspace` builds it beside kagi; `cargo test -p kagi-cli` does not.
        let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        build
            .args([
                "build",
                "--quiet",
                "-p",
                "kagi-example-service",
                "--target-dir",
            ])
            .arg(bin_dir.parent().unwrap())
            .current_dir(&repo);
        if bin_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("cargo runs");
        assert!(status.success(), "building kagi-example-service: {status}");
    }
    assert!(
        bin_dir.join("kagi-example-service").exists(),
        "kagi-example-service is built beside kagi"
    );
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let blocks = sh_blocks(&readme);
    assert!(
        blocks.len() >= 5,
        "README.md has {} sh blocks",
        blocks.len()
    );
    for block in &blocks {
        let steps = steps(block);
        let started = Instant::now();
        let (ok, out) = run(&script(&steps), &dir, &path, Duration::from_secs(300));
        assert!(
            ok,
            "README.md block at line {} failed:\n{out}",
            block.first_line
        );
        println!(
            "README.md block at line {}: {} commands, {:.1} s",
            block.first_line,
            steps.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn steps_join_continuations_and_take_expectations() {
    let md = "text\n```sh\n# a comment\nkagi a \\\n  --b\n#> exit 3\n#> two bad\nkagi c &\n```\n";
    let blocks = sh_blocks(md);
    assert_eq!(blocks.len(), 1);
    let s = steps(&blocks[0]);
    assert_eq!(
        s,
        vec![
            Step {
                line: 4,
                text: "kagi a \\\n  --b".into(),
                exit: 3,
                contains: vec!["two bad".into()],
            },
            Step {
                line: 8,
                text: "kagi c &".into(),
                exit: 0,
                contains: vec![],
            },
        ]
    );
    // The generated script fails on a wrong exit code and on missing output.
    let dir = super::scratch("readme-self");
    let run_md = |md: &str| {
        let b = sh_blocks(md);
        run(
            &script(&steps(&b[0])),
            &dir,
            "/usr/bin:/bin",
            Duration::from_secs(10),
        )
    };
    assert!(run_md("```sh\nsh -c 'echo two bad; exit 3'\n#> exit 3\n#> two bad\n```\n").0);
    let (ok, out) = run_md("```sh\nsh -c 'exit 3'\n#> exit 2\n```\n");
    assert!(
        !ok && out.contains("README.md:2: exit 3, expected 2"),
        "{out}"
    );
    let (ok, out) = run_md("```sh\necho one\n#> two\n```\n");
    assert!(!ok && out.contains("the output lacks: two"), "{out}");
    let (ok, out) = run_md("```sh\nX=$(false)\necho after\n```\n");
    assert!(!ok && !out.contains("\nafter"), "{out}");
    assert!(run_md("```sh\nX=$(echo 5)\n[ \"$X\" = 5 ]\n```\n").0);
}
