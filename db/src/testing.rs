//! Support for tests and benchmarks: a private PostgreSQL instance (own data directory, own
//! port on 127.0.0.1), started with `scripts/private-postgres.sh` and stopped — only that
//! instance — when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's script that starts and stops private instances.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/private-postgres.sh")
}

/// A free TCP port on 127.0.0.1 (bound and released: another process could take it first,
/// which the start then reports).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A running private PostgreSQL.
pub struct PrivatePostgres {
    dir: PathBuf,
    /// Its URL (`postgres://postgres@127.0.0.1:PORT/kagi`).
    pub url: String,
}

impl PrivatePostgres {
    /// Starts an instance in a new directory under the system's temporary directory.
    pub fn start(name: &str) -> Result<PrivatePostgres, String> {
        let dir = std::env::temp_dir().join(format!("kagi-pg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_port().map_err(|e| e.to_string())?;
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .arg(port.to_string())
            .output()
            .map_err(|e| format!("private-postgres.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "private PostgreSQL did not start: {}{}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("server.log")).unwrap_or_default()
            ));
        }
        Ok(PrivatePostgres {
            dir,
            url: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        })
    }

    /// Whether the machine has PostgreSQL's server programs.
    pub fn available() -> bool {
        std::fs::read_dir("/usr/lib/postgresql")
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The repository's script for private highly available formations.
fn ha_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/private-ha-postgres.sh")
}

/// A running private PostgreSQL formation on pg_auto_failover: a monitor, a primary and a
/// synchronous secondary (`scripts/private-ha-postgres.sh`), stopped — only it — when
/// dropped.
pub struct PrivateFormation {
    dir: PathBuf,
    /// The multi-host URL that follows the primary (`target_session_attrs=read-write`).
    pub url: String,
}

impl PrivateFormation {
    /// Starts a formation in a new directory under the system's temporary directory, on
    /// three free ports from a random base.
    pub fn start(name: &str) -> Result<PrivateFormation, String> {
        let dir = std::env::temp_dir().join(format!("kagi-ha-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Three consecutive ports: try a few bases until one has all three free.
        let mut last = String::new();
        for _ in 0..5 {
            let base = free_port().map_err(|e| e.to_string())?;
            if base > 65000
                || (1..3).any(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_err())
            {
                continue;
            }
            let out = Command::new("bash")
                .arg(ha_script())
                .arg("start")
                .arg(&dir)
                .arg(base.to_string())
                .output()
                .map_err(|e| format!("private-ha-postgres.sh: {e}"))?;
            if out.status.success() {
                return Ok(PrivateFormation {
                    dir,
                    url: String::from_utf8_lossy(&out.stdout).trim().to_string(),
                });
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            let _ = Command::new("bash")
                .arg(ha_script())
                .arg("stop")
                .arg(&dir)
                .status();
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(format!("the private formation did not start: {last}"))
    }

    /// The formation's directory (its nodes' data directories and logs).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Whether the machine has pg_auto_failover.
    pub fn available() -> bool {
        PrivatePostgres::available()
            && Command::new("pg_autoctl")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
    }

    /// The current primary's postmaster PID.
    pub fn primary_pid(&self) -> Result<u32, String> {
        let out = Command::new("bash")
            .arg(ha_script())
            .arg("primary")
            .arg(&self.dir)
            .output()
            .map_err(|e| e.to_string())?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("no primary: {}", String::from_utf8_lossy(&out.stderr)))
    }

    /// Kills the primary's PostgreSQL with SIGKILL (a crash, not a shutdown); returns its PID.
    pub fn kill_primary(&self) -> Result<u32, String> {
        let pid = self.primary_pid()?;
        let st = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .map_err(|e| e.to_string())?;
        if st.success() {
            Ok(pid)
        } else {
            Err(format!("kill -KILL {pid} failed"))
        }
    }

    /// The formation's state table (for a failing test's message).
    pub fn state(&self) -> String {
        Command::new("bash")
            .arg(ha_script())
            .arg("state")
            .arg(&self.dir)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for PrivateFormation {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(ha_script())
            .arg("stop")
            .arg(&self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
