//! SQLite: one file in WAL mode, a writer connection and a few readers. `synchronous =
//! NORMAL` in WAL mode loses nothing when the process is killed (the log is in the operating
//! system's cache) and keeps the file consistent on power loss; `KAGI_TSM_SQLITE_SYNC=full`
//! syncs every commit. Deleted rows are overwritten with zeros (`secure_delete`: sealed parts
//! and one-time values leave no trace in free space of the file once checkpointed; until then
//! their frames are in the log).
//!
//! **Where a call runs.** A read, and a commit in NORMAL mode, touch only the operating
//! system's cache: they run on the calling task's thread when their connection is free and
//! no other process holds a lock (the connections wait for no lock: `busy_timeout` 0), which
//! spares two thread switches per call — on a 2-core server with 35 calls per download that
//! was a tenth of a service's CPU. Anything that would wait — a connection in use by another
//! thread, `SQLITE_BUSY` from another process's lock (the transaction rolled back, nothing
//! applied), a commit in FULL mode (an fsync) and schema changes — goes to the blocking
//! thread pool and waits there as long as `busy_timeout` (10 s) allows. The log is copied
//! back into the database file (a checkpoint, with its fsyncs) by a thread of its own every
//! [`CHECKPOINT_EVERY`], holding the writer's connection meanwhile, never by a request's
//! commit.
//!
//! **Which connection reads.** A connection's page cache is thrown away whenever it starts a
//! read after another connection committed, which under a steady load is nearly every read
//! of a reader (a tenth of a TSM's CPU went to emptying and refilling caches). The writer's
//! cache stays valid across its own commits, so a read runs on the writer's connection when
//! it is free, then on the first free reader (always in the same order, so the first ones stay
//! warm); only when none is free does it wait on the blocking pool.

use crate::{BASE_DDL, Expect, Schema, Stmt, StoreError, Val, sqlite_sql};
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, OptionalExtension, ToSql};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

const READERS: usize = 4;

/// The size the write-ahead log is cut back to when it is reset after a checkpoint (bytes):
/// frames of deleted rows do not outlive the next reset by more than this.
const WAL_LIMIT: u64 = 4 * 1024 * 1024;

/// How long a call sent to the blocking pool waits for another process's lock.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// PostgreSQL's column words in SQLite's.
fn sqlite_types(s: &str) -> String {
    s.replace("BYTES", "BLOB")
        .replace("SERIAL_PK", "INTEGER PRIMARY KEY AUTOINCREMENT")
}

/// How often the checkpoint thread copies the log into the database file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// An open SQLite database (clones share it).
#[derive(Clone)]
pub struct Sqlite {
    inner: Arc<Inner>,
    /// Dropped with the last clone: stops the checkpoint thread (which holds `inner` too).
    _checkpointer: Arc<Checkpointer>,
}

struct Inner {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next: AtomicUsize,
    /// The checkpoint thread waits for the writer's connection: calls do not take it inline
    /// meanwhile (a mutex is not fair; reads and commits taking it back to back starved the
    /// checkpoint, and the log was never reset).
    checkpoint_waiting: AtomicBool,
    /// `KAGI_TSM_SQLITE_SYNC=full`: every commit syncs, so none runs inline.
    full_sync: bool,
}

/// The checkpoint thread's stop signal (dropped) and handle (joined).
struct Checkpointer(Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>);

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.0.take() {
            drop(stop);
            let _ = thread.join();
        }
    }
}

fn db(e: impl std::fmt::Display) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Whether `e` is SQLite's "another connection holds the lock" (nothing was applied).
fn busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

/// A call's failure: SQLite's lock held elsewhere (retry where waiting is allowed), or final.
enum Failed {
    Busy,
    Final(StoreError),
}

impl From<rusqlite::Error> for Failed {
    fn from(e: rusqlite::Error) -> Failed {
        if busy(&e) {
            Failed::Busy
        } else {
            Failed::Final(db(e))
        }
    }
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

fn full_sync() -> bool {
    matches!(std::env::var("KAGI_TSM_SQLITE_SYNC").as_deref(), Ok("full"))
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let c = Connection::open(path).map_err(|e| db(format!("{}: {e}", path.display())))?;
    let sync = if full_sync() { "FULL" } else { "NORMAL" };
    // busy_timeout 0: a call on a request's thread never waits for a lock (module docs).
    c.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA busy_timeout = 0; \
         PRAGMA secure_delete = ON; PRAGMA journal_size_limit = {WAL_LIMIT}; \
         PRAGMA wal_autocheckpoint = 0;"
    ))
    .map_err(db)?;
    Ok(c)
}

