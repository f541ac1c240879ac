//! The CLI's exit-code table, row by row (`kagi --help` prints it), the JSON form of errors,
//! the batch checks that protect a bureau (columns against the profile's placeholders, resume
//! with another batch's files, SIGINT at a safe point) and a closed stdout pipe.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::{kagi_bin, perso_batch};

fn run(c: &mut Command) -> Output {
    c.output().unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kagi-exit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn kagi(args: &[&str]) -> Output {
    run(Command::new(kagi_bin()).args(args))
}

/// One JSON document on stdout with the schema version.
fn json_doc(o: &Output) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {}", text(o)));
    assert_eq!(v["schema_version"], 1, "{}", text(o));
    v
}

fn members_csv(dir: &Path, rows: usize) -> PathBuf {
    let mut s = String::from("id,member_no,name,points\n");
    for i in 0..rows {
        s.push_str(&format!(
            "X{i:04},{},TEST MEMBER {i},{}\n",
            200000 + i,
            i % 50
        ));
    }
    let p = dir.join("records.csv");
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn help_prints_the_table() {
    let o = kagi(&["--help"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    for row in [
        "0    success",
        "1    failure",
        "2    usage",
        "3    done with failures",
        "4    not eligible",
        "130  interrupted",
    ] {
        assert!(help.contains(row), "--help lacks '{row}':\n{help}");
    }
}

#[test]
fn success_failure_and_usage() {
    let o = kagi(&["gp", "list", "--sim"]);
    assert_eq!(code(&o), 0, "{}", text(&o));

    // Operational failure: a key file that does not exist.
    let o = kagi(&[
        "gp",
        "list",
        "--sim",
        "--key-file",
        "/nonexistent/kagi.keys",
        "--json",
    ]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    let v = json_doc(&o);
    let err = &v["error"];
    assert!(err["code"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("/nonexistent/kagi.keys")),
        "{v}"
    );

    // Usage: an unknown flag; under --json the refusal is JSON too.
    let o = kagi(&["gp", "list", "--sim", "--no-such-flag"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    let o = kagi(&["gp", "list", "--sim", "--no-such-flag", "--json"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert_eq!(json_doc(&o)["error"]["code"], "usage");

    // A server with no thread to serve on is a usage error, before anything is read.
    for cmd in ["tsm", "sp-tsm", "mno-tsm", "jpki-issuer", "broker"] {
        let o = kagi(&[
            cmd,
            "serve",
            "--config",
            "/nonexistent.toml",
            "--workers",
            "0",
        ]);
        assert_eq!(code(&o), 2, "{cmd}: {}", text(&o));
        assert!(text(&o).contains("--workers"), "{cmd}: {}", text(&o));
    }
}

#[test]
fn a_wrong_pin_is_a_json_error_with_tries_left() {
    let dir = scratch("pin");
    let img = dir.join("card.img");
    let img = img.to_str().unwrap();
    // A demo JPKI card kept in an image; a wrong PIN through the environment, never argv.
    let o = kagi(&[
        "jpki",
        "info",
        "--sim",
        "--sim-preset",
        "jpki-demo",
        "--sim-image",
        img,
    ]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = run(Command::new(kagi_bin())
        .args([
            "jpki",
            "verify",
            "--sim",
            "--sim-image",
            img,
            "--pin-env",
            "KAGI_T_PIN",
            "--json",
        ])
        .env("KAGI_T_PIN", "9999"));
    assert_eq!(code(&o), 1, "{}", text(&o));
    let v = json_doc(&o);
    assert_eq!(v["error"]["code"], "pin.wrong", "{v}");
    assert_eq!(v["error"]["tries_left"], 2, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn not_eligible_is_its_own_code() {
    let dir = scratch("elig");
    let o = kagi(&["ca", "init", "--dir", dir.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let ca = dir.join("auth-ca.crt.pem");
    // A GlobalPlatform test card has no JPKI AP: not-a-jpki-card.
    let o = kagi(&[
        "eligibility",
        "read",
        "--sim",
        "--ca",
        ca.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code(&o), 4, "{}", text(&o));
    assert_eq!(json_doc(&o)["verdict"], "not-a-jpki-card");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_batch_with_unusable_records_is_done_with_failures() {
    let dir = scratch("bad");
    let input = dir.join("records.csv");
    // One good record, one duplicate id, one with an empty field.
    std::fs::write(
        &input,
        "id,member_no,name,points\nB1,1,ONE,1\nB1,2,TWO,2\nB3,,THREE,3\n",
    )
    .unwrap();
    let o = run(perso_batch("run", &input, &dir.join("out")).args(["--sim", "1", "--json"]));
    assert_eq!(code(&o), 3, "{}", text(&o));
    let v = json_doc(&o);
    assert_eq!(v["done"], 1, "{v}");
    assert_eq!(v["bad_records"], 2, "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_batch_whose_columns_miss_a_placeholder_is_refused_before_it_starts() {
    let dir = scratch("cols");
    let input = dir.join("records.csv");
    // `member_number` where the profile says {member_no}.
    std::fs::write(
        &input,
        "id,member_number,name,points\nC1,1,ONE,1\nC2,2,TWO,2\n",
    )
    .unwrap();
    let out = dir.join("out");
    let o = run(perso_batch("run", &input, &out).args(["--sim", "1"]));
    assert_eq!(code(&o), 1, "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("{member_no}"), "{err}");
    assert!(
        err.contains("member_number"),
        "the message lists the columns present: {err}"
    );
    assert!(
        !out.join("journal.jsonl").exists() && !out.join("report.csv").exists(),
        "no journal or report for a refused batch"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_refuses_another_batchs_input() {
    let dir = scratch("digest");
    let input = members_csv(&dir, 3);
    let out = dir.join("out");
    let o = run(perso_batch("run", &input, &out).args(["--sim", "1"]));
    assert_eq!(code(&o), 0, "{}", text(&o));
    // The same batch resumes (nothing left to do).
    let o = run(perso_batch("resume", &input, &out).args(["--sim", "1"]));
    assert_eq!(code(&o), 0, "{}", text(&o));
    // Another input (one more record) is refused and personalises nothing.
    let other = dir.join("other.csv");
    let mut s = std::fs::read_to_string(&input).unwrap();
    s.push_str("Y0001,300001,INTRUDER,1\n");
    std::fs::write(&other, s).unwrap();
    let o = run(perso_batch("resume", &other, &out).args(["--sim", "1"]));
    assert_eq!(code(&o), 1, "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("another input records file"),
        "{}",
        text(&o)
    );
    let journal = std::fs::read_to_string(out.join("journal.jsonl")).unwrap();
    assert!(
        !journal.contains("Y0001"),
        "the other batch's record reached the journal"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The journal's `done` events so far.
fn done_events(out: &Path) -> usize {
    std::fs::read_to_string(out.join("journal.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"event\":\"done\""))
        .count()
}

#[test]
fn sigint_stops_a_batch_at_a_safe_point_and_names_the_resume_command() {
    let dir = scratch("sigint");
    let rows = 400;
    let input = members_csv(&dir, rows);
    let out = dir.join("out");
    let child = perso_batch("run", &input, &out)
        .args(["--sim", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the batch is under way (a card is done), not before.
    let start = Instant::now();
    while done_events(&out) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the batch never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 130, "{}", text(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(" done, "), "no summary: {}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let resume = stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("kagi perso resume"))
        .unwrap_or_else(|| panic!("no resume command: {}", text(&o)));
    assert!(out.join("report.csv").exists(), "no report");
    let done = done_events(&out);
    assert!(done < rows, "the batch was not interrupted ({done} done)");
    // The printed command continues the batch to its end (run through a shell as a user would,
    // with the kagi binary under test).
    let o = run(Command::new("sh").arg("-c").arg(format!(
        "{} {}",
        kagi_bin(),
        resume.strip_prefix("kagi ").unwrap()
    )));
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(
        done_events(&out),
        rows,
        "every record done once after the resume"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_closed_stdout_pipe_is_no_panic() {
    for _ in 0..3 {
        // The reader is gone before kagi writes (println!, not clap's own help writer).
        let o = run(Command::new("bash").arg("-c").arg(format!(
            "set -o pipefail; {{ sleep 0.2; exec {} gp list --sim; }} | true; echo \"status ${{PIPESTATUS[0]}}\" >&2",
            kagi_bin()
        )));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{err}");
        // Killed by SIGPIPE (128 + 13), as any Unix tool; never a panic's 101.
        assert!(
            err.contains("status 141") || err.contains("status 0"),
            "{err}"
        );
    }
}
