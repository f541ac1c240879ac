//! The TSM's state, in a real database: SQLite (embedded, one file, the default) or
//! PostgreSQL (several TSM instances sharing state behind a load balancer).
//!
//! Both backends run the same SQL (PostgreSQL's `$n` placeholders, rewritten to `?n` for
//! SQLite) through two primitives: a read ([`Store::query`]) and an atomic batch of writes
//! ([`Store::commit`]) in which a statement may be required to change exactly one row — the
//! compare-and-swap on an operation's version that keeps two instances from both advancing
//! it. The typed API the server uses ([`ops`]) is built on those.

pub mod ops;
mod postgres;
mod sqlite;

use thiserror::Error;

/// A value bound to or read from a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Val {
    /// A 64-bit integer.
    Int(i64),
    /// Text.
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
    /// SQL NULL.
    Null,
}

impl From<i64> for Val {
    fn from(v: i64) -> Val {
        Val::Int(v)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.into())
    }
}
impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}
impl From<Vec<u8>> for Val {
    fn from(v: Vec<u8>) -> Val {
        Val::Blob(v)
    }
}
impl From<&[u8]> for Val {
    fn from(v: &[u8]) -> Val {
        Val::Blob(v.to_vec())
    }
}
impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map(Into::into).unwrap_or(Val::Null)
    }
}

impl Val {
    /// The integer, or 0.
    pub fn int(&self) -> i64 {
        match self {
            Val::Int(i) => *i,
            _ => 0,
        }
    }
    /// The text, or "".
    pub fn text(&self) -> String {
        match self {
            Val::Text(t) => t.clone(),
            _ => String::new(),
        }
    }
    /// The bytes, or empty.
    pub fn blob(&self) -> Vec<u8> {
        match self {
            Val::Blob(b) => b.clone(),
            _ => Vec::new(),
        }
    }
    /// `None` for NULL, else the text.
    pub fn opt_text(&self) -> Option<String> {
        match self {
            Val::Text(t) => Some(t.clone()),
            _ => None,
        }
    }
}

/// What a write in a batch must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Anything.
    Any,
    /// Change exactly one row; otherwise the whole batch is rolled back and reports a
    /// conflict.
    One,
}

/// One statement of a batch.
#[derive(Debug, Clone)]
pub struct Stmt {
    /// SQL with `$1`, `$2` ... placeholders.
    pub sql: &'static str,
    /// The values.
    pub params: Vec<Val>,
    /// What it must change.
    pub expect: Expect,
}

impl Stmt {
    /// A statement that may change any number of rows.
    pub fn any(sql: &'static str, params: Vec<Val>) -> Stmt {
        Stmt {
            sql,
            params,
            expect: Expect::Any,
        }
    }
    /// A statement that must change exactly one row.
    pub fn one(sql: &'static str, params: Vec<Val>) -> Stmt {
        Stmt {
            sql,
            params,
            expect: Expect::One,
        }
    }
}

/// Why the database refused.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database could not be reached or refused a statement.
    #[error("database: {0}")]
    Db(String),
    /// A statement of a batch that had to change one row did not (another instance got
    /// there first): nothing was written.
    #[error("conflict: the state changed meanwhile (statement {0} of the batch)")]
    Conflict(usize),
    /// The schema is newer than this TSM.
    #[error("the database schema is version {0}, newer than this TSM ({1}): upgrade kagi")]
    TooNew(i64, i64),
}

/// Which database.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A SQLite file.
    Sqlite(std::path::PathBuf),
    /// A PostgreSQL URL (`postgres://user@host/db`).
    Postgres(String),
}

impl Backend {
    /// `postgres://…` (or `postgresql://…`) is PostgreSQL, anything else a SQLite file path
    /// (`sqlite:` prefix optional).
    pub fn parse(s: &str) -> Backend {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Backend::Postgres(s.into())
        } else {
            Backend::Sqlite(s.strip_prefix("sqlite:").unwrap_or(s).into())
        }
    }
}

/// An open database.
#[derive(Clone)]
pub enum Store {
    /// SQLite.
    Sqlite(sqlite::Sqlite),
    /// PostgreSQL.
    Postgres(postgres::Postgres),
}

/// The schema version this TSM writes.
pub const SCHEMA_VERSION: i64 = 1;

