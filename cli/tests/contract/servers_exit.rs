//! Servers shut down gracefully: `kagi tsm serve` and `kagi broker serve` stop on SIGTERM and
//! on SIGINT, close their databases and exit 0, so a service manager sees a clean stop. Their
//! logs, written to a file, carry no ANSI colour codes.

use crate::scratch;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

fn kagi(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_kagi"));
    c.args(args).current_dir(dir);
    c
}

fn ok(dir: &Path, args: &[&str]) {
    let o = kagi(dir, args).output().unwrap();
    assert!(
        o.status.success(),
        "kagi {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn port() -> u16 {
    kagi_db::testing::free_port().unwrap()
}

fn wait_listening(child: &mut Child, port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the server exited before it listened: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no listener on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` and returns the exit code, waiting at most 20 s (then kills and fails).
fn stop(child: &mut Child, signal: Signal) -> Option<i32> {
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running 20 s after {signal:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn tsm_serve_exits_0_on_sigterm_and_sigint() {
    let d = scratch("tsm");
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let p = port();
        let _ = std::fs::remove_dir_all(d.join("tsm"));
        ok(
            &d,
            &[
                "tsm",
                "init",
                "--dir",
                "tsm",
                "--listen",
                &format!("127.0.0.1:{p}"),
            ],
        );
        let mut child = kagi(
            &d,
            &[
                "tsm",
                "serve",
                "--config",
                "tsm/tsm.toml",
                "--insecure-file-keys",
                "tsm/keys",
            ],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("tsm.log")).unwrap())
        .spawn()
        .unwrap();
        wait_listening(&mut child, p);
        assert_eq!(
            stop(&mut child, signal),
            Some(0),
            "tsm serve after {signal:?}"
        );
        // The start-up line says where the data is.
        let log = std::fs::read_to_string(d.join("tsm.log")).unwrap();
        assert!(
            log.contains("database=sqlite ") && log.contains("tsm.db"),
            "{log}"
        );
    }
}

#[test]
fn broker_serve_exits_0_on_sigterm_and_sigint() {
    let d = scratch("broker");
    ok(&d, &["ca", "init", "--dir", "pki"]);
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let p = port();
        let _ = std::fs::remove_dir_all(d.join("broker"));
        ok(
            &d,
            &[
                "broker",
                "init",
                "--dir",
                "broker",
                "--ca-dir",
                "pki",
                "--listen",
                &format!("127.0.0.1:{p}"),
            ],
        );
        let mut child = kagi(
            &d,
            &[
                "broker",
                "serve",
                "--config",
                "broker/broker.toml",
                "--insecure-file-keys",
                "broker/keys",
            ],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("broker.log")).unwrap())
        .spawn()
        .unwrap();
        wait_listening(&mut child, p);
        assert_eq!(
            stop(&mut child, signal),
            Some(0),
            "broker serve after {signal:?}"
        );
        let log = std::fs::read_to_string(d.join("broker.log")).unwrap();
        assert!(log.contains("shutting down"), "{log}");
        assert!(
            log.contains("database=sqlite ") && log.contains("broker.db"),
            "{log}"
        );
        assert!(
            !log.contains('\x1b'),
            "ANSI escapes in the log file: {log:?}"
        );
    }
}
