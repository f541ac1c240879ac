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
