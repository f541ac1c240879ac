//! SQLite: one file in WAL mode, a writer connection and a few readers, each call on the
//! blocking thread pool. `synchronous = NORMAL` in WAL mode loses nothing when the process is
//! killed (the log is in the operating system's cache) and keeps the file consistent on
//! power loss; `KAGI_TSM_SQLITE_SYNC=full` syncs every commit. Deleted rows are overwritten
//! with zeros (`secure_delete`: sealed parts and one-time values leave no trace in free space
//! of the file once checkpointed; until then their frames are in the log).

use crate::{Expect, Stmt, StoreError, Val, sqlite_sql};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, ToSql};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const READERS: usize = 4;

/// The size the write-ahead log is cut back to when it is reset after a checkpoint (bytes):
/// frames of deleted rows do not outlive the next reset by more than this.
const WAL_LIMIT: u64 = 4 * 1024 * 1024;

/// An open SQLite database.
#[derive(Clone)]
pub struct Sqlite {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next: Arc<AtomicUsize>,
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

impl ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Val::Int(i) => ToSqlOutput::Owned(Value::Integer(*i)),
            Val::Text(t) => ToSqlOutput::Borrowed(ValueRef::Text(t.as_bytes())),
            Val::Blob(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            Val::Null => ToSqlOutput::Owned(Value::Null),
        })
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open(path).map_err(|e| db(format!("{}: {e}", path.display())))?;
    let sync = match std::env::var("KAGI_TSM_SQLITE_SYNC").as_deref() {
        Ok("full") => "FULL",
        _ => "NORMAL",
    };
    c.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 10000; \
         PRAGMA secure_delete = ON; PRAGMA journal_size_limit = {WAL_LIMIT};"
    ))
    .map_err(db)?;
    Ok(c)
}

impl Sqlite {
    /// Opens (creating) the file. A new file is created readable by its owner only (0600: it
    /// holds verifiers, sealed keys and the audit trail), and SQLite gives its `-wal` and
    /// `-shm` files the database file's mode; missing directories are created 0700.
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let mut b = std::fs::DirBuilder::new();
            b.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
            b.create(dir)
                .map_err(|e| db(format!("{}: {e}", dir.display())))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        opts.open(path)
            .map_err(|e| db(format!("{}: {e}", path.display())))?;
        let writer = connect(path)?;
        let readers = (0..READERS)
            .map(|_| connect(path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Sqlite {
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(readers),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| db(format!("database task: {e}")))?
    }

    pub(super) async fn ddl(&self, statements: &[String]) -> Result<(), StoreError> {
        let w = self.writer.clone();
        let sql = statements.join(";\n");
        Self::blocking(move || {
            let c = w.lock().map_err(|_| db("writer lock poisoned"))?;
            c.execute_batch(&sql).map_err(db)
        })
        .await
    }

    pub(super) async fn query(
        &self,
        sql: &'static str,
        params: Vec<Val>,
    ) -> Result<Vec<Vec<Val>>, StoreError> {
        let readers = self.readers.clone();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % READERS;
        Self::blocking(move || {
            let c = readers[i].lock().map_err(|_| db("reader lock poisoned"))?;
            let mut st = c.prepare_cached(&sqlite_sql(sql)).map_err(db)?;
            let n = st.column_count();
            let p: Vec<&dyn ToSql> = params.iter().map(|v| v as &dyn ToSql).collect();
            let mut rows = st.query(p.as_slice()).map_err(db)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(db)? {
                let mut row = Vec::with_capacity(n);
                for k in 0..n {
                    row.push(match r.get_ref(k).map_err(db)? {
                        ValueRef::Integer(i) => Val::Int(i),
                        ValueRef::Text(t) => Val::Text(String::from_utf8_lossy(t).into_owned()),
                        ValueRef::Blob(b) => Val::Blob(b.to_vec()),
                        ValueRef::Null => Val::Null,
                        ValueRef::Real(f) => Val::Int(f as i64),
                    });
                }
                out.push(row);
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn commit(&self, batch: Vec<Stmt>) -> Result<Vec<u64>, StoreError> {
        let w = self.writer.clone();
        Self::blocking(move || {
            let mut c = w.lock().map_err(|_| db("writer lock poisoned"))?;
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(db)?;
            let mut counts = Vec::with_capacity(batch.len());
            for (i, s) in batch.iter().enumerate() {
                let mut st = tx.prepare_cached(&sqlite_sql(s.sql)).map_err(db)?;
                let p: Vec<&dyn ToSql> = s.params.iter().map(|v| v as &dyn ToSql).collect();
                let n = st.execute(p.as_slice()).map_err(db)?;
                if s.expect == Expect::One && n != 1 {
                    return Err(StoreError::Conflict(i));
                }
                counts.push(n as u64);
            }
            tx.commit().map_err(db)?;
            Ok(counts)
        })
        .await
    }
}
