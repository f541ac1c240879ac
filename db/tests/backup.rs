//! Online backup and restore (the operator's drill): a writer keeps committing pairs of rows
//! (one row in each of two tables, in one transaction) while the backup runs; the backup
//! holds one consistent state (both tables the same rows), and a restore into a fresh
//! database (SQLite file, or a second private PostgreSQL) holds exactly what the backup
//! holds. Refusals: an existing target file, a backup of the other kind, a file that is no
//! backup.

use kagi_db::backup::{self, BackupKind};
use kagi_db::testing::PrivatePostgres;
use kagi_db::{Backend, Db, Schema, Stmt};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const SCHEMA: Schema = Schema {
    name: "backup-test",
    version: 1,
    ddl: &[
        "CREATE TABLE IF NOT EXISTS a (id BIGINT PRIMARY KEY)",
        "CREATE TABLE IF NOT EXISTS b (id BIGINT PRIMARY KEY)",
    ],
    migrations: &[],
};

async fn count(db: &Db, sql: &'static str) -> i64 {
    db.query(sql, vec![]).await.unwrap()[0][0].int()
}

async fn counts(db: &Db) -> (i64, i64) {
    (
        count(db, "SELECT COUNT(*) FROM a").await,
        count(db, "SELECT COUNT(*) FROM b").await,
    )
}

fn pair(i: i64) -> Vec<Stmt> {
    vec![
        Stmt::one("INSERT INTO a (id) VALUES ($1)", vec![i.into()]),
        Stmt::one("INSERT INTO b (id) VALUES ($1)", vec![i.into()]),
    ]
}

/// Backs `source` up while pairs are written, restores into `target`; returns the pairs
/// the restored database holds.
async fn drill(source: Backend, file: std::path::PathBuf, target: Backend) -> i64 {
    let db = Arc::new(Db::open(&source, &SCHEMA).await.unwrap());
    for i in 0..200i64 {
        db.commit(pair(i)).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (db, stop) = (db.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 200i64;
            while !stop.load(Ordering::SeqCst) {
                db.commit(pair(i)).await.unwrap();
                i += 1;
            }
            i
        })
    };
    // The writer runs before and during the backup.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (src, f) = (source.clone(), file.clone());
    let kind = tokio::task::spawn_blocking(move || backup::backup(&src, &f))
        .await
        .unwrap()
        .unwrap();
    stop.store(true, Ordering::SeqCst);
    let written = writer.await.unwrap();
    assert_eq!(BackupKind::of_file(&file).unwrap(), kind);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the backup file's mode");
    }
    assert_eq!(counts(&db).await, (written, written));
    let (f, t) = (file.clone(), target.clone());
    tokio::task::spawn_blocking(move || backup::restore(&f, &t))
        .await
        .unwrap()
        .unwrap();
    let restored = Db::open(&target, &SCHEMA).await.unwrap();
    let (a, b) = counts(&restored).await;
    assert_eq!(a, b, "the backup is one consistent state");
    assert!((200..=written).contains(&a), "{a} pairs of {written}");
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backup_and_restore() {
    let dir = std::env::temp_dir().join(format!("kagi-db-backup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shard-0.db");
    let target = Backend::Sqlite(dir.join("restored.db"));
    let live = Backend::Sqlite(dir.join("live.db"));
    drill(live.clone(), file.clone(), target.clone()).await;
    // Nothing is overwritten: neither a backup file nor a restore target.
    let again = backup::backup(&live, &file).unwrap_err();
    assert!(again.to_string().contains("never overwrites"), "{again}");
    let again = backup::restore(&file, &target).unwrap_err();
    assert!(again.to_string().contains("never overwrites"), "{again}");
    // A SQLite backup does not go into PostgreSQL; a file that is no backup is named.
    let pg = Backend::Postgres("postgres://x@127.0.0.1:1/y".into());
    let wrong = backup::restore(&file, &pg).unwrap_err();
    assert!(wrong.to_string().contains("SQLite backup"), "{wrong}");
    std::fs::write(dir.join("junk"), b"hello").unwrap();
    let junk = backup::restore(&dir.join("junk"), &Backend::Sqlite(dir.join("x.db"))).unwrap_err();
    assert!(junk.to_string().contains("neither"), "{junk}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_backup_and_restore_into_a_fresh_instance() {
    assert!(
        PrivatePostgres::available(),
        "PostgreSQL's server programs are missing: run scripts/setup.sh"
    );
    let live = PrivatePostgres::start("backup-live").unwrap();
    let fresh = PrivatePostgres::start("backup-fresh").unwrap();
    let dir = std::env::temp_dir().join(format!("kagi-db-pgbackup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    drill(
        Backend::Postgres(live.url.clone()),
        dir.join("shard-0.pgdump"),
        Backend::Postgres(fresh.url.clone()),
    )
    .await;
    std::fs::remove_dir_all(&dir).ok();
}