/// The checkpoint thread: every [`CHECKPOINT_EVERY`] a passive checkpoint on a connection of
/// its own (most of the copying and the fsyncs, beside the commits), then one on the writer's
/// connection, holding it, until `stop` is dropped. Holding the writer matters: the log is
/// reset (and cut back to [`WAL_LIMIT`]) only by a write that starts after a checkpoint copied
/// all of it, which commits landing during the checkpoint would prevent for ever under a
/// steady load (the log then grows without end, and deleted rows' frames stay in it). A
/// checkpoint a reader held back is tried again a few times, a millisecond apart; commits
/// meanwhile wait on the blocking pool.
fn checkpointer(inner: Arc<Inner>, path: &Path) -> Result<Checkpointer, StoreError> {
    let own = connect(path)?;
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("kagi-sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY)
            {
                // Most of the log first, beside the commits (the copying and its fsyncs);
                // then what they added meanwhile, holding the writer.
                if let Err(e) = own.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "SQLite checkpoint failed (tried again shortly)");
                }
                inner.checkpoint_waiting.store(true, Ordering::Relaxed);
                let writer = inner.writer.lock();
                inner.checkpoint_waiting.store(false, Ordering::Relaxed);
                let Ok(c) = writer else {
                    return;
                };
                for _ in 0..5 {
                    // (busy, frames in the log, frames copied)
                    match c.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
                    }) {
                        Ok((log, copied)) if copied >= log => break,
                        Ok(_) => std::thread::sleep(Duration::from_millis(1)),
                        Err(e) => {
                            tracing::warn!(error = %e, "SQLite checkpoint failed (tried again shortly)");
                            break;
                        }
                    }
                }
            }
        })
        .map_err(|e| db(format!("checkpoint thread: {e}")))?;
    Ok(Checkpointer(Some((stop, thread))))
}

