//! An acknowledged commit on PostgreSQL is one the synchronous standby has, even when the
//! transaction changed nothing. The case is the idempotent retry after a failover: the first
//! try of a write reached a primary that crashed before its standby had it; the retry finds
//! the row on that primary (restarted by its keeper) and changes nothing. PostgreSQL acknowledges
//! a commit without a transaction id at once, without waiting for the standby, so the client
//! would count the write as done while only the old primary has it — and the failover that
//! follows drops it (seen once in `failover.rs`: write 150 acknowledged and absent).
//!
//! Here a private PostgreSQL names a synchronous standby that never connects: a commit that
//! waits for the standby does not complete until the setting is taken back. kagi's commit of
//! an `INSERT … ON CONFLICT DO NOTHING` of a row already there must wait like any write, and
//! so must `Db::settle` (called before an idempotent replay repeats a stored answer).

use kagi_db::testing::PrivatePostgres;
use kagi_db::{Backend, Db, Schema, Stmt};
use std::time::Duration;

const SCHEMA: Schema = Schema {
    name: "sync-ack-test",
    version: 1,
    ddl: &["CREATE TABLE IF NOT EXISTS ops (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)"],
    migrations: &[],
};

async fn set_standby(url: &str, names: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let sql = format!("ALTER SYSTEM SET synchronous_standby_names = '{names}'");
    client.simple_query(&sql).await.unwrap();
    client
        .simple_query("SELECT pg_reload_conf()")
        .await
        .unwrap();
    drop(client);
    let _ = conn.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_changes_nothing_still_waits_for_the_synchronous_standby() {
    assert!(
        PrivatePostgres::available(),
        "PostgreSQL is missing: run scripts/setup.sh"
    );
    let pg = PrivatePostgres::start("sync-ack").unwrap();
    let db = Db::open(&Backend::Postgres(pg.url.clone()), &SCHEMA)
        .await
        .unwrap();
    let insert = || {
        vec![Stmt::any(
            "INSERT INTO ops (id, n) VALUES (1, 1) ON CONFLICT (id) DO NOTHING",
            vec![],
        )]
    };
    db.commit(insert()).await.unwrap();
    set_standby(&pg.url, "kagi_absent_standby").await;
    // The server answers reads at once (it is up and the setting is in force) ...
    let rows = db.query("SELECT count(*) FROM ops", vec![]).await.unwrap();
    assert_eq!(rows[0][0].int(), 1);
    // ... but the retry of the write that is already there waits for the standby.
    let retry = tokio::spawn({
        let db = db.clone();
        async move { db.commit(insert()).await }
    });
    // So does a settle before answering from a row read without a commit.
    let settle = tokio::spawn({
        let db = db.clone();
        async move { db.settle().await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !retry.is_finished(),
        "a commit that changed nothing was acknowledged without the synchronous standby"
    );
    assert!(
        !settle.is_finished(),
        "settle returned without the synchronous standby"
    );
    // Without a standby to wait for, both complete, and the row is there once.
    set_standby(&pg.url, "").await;
    for t in [retry, settle] {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("completes once no standby is named")
            .unwrap()
            .unwrap();
    }
    let rows = db.query("SELECT count(*) FROM ops", vec![]).await.unwrap();
    assert_eq!(rows[0][0].int(), 1);
}
