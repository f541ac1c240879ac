//! SQLite calls run on the caller's thread when nothing waits and on the blocking pool when
//! something would (module docs of `kagi_db::sqlite`): a commit meeting another process's
//! write lock waits for it and is applied exactly once; racing commits from many tasks all
//! land; reads beside them (on the writer's connection when it is free) never see half a
//! transaction; the log is copied into the database file by the checkpoint thread, not by a
//! commit.

use kagi_db::{Backend, Db, Schema, Stmt, StoreError};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SCHEMA: Schema = Schema {
    name: "inline-test",
    version: 1,
    ddl: &[
        "CREATE TABLE IF NOT EXISTS t (id BIGINT PRIMARY KEY, v BLOB NOT NULL)",
        "CREATE TABLE IF NOT EXISTS c (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)",
    ],
    migrations: &[],
};

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kagi-inline-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn count(db: &Db) -> i64 {
    db.query("SELECT COUNT(*) FROM t", vec![]).await.unwrap()[0][0].int()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_meeting_another_process_lock_waits_and_applies_once() {
    let d = dir("lock");
    let path = d.join("t.db");
    let db = Db::open(&Backend::Sqlite(path.clone()), &SCHEMA)
        .await
        .unwrap();
    // Another program's connection takes the write lock and holds it.
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch("BEGIN IMMEDIATE; INSERT INTO t (id, v) VALUES (1, x'01');")
        .unwrap();
    let writer = {
        let db = db.clone();
        tokio::spawn(async move {
            db.commit(vec![Stmt::one(
                "INSERT INTO t (id, v) VALUES ($1, $2)",
                vec![2i64.into(), vec![2u8].into()],
            )])
            .await
        })
    };
    // Readers are not held up by the lock (WAL), and see neither row yet.
    assert_eq!(count(&db).await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !writer.is_finished(),
        "the commit did not wait for the other process's lock"
    );
    other.execute_batch("COMMIT").unwrap();
    writer.await.unwrap().unwrap();
    let ids: Vec<i64> = db
        .query("SELECT id FROM t ORDER BY id", vec![])
        .await
        .unwrap()
        .iter()
        .map(|r| r[0].int())
        .collect();
    assert_eq!(ids, vec![1, 2], "each insert applied exactly once");
    drop(other);
    drop(db);
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_conditional_updates_all_land_once() {
    let d = dir("race");
    let db = Db::open(&Backend::Sqlite(d.join("t.db")), &SCHEMA)
        .await
        .unwrap();
    db.commit(vec![Stmt::one(
        "INSERT INTO c (id, n) VALUES (1, 0)",
        vec![],
    )])
    .await
    .unwrap();
    // 16 tasks, each 100 compare-and-swap increments retried on conflict: any lost or
    // doubled write shows in the total.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut conflicts = 0u32;
                for _ in 0..100 {
                    loop {
                        let n = db
                            .query("SELECT n FROM c WHERE id = 1", vec![])
                            .await
                            .unwrap()[0][0]
                            .int();
                        match db
                            .commit(vec![Stmt::one(
                                "UPDATE c SET n = $1 WHERE id = 1 AND n = $2",
                                vec![(n + 1).into(), n.into()],
                            )])
                            .await
                        {
                            Ok(()) => break,
                            Err(StoreError::Conflict(0)) => conflicts += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                conflicts
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let n = db
        .query("SELECT n FROM c WHERE id = 1", vec![])
        .await
        .unwrap()[0][0]
        .int();
    assert_eq!(n, 1600);
    drop(db);
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_beside_racing_commits_see_whole_transactions() {
    let d = dir("whole");
    let db = Db::open(&Backend::Sqlite(d.join("t.db")), &SCHEMA)
        .await
        .unwrap();
    db.commit(vec![
        Stmt::one("INSERT INTO c (id, n) VALUES (1, 0)", vec![]),
        Stmt::one("INSERT INTO c (id, n) VALUES (2, 0)", vec![]),
    ])
    .await
    .unwrap();
    // Every commit raises both rows in two statements of one transaction; a read that ran on
    // a connection between them (the writer's, in the middle of a commit) would see them
    // differ.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                for _ in 0..250 {
                    db.commit(vec![
                        Stmt::one("UPDATE c SET n = n + 1 WHERE id = 1", vec![]),
                        Stmt::one("UPDATE c SET n = n + 1 WHERE id = 2", vec![]),
                    ])
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                let mut reads = 0u32;
                let mut last = 0;
                loop {
                    let rows = db
                        .query("SELECT n FROM c ORDER BY id", vec![])
                        .await
                        .unwrap();
                    let (a, b) = (rows[0][0].int(), rows[1][0].int());
                    assert_eq!(a, b, "a read saw half a transaction");
                    assert!(a >= last, "a read went back in time: {a} after {last}");
                    last = a;
                    reads += 1;
                    if a == 1000 {
                        return reads;
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let mut reads = 0;
    for r in readers {
        reads += r.await.unwrap();
    }
    assert!(reads >= 4, "each reader read at least once: {reads}");
    drop(db);
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_thread_copies_the_log_into_the_file() {
    let d = dir("checkpoint");
    let path = d.join("t.db");
    let db = Db::open(&Backend::Sqlite(path.clone()), &SCHEMA)
        .await
        .unwrap();
    let before = std::fs::metadata(&path).unwrap().len();
    // 2 MB in 64 commits: the commits write only the log.
    for k in 0..64i64 {
        let batch = (0..8i64)
            .map(|i| {
                Stmt::one(
                    "INSERT INTO t (id, v) VALUES ($1, $2)",
                    vec![(k * 8 + i).into(), vec![(k + i) as u8; 4096].into()],
                )
            })
            .collect();
        db.commit(batch).await.unwrap();
    }
    // The file grows when the pages are copied into it, with the database still open.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let len = std::fs::metadata(&path).unwrap().len();
        if len >= before + 2 * 1024 * 1024 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log was not checkpointed into the file ({len} bytes)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(&db).await, 512);
    drop(db);
    std::fs::remove_dir_all(&d).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_reset_under_a_steady_load() {
    let d = dir("steady");
    let path = d.join("t.db");
    let db = Db::open(&Backend::Sqlite(path.clone()), &SCHEMA)
        .await
        .unwrap();
    let rows = 32i64;
    db.commit(
        (0..rows)
            .map(|i| {
                Stmt::one(
                    "INSERT INTO t (id, v) VALUES ($1, $2)",
                    vec![i.into(), vec![0u8; 4096].into()],
                )
            })
            .collect(),
    )
    .await
    .unwrap();
    // Two writers rewrite the same 32 rows of 4 KB, 400 times each a round (about 100 MB of log
    // traffic) while two readers read: commits land all the time, also while the log is
    // being checkpointed (which, checkpointing beside the writer, kept the log from ever
    // being reset: it grew without end).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (db, stop) = (db.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert_eq!(count(&db).await, rows);
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    // The log file's size, sampled while the writers run: it shrinks each time the log is
    // reset after a complete checkpoint and cut back to the size limit. Rounds of writes go on
    // until that is seen or a generous deadline passes: a machine busy with other work gives
    // the checkpoint thread fewer chances per round.
    let wal = d.join("t.db-wal");
    let (mut last, mut cut_back, mut rounds) = (0u64, 0u32, 0u32);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // (A log past 1 GiB has clearly never been reset: no point in filling the disk.)
    while cut_back == 0 && std::time::Instant::now() < deadline && last < 1 << 30 {
        rounds += 1;
        let writers: Vec<_> = (0..2u8)
            .map(|w| {
                let db = db.clone();
                tokio::spawn(async move {
                    for k in 0..400u32 {
                        let b = (k as u8) ^ w;
                        let batch = (0..rows)
                            .map(|i| {
                                Stmt::one(
                                    "UPDATE t SET v = $2 WHERE id = $1",
                                    vec![i.into(), vec![b; 4096].into()],
                                )
                            })
                            .collect();
                        db.commit(batch).await.unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            while !w.is_finished() {
                let len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
                if len < last {
                    cut_back += 1;
                }
                last = len;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            w.await.unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    assert!(
        cut_back > 0,
        "the write-ahead log was never reset under the load ({rounds} rounds, {last} bytes at the end)"
    );
    drop(db);
    std::fs::remove_dir_all(&d).unwrap();
}
