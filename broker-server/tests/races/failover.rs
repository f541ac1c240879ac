//! (e) 24-hour operation: two broker instances on a pg_auto_failover formation answer a
//! stream of acts while the primary is killed (SIGKILL) and a KEK rotation runs; the
//! clients retry what failed. Afterwards every record opens, all under the new KEK, and each
//! card's key answers as before (the same MAC over the same challenge).

use super::*;
use std::time::{Duration, Instant};

pub(crate) async fn acts_and_rotation_survive_a_failover(w: &World) {
    let f = w.ha.as_ref().expect("a world on a formation");
    let a = w.broker(no_backoff()).await;
    let b = w.broker(no_backoff()).await;
    assert_eq!(w.admin(&a, mac_service("ha")).await, AdminResponse::Ok);
    let sessions = w.cards_with_sessions(&a, "ha", "HA", 20).await;
    // Each card's answer before anything happens.
    let mut before = Vec::new();
    for s in &sessions {
        before.push(a.act(&act(s, "ha")).await.unwrap().mac);
    }
    FileEnvelope::new_kek(&w.dir.join("keys"), "k2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut acked, mut failed) = (0usize, 0usize);
    let mut window: Option<(Instant, Instant)> = None;
    let mut rotation: Option<tokio::task::JoinHandle<usize>> = None;
    let mut i = 0usize;
    while acked < 300 {
        assert!(
            Instant::now() < deadline,
            "no progress: {acked} acts, {failed} failed tries\n{}",
            f.state()
        );
        if acked == 60 && rotation.is_none() {
            f.kill_primary().unwrap();
            // The rotation starts at once, into the failover, and is retried until done.
            let b = b.clone();
            rotation = Some(tokio::spawn(async move {
                let mut errors = 0;
                loop {
                    match b.rewrap_some("k2", 5).await {
                        Ok((_, 0)) => break errors,
                        Ok(_) => {}
                        Err(_) => {
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }));
        }
        let inst = if i.is_multiple_of(2) { &a } else { &b };
        match inst.act(&act(&sessions[i % sessions.len()], "ha")).await {
            Ok(r) => {
                assert_eq!(r.mac, before[i % sessions.len()], "act {i}: another answer");
                acked += 1;
                i += 1;
            }
            Err(_) => {
                failed += 1;
                let now = Instant::now();
                window = Some(window.map_or((now, now), |(s, _)| (s, now)));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let rotation_errors = tokio::time::timeout(Duration::from_secs(60), rotation.unwrap())
        .await
        .expect("the rotation finishes after the failover")
        .unwrap();
    let check = b.verify_records().await.unwrap();
    assert!(check.failed.is_empty(), "{:?}", check.failed);
    assert_eq!((check.records, check.opened), (20, 20));
    assert_eq!(check.by_kek.get("k2"), Some(&20), "{:?}", check.by_kek);
    for (s, mac) in sessions.iter().zip(&before) {
        assert_eq!(&a.act(&act(s, "ha")).await.unwrap().mac, mac);
    }
    let secs = window.map_or(0.0, |(s, e)| (e - s).as_secs_f64());
    eprintln!(
        "failover: {acked} acts answered, {failed} tries failed over {secs:.1} s; the rotation retried {rotation_errors} times"
    );
}