/// The tables, in PostgreSQL's words; SQLite gets the same with its own types.
const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS ops (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, party TEXT NOT NULL, state TEXT NOT NULL,
        iccid TEXT NOT NULL, idem_key TEXT, request_hash BYTES, parent TEXT,
        created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
        version BIGINT NOT NULL, data BYTES NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS ops_idem ON ops (party, idem_key)",
    "CREATE INDEX IF NOT EXISTS ops_card ON ops (iccid, state)",
    "CREATE TABLE IF NOT EXISTS replay (
        sender TEXT NOT NULL, msg_id TEXT NOT NULL, keep_until BIGINT NOT NULL,
        PRIMARY KEY (sender, msg_id))",
    "CREATE TABLE IF NOT EXISTS tickets (hash BYTES PRIMARY KEY, op_id TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY, op_id TEXT NOT NULL, seq BIGINT NOT NULL,
        reply BYTES NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cards (
        iccid TEXT PRIMARY KEY, cin TEXT NOT NULL, sd_aid BYTES NOT NULL,
        free_memory BIGINT NOT NULL, state TEXT NOT NULL, replaced_by TEXT,
        mno TEXT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS credentials (
        op_id TEXT PRIMARY KEY, iccid TEXT NOT NULL, party TEXT NOT NULL, state TEXT NOT NULL,
        reason TEXT, serial TEXT NOT NULL, not_after BIGINT NOT NULL,
        my_number_serial TEXT NOT NULL, instance BYTES NOT NULL,
        deletion_pending BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS credentials_card ON credentials (iccid)",
    "CREATE TABLE IF NOT EXISTS audit (
        id SERIAL_PK, op_id TEXT NOT NULL, at BIGINT NOT NULL, actor TEXT NOT NULL,
        event TEXT NOT NULL, detail TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS audit_op ON audit (op_id, id)",
    "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)",
];

impl Store {
    /// Opens (creating and migrating) the database.
    pub async fn open(backend: &Backend) -> Result<Store, StoreError> {
        let store = match backend {
            Backend::Sqlite(path) => Store::Sqlite(sqlite::Sqlite::open(path)?),
            Backend::Postgres(url) => Store::Postgres(postgres::Postgres::open(url).await?),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Which backend, for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgresql",
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let ddl: Vec<String> = SCHEMA
            .iter()
            .map(|s| match self {
                Store::Sqlite(_) => s
                    .replace("BYTES", "BLOB")
                    .replace("SERIAL_PK", "INTEGER PRIMARY KEY AUTOINCREMENT"),
                Store::Postgres(_) => s
                    .replace("BYTES", "BYTEA")
                    .replace("SERIAL_PK", "BIGSERIAL PRIMARY KEY"),
            })
            .collect();
        match self {
            Store::Sqlite(s) => s.ddl(&ddl).await?,
            Store::Postgres(p) => p.ddl(&ddl).await?,
        }
        let rows = self
            .query("SELECT version FROM schema_version", vec![])
            .await?;
        match rows.first().map(|r| r[0].int()) {
            None => {
                self.commit(vec![Stmt::any(
                    "INSERT INTO schema_version (version) VALUES ($1)",
                    vec![SCHEMA_VERSION.into()],
                )])
                .await?;
            }
            Some(v) if v > SCHEMA_VERSION => return Err(StoreError::TooNew(v, SCHEMA_VERSION)),
            Some(_) => {}
        }
        Ok(())
    }

    /// Runs a read.
    pub async fn query(
        &self,
        sql: &'static str,
        params: Vec<Val>,
    ) -> Result<Vec<Vec<Val>>, StoreError> {
        match self {
            Store::Sqlite(s) => s.query(sql, params).await,
            Store::Postgres(p) => p.query(sql, params).await,
        }
    }

    /// Runs writes atomically: all of them, or (on any error or an [`Expect::One`] that
    /// changed another number of rows) none.
    pub async fn commit(&self, batch: Vec<Stmt>) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.commit(batch).await,
            Store::Postgres(p) => p.commit(batch).await,
        }
    }
}

/// `$1` → `?1` (SQLite's numbered parameters).
pub(crate) fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_backends() {
        assert_eq!(sqlite_sql("a = $1 AND b = $12"), "a = ?1 AND b = ?12");
        assert!(matches!(
            Backend::parse("postgres://x/y"),
            Backend::Postgres(_)
        ));
        assert!(
            matches!(Backend::parse("sqlite:/tmp/a.db"), Backend::Sqlite(p) if p.to_str() == Some("/tmp/a.db"))
        );
        assert!(matches!(Backend::parse("tsm.db"), Backend::Sqlite(_)));
    }
}
