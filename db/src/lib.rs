//! # kagi-db
//!
//! The state of kagi's servers (the TSM, the credential broker) in a real database: SQLite
//! (embedded, one file, the default) or PostgreSQL (several instances sharing state behind a
//! load balancer).
//!
//! Both backends run the same SQL (PostgreSQL's `$n` placeholders, rewritten to `?n` for
//! SQLite) through two primitives: a read ([`Db::query`]) and an atomic batch of writes
//! ([`Db::commit`]) in which a statement may be required to change exactly one row — the
//! compare-and-swap that keeps two instances from both advancing the same record. Each
//! server brings its own [`Schema`] and builds its typed records on these.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backup;
mod postgres;
mod sqlite;
pub mod testing;

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
    /// The schema is newer than this build.
    #[error("the database schema is version {0}, newer than this kagi ({1}): upgrade kagi")]
    TooNew(i64, i64),
    /// The schema is older than this build and it has no step from that version: nothing was
    /// changed.
    #[error(
        "the database's {component} schema is version {from}; this kagi has no migration from it (its schema is version {to}): upgrade through a kagi that knows version {from}"
    )]
    NoMigration {
        /// Whose tables.
        component: &'static str,
        /// The database's version.
        from: i64,
        /// This build's.
        to: i64,
    },
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

    /// Where the data is, for a log line: the SQLite file's path, or the PostgreSQL URL with
    /// its password (user-info or `password=` parameter) replaced by `***`.
    pub fn location(&self) -> String {
        match self {
            Backend::Sqlite(p) => format!("sqlite {}", p.display()),
            Backend::Postgres(url) => format!("postgresql {}", redact_url(url)),
        }
    }
}

fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail: Vec<String> = tail
        .split('&')
        .map(|kv| {
            let (head, key_value) = match kv.rfind(['?', '&']) {
                Some(i) => kv.split_at(i + 1),
                None => ("", kv),
            };
            match key_value.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{head}{k}=***"),
                _ => kv.to_string(),
            }
        })
        .collect();
    format!("{scheme}://{authority}{}", tail.join("&"))
}

#[cfg(test)]
mod location_tests {
    use super::Backend;

    #[test]
    fn the_location_names_the_file_or_the_server_never_the_password() {
        assert_eq!(
            Backend::parse("sqlite:/var/lib/kagi/tsm.db").location(),
            "sqlite /var/lib/kagi/tsm.db"
        );
        assert_eq!(
            Backend::parse("postgres://tsm:s3cret@db.example:5432/tsm?sslmode=require").location(),
            "postgresql postgres://tsm:***@db.example:5432/tsm?sslmode=require"
        );
        assert_eq!(
            Backend::parse("postgresql://tsm@/tsm?host=/run/pg&password=s3cret").location(),
            "postgresql postgresql://tsm@/tsm?host=/run/pg&password=***"
        );
    }
}

/// An open database.
#[derive(Clone)]
pub enum Db {
    /// SQLite.
    Sqlite(sqlite::Sqlite),
    /// PostgreSQL.
    Postgres(postgres::Postgres),
}

/// A server's tables: DDL in PostgreSQL's words (`BYTES` for binary columns, `SERIAL_PK` for
/// an auto-increment key; SQLite gets its own types), under a name and a version kept in the
/// database, so a server never runs on a schema newer than it knows.
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// Whose tables (`tsm`, `broker`).
    pub name: &'static str,
    /// The version this build writes.
    pub version: i64,
    /// `CREATE TABLE IF NOT EXISTS …` / `CREATE INDEX IF NOT EXISTS …` statements: the
    /// tables as this version has them (a new database is created so).
    pub ddl: &'static [&'static str],
    /// How a database of an earlier version becomes this one: a step per version, in order
    /// (`to` = 2, 3, …); run before `ddl`, in one transaction with the version's update, so a
    /// failed step leaves the database as it was.
    pub migrations: &'static [Migration],
}

/// One step of a schema's history: the statements (PostgreSQL's words, as in
/// [`Schema::ddl`]) that bring a database from version `to - 1` to `to`, such as
/// `ALTER TABLE … ADD COLUMN …`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The version this step brings the database to.
    pub to: i64,
    /// Its statements.
    pub statements: &'static [&'static str],
}

/// The tables every schema shares: the versions, and the health check's row.
pub(crate) const BASE_DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS kagi_health (id BIGINT PRIMARY KEY, at BIGINT NOT NULL)",
];