fn read(c: &Connection, sql: &str, params: &[Val]) -> Result<Vec<Vec<Val>>, Failed> {
    let mut st = c.prepare_cached(&sqlite_sql(sql))?;
    let n = st.column_count();
    let p: Vec<&dyn ToSql> = params.iter().map(|v| v as &dyn ToSql).collect();
    let mut rows = st.query(p.as_slice())?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut row = Vec::with_capacity(n);
        for k in 0..n {
            row.push(match r.get_ref(k)? {
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
}

/// The batch in one transaction; on any error it is rolled back (the transaction dropped).
fn write(c: &mut Connection, batch: &[Stmt]) -> Result<Vec<u64>, Failed> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut counts = Vec::with_capacity(batch.len());
    for (i, s) in batch.iter().enumerate() {
        let mut st = tx.prepare_cached(&sqlite_sql(s.sql))?;
        let p: Vec<&dyn ToSql> = s.params.iter().map(|v| v as &dyn ToSql).collect();
        let n = st.execute(p.as_slice())?;
        if s.expect == Expect::One && n != 1 {
            return Err(Failed::Final(StoreError::Conflict(i)));
        }
        counts.push(n as u64);
    }
    tx.commit()?;
    Ok(counts)
}

/// `f` on `c` with [`BUSY_WAIT`] for other processes' locks (blocking pool only).
fn waiting<T>(
    c: &mut Connection,
    f: impl FnOnce(&mut Connection) -> Result<T, Failed>,
) -> Result<T, StoreError> {
    c.busy_timeout(BUSY_WAIT).map_err(db)?;
    let out = f(c);
    c.busy_timeout(Duration::ZERO).map_err(db)?;
    match out {
        Ok(v) => Ok(v),
        Err(Failed::Busy) => Err(db(format!(
            "the database stayed locked by another process for {} s: is another program writing to it?",
            BUSY_WAIT.as_secs()
        ))),
        Err(Failed::Final(e)) => Err(e),
    }
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
        let inner = Arc::new(Inner {
            writer: Mutex::new(writer),
            readers,
            next: AtomicUsize::new(0),
            checkpoint_waiting: AtomicBool::new(false),
            full_sync: full_sync(),
        });
        Ok(Sqlite {
            _checkpointer: Arc::new(checkpointer(inner.clone(), path)?),
            inner,
        })
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| db(format!("database task: {e}")))?
    }

    /// `f` on the writer's connection, on the blocking pool, waiting out another process's
    /// lock.
    async fn on_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Failed> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        Self::blocking(move || {
            let mut c = inner
                .writer
                .lock()
                .map_err(|_| db("writer lock poisoned"))?;
            waiting(&mut c, f)
        })
        .await
    }

    #[cfg(test)]
    pub(super) async fn ddl(&self, statements: &[String]) -> Result<(), StoreError> {
        let sql = statements.join(";\n");
        self.on_writer(move |c| c.execute_batch(&sql).map_err(Failed::from))
            .await
    }

    /// Brings the database to `schema` in one immediate transaction: read the version, run
    /// the steps from it (or create the tables), record the version, create what is missing.
    pub(super) async fn upgrade(&self, schema: Schema) -> Result<(), StoreError> {
        self.on_writer(move |c| {
            c.execute_batch(&BASE_DDL.join(";\n"))?;
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let found: Option<i64> = tx
                .query_row(
                    "SELECT version FROM schema_versions WHERE component = ?1",
                    [schema.name],
                    |r| r.get(0),
                )
                .optional()?;
            let statements = schema.upgrade(found, sqlite_types).map_err(Failed::Final)?;
            tx.execute_batch(&statements.join(";\n"))?;
            tx.execute(
                "INSERT INTO schema_versions (component, version) VALUES (?1, ?2)
                     ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                rusqlite::params![schema.name, schema.version],
            )?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    pub(super) async fn query(
        &self,
        sql: &'static str,
        params: Vec<Val>,
    ) -> Result<Vec<Vec<Val>>, StoreError> {
        // Here, on the writer's connection or the first free reader, when nothing waits.
        if !self.inner.checkpoint_waiting.load(Ordering::Relaxed) {
            match self.inner.writer.try_lock() {
                Ok(c) => match read(&c, sql, &params) {
                    Ok(rows) => return Ok(rows),
                    Err(Failed::Final(e)) => return Err(e),
                    Err(Failed::Busy) => {}
                },
                // A write panicked while holding it (its transaction state unknown): the
                // readers still read what was committed.
                Err(TryLockError::WouldBlock | TryLockError::Poisoned(_)) => {}
            }
        }
        for reader in &self.inner.readers {
            match reader.try_lock() {
                Ok(c) => match read(&c, sql, &params) {
                    Ok(rows) => return Ok(rows),
                    Err(Failed::Final(e)) => return Err(e),
                    Err(Failed::Busy) => break,
                },
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Poisoned(_)) => return Err(db("reader lock poisoned")),
            }
        }
        let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % READERS;
        let inner = self.inner.clone();
        Self::blocking(move || {
            let mut c = inner.readers[i]
                .lock()
                .map_err(|_| db("reader lock poisoned"))?;
            waiting(&mut c, |c| read(c, sql, &params))
        })
        .await
    }

    pub(super) async fn commit(&self, batch: Vec<Stmt>) -> Result<Vec<u64>, StoreError> {
        // Inline only when no checkpoint waits for the writer (it goes first).
        if !self.inner.full_sync && !self.inner.checkpoint_waiting.load(Ordering::Relaxed) {
            match self.inner.writer.try_lock() {
                Ok(mut c) => match write(&mut c, &batch) {
                    Ok(counts) => return Ok(counts),
                    Err(Failed::Final(e)) => return Err(e),
                    // Another process's lock: rolled back, nothing applied; wait below.
                    Err(Failed::Busy) => {}
                },
                Err(TryLockError::WouldBlock) => {}
                Err(TryLockError::Poisoned(_)) => return Err(db("writer lock poisoned")),
            }
        }
        self.on_writer(move |c| write(c, &batch)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that panicked while holding the writer's connection (its mutex poisoned) does
    /// not stop reads: they go to the readers and see what was committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_go_on_after_a_write_panicked() {
        let dir = std::env::temp_dir().join(format!("kagi-poison-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let s = Sqlite::open(&dir.join("p.db")).unwrap();
        s.ddl(&["CREATE TABLE t (v BIGINT NOT NULL)".to_string()])
            .await
            .unwrap();
        s.commit(vec![Stmt::any("INSERT INTO t (v) VALUES (7)", vec![])])
            .await
            .unwrap();
        let inner = s.inner.clone();
        let _ = std::thread::spawn(move || {
            let _held = inner.writer.lock();
            panic!("a write panics while holding the writer (expected in this test)");
        })
        .join();
        assert!(s.inner.writer.is_poisoned());
        for _ in 0..3 {
            let rows = s.query("SELECT v FROM t", vec![]).await.unwrap();
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0][0].int(), 7);
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
