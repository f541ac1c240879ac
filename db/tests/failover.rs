//! 24-hour operation (issue #17): the primary of a private pg_auto_failover formation is
//! killed (SIGKILL) during a stream of committed writes. The store follows the new primary
//! through the multi-host URL; every write acknowledged before, during or after the failover
//! is there afterwards (synchronous replication), none is there twice, and the writes that
//! failed during the failover window are reported (and retried by the client).

use kagi_db::testing::PrivateFormation;
use kagi_db::{Backend, Db, Schema, Stmt};
use std::time::{Duration, Instant};

const SCHEMA: Schema = Schema {
    name: "failover-test",
    version: 1,
    ddl: &["CREATE TABLE IF NOT EXISTS ops (id BIGINT PRIMARY KEY, n BIGINT NOT NULL)"],
    migrations: &[],
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_killed_primary() {
    assert!(
        PrivateFormation::available(),
        "pg_auto_failover is missing: run scripts/setup.sh"
    );
    let f = PrivateFormation::start("failover").unwrap();
    let db = Db::open(&Backend::Postgres(f.url.clone()), &SCHEMA)
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    let mut failed_tries = 0u32;
    let mut window: Option<(Instant, Instant)> = None;
    let mut killed = None;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut id = 0i64;
    while acknowledged.len() < 400 {
        assert!(
            Instant::now() < deadline,
            "no progress after the failover: {} acknowledged, {failed_tries} failed tries\n{}",
            acknowledged.len(),
            f.state()
        );
        if acknowledged.len() == 150 && killed.is_none() {
            killed = Some(f.kill_primary().unwrap());
        }
        // An insert that is retried until it is acknowledged: done at most once (the primary
        // key), and the retry of one whose answer was lost is recognised, not doubled.
        let r = db
            .commit(vec![Stmt::any(
                "INSERT INTO ops (id, n) VALUES ($1, 1) ON CONFLICT (id) DO NOTHING",
                vec![id.into()],
            )])
            .await;
        match r {
            Ok(()) => {
                acknowledged.push(id);
                id += 1;
            }
            Err(_) => {
                failed_tries += 1;
                let now = Instant::now();
                window = Some(window.map_or((now, now), |(a, _)| (a, now)));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(killed.is_some());
    let rows = db
        .query("SELECT id, n FROM ops ORDER BY id", vec![])
        .await
        .unwrap();
    let ids: Vec<i64> = rows.iter().map(|r| r[0].int()).collect();
    assert_eq!(
        ids, acknowledged,
        "every acknowledged write, once, in order"
    );
    assert!(rows.iter().all(|r| r[1].int() == 1));
    let secs = window.map_or(0.0, |(a, b)| (b - a).as_secs_f64());
    eprintln!(
        "failover: {} writes acknowledged, {failed_tries} tries failed over {secs:.1} s",
        acknowledged.len()
    );
}