impl Schema {
    /// What brings a database at version `found` (`None`: a new one) to this schema, in order
    /// and in `translate`'s words: the steps from `found`, then the DDL (which may name what
    /// the steps added). A newer version, or one with no step from it, is refused.
    pub(crate) fn upgrade(
        &self,
        found: Option<i64>,
        translate: fn(&str) -> String,
    ) -> Result<Vec<String>, StoreError> {
        let from = found.unwrap_or(self.version);
        if from > self.version {
            return Err(StoreError::TooNew(from, self.version));
        }
        let mut out = Vec::new();
        for to in from + 1..=self.version {
            let Some(m) = self.migrations.iter().find(|m| m.to == to) else {
                return Err(StoreError::NoMigration {
                    component: self.name,
                    from,
                    to: self.version,
                });
            };
            out.extend(m.statements.iter().map(|s| translate(s)));
        }
        out.extend(self.ddl.iter().map(|s| translate(s)));
        Ok(out)
    }
}

impl Db {
    /// Opens the database for `schema`: creates its tables, or brings an older one up to
    /// `schema.version` through its [`Migration`]s; refuses a newer one.
    pub async fn open(backend: &Backend, schema: &Schema) -> Result<Db, StoreError> {
        let db = match backend {
            Backend::Sqlite(path) => Db::Sqlite(sqlite::Sqlite::open(path)?),
            Backend::Postgres(url) => Db::Postgres(postgres::Postgres::open(url).await?),
        };
        db.migrate(schema).await?;
        Ok(db)
    }

    /// Which backend, for logs.
    pub fn describe(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgresql",
        }
    }

    async fn migrate(&self, schema: &Schema) -> Result<(), StoreError> {
        // Under one lock (SQLite: an immediate transaction; PostgreSQL: an advisory lock and
        // a transaction): several instances starting together migrate once.
        match self {
            Db::Sqlite(s) => s.upgrade(*schema).await,
            Db::Postgres(p) => p.upgrade(schema).await,
        }
    }

    /// Whether the database takes a write now (a disk full, a read-only file system or a
    /// read-only replica refuse): one small committed write to a table of its own.
    pub async fn writable(&self) -> Result<(), StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        self.commit(vec![Stmt::any(
            "INSERT INTO kagi_health (id, at) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            vec![now.into()],
        )])
        .await
    }

    /// Runs a read.
    pub async fn query(
        &self,
        sql: &'static str,
        params: Vec<Val>,
    ) -> Result<Vec<Vec<Val>>, StoreError> {
        match self {
            Db::Sqlite(s) => s.query(sql, params).await,
            Db::Postgres(p) => p.query(sql, params).await,
        }
    }

    /// Runs writes atomically: all of them, or (on any error or an [`Expect::One`] that
    /// changed another number of rows) none.
    pub async fn commit(&self, batch: Vec<Stmt>) -> Result<(), StoreError> {
        self.commit_counted(batch).await.map(drop)
    }

    /// Records a signed message's id in the schema's `replay (sender, msg_id, keep_until)`
    /// table (primary key `(sender, msg_id)`); `false` when it was there already (a replay).
    /// One conditional insert: of two racing deliveries of one message, one gets `true`.
    pub async fn first_seen(
        &self,
        sender: &str,
        msg_id: &str,
        keep_until: i64,
    ) -> Result<bool, StoreError> {
        match self
            .commit(vec![Stmt::one(
                "INSERT INTO replay (sender, msg_id, keep_until) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                vec![sender.into(), msg_id.into(), keep_until.into()],
            )])
            .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until what this server has committed is where a commit would be (PostgreSQL:
    /// on the synchronous standby — an empty transaction that writes to the WAL; SQLite: at
    /// once). Call it before answering from a row read without a commit (an idempotent
    /// replay's stored answer): the row may be one a crashed primary committed and its
    /// standby never received, which the failover would drop.
    pub async fn settle(&self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(_) => Ok(()),
            Db::Postgres(p) => p.commit(Vec::new()).await.map(drop),
        }
    }

    /// As [`Db::commit`], and says how many rows each statement changed (a conditional
    /// update that found its row already changed by someone else counts 0).
    pub async fn commit_counted(&self, batch: Vec<Stmt>) -> Result<Vec<u64>, StoreError> {
        match self {
            Db::Sqlite(s) => s.commit(batch).await,
            Db::Postgres(p) => p.commit(batch).await,
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
