//! Upgrading a database to a newer schema loses nothing: the steps from the version it holds
//! run once, in one transaction with the version's update (several servers opening it
//! together migrate it once), a new database is created at the newest shape without them, a
//! failing step leaves the database as it was, and a version this build has no way from is
//! refused before anything changes. On SQLite and on a private PostgreSQL.

use kagi_db::testing::PrivatePostgres;
use kagi_db::{Backend, Db, Migration, Schema, Stmt, StoreError};

const V1: Schema = Schema {
    name: "migrate-test",
    version: 1,
    ddl: &["CREATE TABLE IF NOT EXISTS t (id BIGINT PRIMARY KEY, a TEXT NOT NULL)"],
    migrations: &[],
};

/// Version 2 adds a column with a default and an index on it; its `ddl` is the new shape (a
/// new database gets it at once) and names the column, so it must run after the step.
const V2: Schema = Schema {
    name: "migrate-test",
    version: 2,
    ddl: &[
        "CREATE TABLE IF NOT EXISTS t (id BIGINT PRIMARY KEY, a TEXT NOT NULL, b BIGINT NOT NULL DEFAULT 7)",
        "CREATE INDEX IF NOT EXISTS t_b ON t (b)",
    ],
    migrations: &[Migration {
        to: 2,
        statements: &["ALTER TABLE t ADD COLUMN b BIGINT NOT NULL DEFAULT 7"],
    }],
};

/// Version 2 whose step fails halfway (its second statement names no table).
const V2_BROKEN: Schema = Schema {
    migrations: &[Migration {
        to: 2,
        statements: &[
            "ALTER TABLE t ADD COLUMN b BIGINT NOT NULL DEFAULT 7",
            "ALTER TABLE no_such_table ADD COLUMN c BIGINT",
        ],
    }],
    ..V2
};

/// Version 3 with only the step to 3: a database at 1 has no way up.
const V3_GAP: Schema = Schema {
    version: 3,
    migrations: &[Migration {
        to: 3,
        statements: &["ALTER TABLE t ADD COLUMN c BIGINT"],
    }],
    ..V2
};

fn sqlite(name: &str) -> Backend {
    let d = std::env::temp_dir().join(format!("kagi-migrate-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Backend::Sqlite(d.join("m.db"))
}

async fn version(db: &Db) -> i64 {
    db.query(
        "SELECT version FROM schema_versions WHERE component = 'migrate-test'",
        vec![],
    )
    .await
    .unwrap()[0][0]
        .int()
}

/// Two rows at version 1.
async fn at_v1(backend: &Backend) {
    let db = Db::open(backend, &V1).await.unwrap();
    db.commit(vec![
        Stmt::any("INSERT INTO t (id, a) VALUES (1, 'one')", vec![]),
        Stmt::any("INSERT INTO t (id, a) VALUES (2, 'two')", vec![]),
    ])
    .await
    .unwrap();
    assert_eq!(version(&db).await, 1);
}

/// The rows as (id, a, b), `b` read only when `with_b`.
async fn rows(db: &Db, with_b: bool) -> Vec<(i64, String, i64)> {
    let sql = if with_b {
        "SELECT id, a, b FROM t ORDER BY id"
    } else {
        "SELECT id, a, CAST(0 AS BIGINT) FROM t ORDER BY id"
    };
    db.query(sql, vec![])
        .await
        .unwrap()
        .iter()
        .map(|r| (r[0].int(), r[1].text(), r[2].int()))
        .collect()
}

async fn upgrade_keeps_everything(backend: &Backend) {
    at_v1(backend).await;
    // A failing step: nothing of it stays, the database is still at 1 with its rows.
    let e = Db::open(backend, &V2_BROKEN)
        .await
        .err()
        .expect("a broken step fails");
    assert!(matches!(e, StoreError::Db(_)), "{e}");
    let db = Db::open(backend, &V1).await.unwrap();
    assert_eq!(version(&db).await, 1);
    assert!(db.query("SELECT b FROM t", vec![]).await.is_err());
    drop(db);
    // No way from 1 to 3: refused, nothing changed.
    let e = Db::open(backend, &V3_GAP)
        .await
        .err()
        .expect("no step to 2");
    assert!(
        matches!(e, StoreError::NoMigration { from: 1, to: 3, .. }),
        "{e}"
    );
    // Two servers opening it together at version 2: both start, the step ran once.
    let (a, b) = tokio::join!(Db::open(backend, &V2), Db::open(backend, &V2));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(version(&a).await, 2);
    assert_eq!(
        rows(&b, true).await,
        vec![(1, "one".into(), 7), (2, "two".into(), 7)]
    );
    a.commit(vec![Stmt::any(
        "INSERT INTO t (id, a, b) VALUES (3, 'three', 9)",
        vec![],
    )])
    .await
    .unwrap();
    drop((a, b));
    // Opened again at 2: nothing runs again (the ALTER would fail on the existing column).
    let db = Db::open(backend, &V2).await.unwrap();
    assert_eq!(rows(&db, true).await.len(), 3);
    // An older build is told to upgrade.
    drop(db);
    assert!(matches!(
        Db::open(backend, &V1).await.err(),
        Some(StoreError::TooNew(2, 1))
    ));
}

async fn new_database_is_created_new(backend: &Backend) {
    let db = Db::open(backend, &V2).await.unwrap();
    assert_eq!(version(&db).await, 2);
    db.commit(vec![Stmt::any(
        "INSERT INTO t (id, a) VALUES (1, 'one')",
        vec![],
    )])
    .await
    .unwrap();
    assert_eq!(rows(&db, true).await, vec![(1, "one".into(), 7)]);
    drop(db);
    // And stays so when opened again (no step runs on it).
    let db = Db::open(backend, &V2).await.unwrap();
    assert_eq!(version(&db).await, 2);
    assert_eq!(rows(&db, false).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrade_keeps_everything() {
    upgrade_keeps_everything(&sqlite("upgrade")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_new_database_is_created_new() {
    new_database_is_created_new(&sqlite("new")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_upgrade_keeps_everything() {
    let pg = PrivatePostgres::start("migrate").unwrap();
    upgrade_keeps_everything(&Backend::Postgres(pg.url.clone())).await;
    let fresh = PrivatePostgres::start("migrate-new").unwrap();
    new_database_is_created_new(&Backend::Postgres(fresh.url.clone())).await;
}
