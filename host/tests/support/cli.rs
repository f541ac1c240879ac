//! Running `kagi` processes in tests: a command, its output checked, JSON fields, a TSM
//! process on a configuration made by `kagi tsm init`.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn kagi() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kagi"))
}

pub fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "{:?}: {}{}",
        c,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn field(json: &str, key: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v[key].as_str().unwrap_or_default().to_string()
}

pub fn serve(dir: &Path) -> Child {
    kagi()
        .args(["tsm", "serve", "--config"])
        .arg(dir.join("tsm/tsm.toml"))
        .arg("--insecure-file-keys")
        .arg(dir.join("tsm/keys"))
        .env("KAGI_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

pub fn wait_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the TSM did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn audit(dir: &Path, op: &str) -> String {
    ok(kagi()
        .args(["tsm", "audit", "--op", op, "--database"])
        .arg(dir.join("tsm/tsm.db")))
}
