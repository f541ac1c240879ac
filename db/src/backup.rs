//! Online backups and their restore — the operator's procedure for a broker's or a TSM's
//! databases (README, "Backup and restore").
//!
//! - SQLite: SQLite's online backup API, every page in one step under one read transaction
//!   while the service keeps writing (WAL mode: writers are not blocked), so the copy is one
//!   consistent state; the copy is checked with `PRAGMA integrity_check`.
//! - PostgreSQL: `pg_dump --format=custom` (one consistent snapshot); restored with
//!   `pg_restore --single-transaction` into an empty database. The connection's password
//!   goes to the tools in their environment (`PGPASSWORD`), never on their command line.
//!
//! Backup files are created new, mode 0600. They hold sealed records only: the keys that
//! open them are in the key store (HSM), backed up by its own procedure.

use crate::{Backend, StoreError};
use std::path::Path;
use std::process::Command;

/// What a backup file holds, by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    /// A SQLite database file.
    Sqlite,
    /// A PostgreSQL custom-format dump.
    PgDump,
}

impl BackupKind {
    /// The file name extension kagi gives it.
    pub fn extension(self) -> &'static str {
        match self {
            BackupKind::Sqlite => "db",
            BackupKind::PgDump => "pgdump",
        }
    }

    /// Recognises a backup file by its magic bytes.
    pub fn of_file(file: &Path) -> Result<BackupKind, StoreError> {
        use std::io::Read;
        let mut head = [0u8; 16];
        let n = std::fs::File::open(file)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|e| err(format!("{}: {e}", file.display())))?;
        match &head[..n] {
            h if h.starts_with(b"SQLite format 3\0") => Ok(BackupKind::Sqlite),
            h if h.starts_with(b"PGDMP") => Ok(BackupKind::PgDump),
            _ => Err(err(format!(
                "{} is neither a SQLite database nor a pg_dump custom-format file",
                file.display()
            ))),
        }
    }
}

fn err(m: String) -> StoreError {
    StoreError::Db(m)
}

/// A new file, mode 0600, that must not exist yet.
fn create_new(file: &Path) -> Result<std::fs::File, StoreError> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(file).map_err(|e| {
        err(format!(
            "{}: {e} (a backup or restore never overwrites a file)",
            file.display()
        ))
    })
}

/// Backs `source` up into `file` (created; it must not exist) while it stays in use.
/// Blocking: run it off an async runtime's workers.
pub fn backup(source: &Backend, file: &Path) -> Result<BackupKind, StoreError> {
    match source {
        Backend::Sqlite(path) => {
            if !path.is_file() {
                return Err(err(format!("{}: no such database", path.display())));
            }
            let src = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .map_err(|e| err(format!("{}: {e}", path.display())))?;
            drop(create_new(file)?);
            let mut dst = rusqlite::Connection::open(file)
                .map_err(|e| err(format!("{}: {e}", file.display())))?;
            copy_all(&src, &mut dst)
                .map_err(|e| err(format!("backup of {}: {e}", path.display())))?;
            check_sqlite(&dst, file)?;
            Ok(BackupKind::Sqlite)
        }
        Backend::Postgres(url) => {
            drop(create_new(file)?);
            let (conninfo, password) = conninfo(url)?;
            let mut cmd = Command::new("pg_dump");
            cmd.args(["--format=custom", "--no-owner", "--file"])
                .arg(file)
                .arg(format!("--dbname={conninfo}"));
            run(cmd, password.as_deref(), "pg_dump")?;
            Ok(BackupKind::PgDump)
        }
    }
}

/// Every page in one step (one read transaction on the source: one consistent state); a
/// source busy with a checkpoint is retried for up to 10 s.
fn copy_all(src: &rusqlite::Connection, dst: &mut rusqlite::Connection) -> rusqlite::Result<()> {
    use rusqlite::backup::{Backup, StepResult};
    let b = Backup::new(src, dst)?;
    for _ in 0..1000 {
        match b.step(-1)? {
            StepResult::Done => return Ok(()),
            StepResult::More | StepResult::Busy | StepResult::Locked => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    Err(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some("the source stayed busy for 10 s".into()),
    ))
}

fn check_sqlite(c: &rusqlite::Connection, file: &Path) -> Result<(), StoreError> {
    let verdict: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| err(format!("{}: {e}", file.display())))?;
    if verdict == "ok" {
        Ok(())
    } else {
        Err(err(format!(
            "{}: integrity check failed: {verdict}",
            file.display()
        )))
    }
}

/// Restores the backup `file` into `target`: a SQLite file that does not exist yet, or an
/// empty PostgreSQL database. Blocking.
pub fn restore(file: &Path, target: &Backend) -> Result<BackupKind, StoreError> {
    let kind = BackupKind::of_file(file)?;
    match (kind, target) {
        (BackupKind::Sqlite, Backend::Sqlite(path)) => {
            let src = rusqlite::Connection::open_with_flags(
                file,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )
            .map_err(|e| err(format!("{}: {e}", file.display())))?;
            check_sqlite(&src, file)?;
            drop(create_new(path)?);
            let mut dst = rusqlite::Connection::open(path)
                .map_err(|e| err(format!("{}: {e}", path.display())))?;
            copy_all(&src, &mut dst)
                .map_err(|e| err(format!("restore into {}: {e}", path.display())))?;
        }
        (BackupKind::PgDump, Backend::Postgres(url)) => {
            let (conninfo, password) = conninfo(url)?;
            let mut cmd = Command::new("pg_restore");
            cmd.args(["--exit-on-error", "--single-transaction", "--no-owner"])
                .arg(format!("--dbname={conninfo}"))
                .arg(file);
            run(cmd, password.as_deref(), "pg_restore")?;
        }
        (k, t) => {
            return Err(err(format!(
                "{} is a {} backup; it restores into a {} database, not into {}",
                file.display(),
                if k == BackupKind::Sqlite {
                    "SQLite"
                } else {
                    "PostgreSQL"
                },
                if k == BackupKind::Sqlite {
                    "SQLite"
                } else {
                    "PostgreSQL"
                },
                t.location()
            )));
        }
    }
    Ok(kind)
}

/// A libpq connection string without the password, and the password.
fn conninfo(url: &str) -> Result<(String, Option<String>), StoreError> {
    use tokio_postgres::config::Host;
    let c: tokio_postgres::Config = url
        .parse()
        .map_err(|e| err(format!("{}: {e}", crate::redact_url(url))))?;
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut parts = Vec::new();
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(s) => s.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    if !hosts.is_empty() {
        parts.push(format!("host={}", q(&hosts.join(","))));
    }
    let ports: Vec<String> = c.get_ports().iter().map(u16::to_string).collect();
    if !ports.is_empty() {
        parts.push(format!("port={}", q(&ports.join(","))));
    }
    if let Some(u) = c.get_user() {
        parts.push(format!("user={}", q(u)));
    }
    if let Some(d) = c.get_dbname() {
        parts.push(format!("dbname={}", q(d)));
    }
    let password = c
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    Ok((parts.join(" "), password))
}

fn run(mut cmd: Command, password: Option<&str>, tool: &str) -> Result<(), StoreError> {
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd.output().map_err(|e| {
        err(format!(
            "{tool}: {e} (install PostgreSQL's client programs: scripts/setup.sh)"
        ))
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "{tool} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
