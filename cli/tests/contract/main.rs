//! The CLI's contract with scripts, in one test binary: every `--json` document matches its
//! published schema in `schemas/` (card, JPKI, CA and batch commands; the TSM's; the broker's),
//! the README's table names a schema and exit codes for every command, and the servers stop
//! cleanly (exit 0) on SIGTERM and SIGINT.

#[path = "../support/mod.rs"]
mod support;

mod json_broker;
mod json_card;
mod json_tsm;
mod readme;
mod run_cap;
mod servers_exit;
mod vocabulary;

use std::path::PathBuf;
use std::process::Output;

/// Kills the server it holds when dropped, so a failing assertion leaves no process behind.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A command's status and both outputs, for assertion messages.
fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An empty scratch directory of this test process.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kagi-contract-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
