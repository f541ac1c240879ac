//! Racing clients against one broker's state, on SQLite and on a private PostgreSQL (started
//! for each test on its own port and directory, stopped afterwards). Each race is bounded (a
//! few seconds): what they prove is an ordering, never a timing.
//!
//! - a revoke always wins: once the administrator's `revoke` has returned, no password login
//!   and no act for that card succeeds, ever, and the row stays revoked;
//! - 60 simultaneous wrong passwords for one holder check at most the backoff's free tries;
//! - acts, service-key rotations and a KEK rotation by two instances together lose no record;
//! - a rolling restart of two instances under a stream of logins loses none.

#[path = "../common/admin.rs"]
mod admin_common;
mod failover;
mod rolling;
mod soak;
mod world;

use broker_protocol::Assurance;
use broker_protocol::api::{AdminRequest, AdminResponse};
use broker_server::clock::ManualClock;
use broker_server::envelope::FileEnvelope;
use broker_server::{Backoff, Broker, BrokerError};
use kagi_signed::password::{self, Policy};
use kagi_signed::signing::{self};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use zeroize::Zeroizing;

use world::*;

/// (a) Four clients alternate wrong and right password logins and acts while the
/// administrator revokes the card; every operation started after the revoke returned fails,
/// and the row stays revoked. Several rounds, one card each.
async fn revoke_always_wins(w: &World, rounds: u64) {
    let b = w.broker(no_backoff()).await;
    assert_eq!(w.admin(&b, mac_service("svc")).await, AdminResponse::Ok);
    for round in 0..rounds {
        let card = format!("RACE-{round}");
        let holder = format!("holder-{round}");
        // 2 MiB: a check takes a few milliseconds, the window in which a login that read
        // the row before the revoke could write it back after (what the old broker did).
        let params = password::Params {
            m_kib: 2048,
            t: 1,
            p: 1,
        };
        let phc = password::new_verifier("right password", &params).unwrap();
        assert_eq!(
            w.admin(
                &b,
                AdminRequest::EnrolCard {
                    card: card.clone(),
                    holder: holder.clone(),
                    password: Some(phc),
                }
            )
            .await,
            AdminResponse::Ok
        );
        assert!(matches!(
            w.admin(
                &b,
                AdminRequest::EnrolCredential {
                    card: card.clone(),
                    service: "svc".into()
                }
            )
            .await,
            AdminResponse::Credential { .. }
        ));
        let revoked = Arc::new(AtomicBool::new(false));
        let successes = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for c in 0..4 {
            let (b, holder, revoked, successes) = (
                b.clone(),
                holder.clone(),
                revoked.clone(),
                successes.clone(),
            );
            clients.push(tokio::spawn(async move {
                let mut session = None;
                let mut after = 0;
                let mut late_successes = Vec::new();
                for i in 0u32.. {
                    // Read before the operation starts: `true` means the revoke had returned.
                    let started_after = revoked.load(Ordering::SeqCst);
                    let password = if (i + c) % 2 == 0 {
                        "right password"
                    } else {
                        "wrong password"
                    };
                    let login = b
                        .login_password(&pw(&holder, password), Some("10.0.0.1"))
                        .await;
                    if let Ok(s) = &login {
                        session = Some(s.session.clone());
                        successes.fetch_add(1, Ordering::SeqCst);
                        if started_after {
                            late_successes.push(format!("login #{i}"));
                        }
                    }
                    let started_after = revoked.load(Ordering::SeqCst);
                    if let Some(s) = &session
                        && b.act(&act(s, "svc")).await.is_ok()
                    {
                        successes.fetch_add(1, Ordering::SeqCst);
                        if started_after {
                            late_successes.push(format!("act #{i}"));
                        }
                    }
                    if started_after {
                        after += 1;
                        if after == 12 {
                            break;
                        }
                    }
                }
                late_successes
            }));
        }
        // The revoke lands while the clients are busy: after some of them succeeded.
        while successes.load(Ordering::SeqCst) < 4 + round {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            w.admin(&b, AdminRequest::RevokeCard { card: card.clone() })
                .await,
            AdminResponse::Ok
        );
        revoked.store(true, Ordering::SeqCst);
        for c in clients {
            let late = c.await.unwrap();
            assert!(late.is_empty(), "round {round}: after the revoke: {late:?}");
        }
        let row = b.shards().of(&card).card(&card).await.unwrap().unwrap();
        assert_eq!(row.state, "revoked", "round {round}: the revoke was undone");
        // No session of the card outlives the revoke (one opened by a login in flight when
        // the revoke ended the card's sessions would).
        let live = b
            .shards()
            .of(&card)
            .query(
                "SELECT COUNT(*) FROM sessions WHERE card = $1",
                vec![card.clone().into()],
            )
            .await
            .unwrap();
        assert_eq!(
            live[0][0].int(),
            0,
            "round {round}: a session outlived the revoke"
        );
        // And a session of a revoked card that is still in the table (written by a broker
        // that did not end it) is refused when used: the card's state is checked then too.
        let token = format!("0.{}", broker_protocol::api::b64(card.as_bytes()));
        let hash: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()).into();
        b.shards()
            .of(&card)
            .commit(vec![broker_server::store::Shard::put_session(
                &hash,
                &card,
                Assurance::Password,
                i64::MAX / 2,
            )])
            .await
            .unwrap();
        match b.act(&act(&token, "svc")).await {
            Err(BrokerError::Refused(e)) => assert_eq!(e.code, "session.revoked"),
            other => panic!("round {round}: a revoked card's session acted: {other:?}"),
        }
        // And the right password now says so (the password is right, so nothing leaks).
        match b.login_password(&pw(&holder, "right password"), None).await {
            Err(BrokerError::Refused(e)) => assert_eq!(e.code, "login.revoked"),
            other => panic!("round {round}: {other:?}"),
        }
    }
}

/// (b) 60 wrong passwords at once for one holder check at most the free tries; all get the
/// same answer; the clock moving on allows exactly one more try.
async fn concurrent_wrong_passwords_check_at_most_the_limit(w: &World) {
    let clock = ManualClock::at(signing::now_ms() as i64);
    let backoff = Backoff {
        holder_free: 5,
        client_free: 1000,
        base_ms: 10_000,
        max_ms: 60_000,
        forget_after_ms: 3_600_000,
    };
    let b = Arc::new(
        Arc::try_unwrap(w.broker(backoff).await)
            .ok()
            .unwrap()
            .with_clock(Arc::new(clock.clone())),
    );
    let phc = password::new_verifier("right password", &Policy::cheap_for_tests().new).unwrap();
    w.admin(
        &b,
        AdminRequest::EnrolCard {
            card: "LIMIT".into(),
            holder: "limited".into(),
            password: Some(phc),
        },
    )
    .await;
    // One wrong try first, so the burst races on an existing counter (not only on its
    // creation).
    assert!(
        b.login_password(&pw("limited", "wrong"), Some("10.0.0.9"))
            .await
            .is_err()
    );
    let barrier = Arc::new(tokio::sync::Barrier::new(60));
    let mut tries = Vec::new();
    for i in 0..60 {
        let (b, barrier) = (b.clone(), barrier.clone());
        tries.push(tokio::spawn(async move {
            barrier.wait().await;
            let client = format!("10.0.1.{i}");
            match b
                .login_password(&pw("limited", "wrong"), Some(&client))
                .await
            {
                Err(BrokerError::Refused(e)) => (e.code, e.detail),
                other => panic!("{other:?}"),
            }
        }));
    }
    let mut answers = std::collections::BTreeSet::new();
    for t in tries {
        answers.insert(t.await.unwrap());
    }
    assert_eq!(answers.len(), 1, "different answers: {answers:?}");
    let checked = |b: Arc<Broker>| async move {
        b.shards()
            .of("LIMIT")
            .audit_trail(Some("LIMIT"))
            .await
            .unwrap()
            .iter()
            .filter(|e| e.outcome == "login.wrong-password")
            .count()
    };
    let n = checked(b.clone()).await;
    assert!((2..=5).contains(&n), "{n} passwords checked (limit 5)");
    // Tries that lost a race were not checked and not counted: the holder has tries left
    // until five were checked.
    for _ in n..5 {
        let r = b
            .login_password(&pw("limited", "wrong"), Some("10.0.2.0"))
            .await;
        assert!(r.is_err());
    }
    assert_eq!(checked(b.clone()).await, 5);
    // Backing off: even the right password gets the same answer as a wrong one.
    let same = b
        .login_password(&pw("limited", "right password"), Some("10.0.2.1"))
        .await;
    match same {
        Err(BrokerError::Refused(e)) => assert!(answers.contains(&(e.code, e.detail))),
        other => panic!("{other:?}"),
    }
    // An unknown holder: the same answer.
    match b.login_password(&pw("nobody", "x"), Some("10.0.2.2")).await {
        Err(BrokerError::Refused(e)) => assert!(answers.contains(&(e.code, e.detail))),
        other => panic!("{other:?}"),
    }
    // After the wait (10 s for the 5th failure), one try is checked again, not more.
    clock.advance(10_000);
    let mut again = Vec::new();
    for i in 0..10 {
        let b = b.clone();
        again.push(tokio::spawn(async move {
            let client = format!("10.0.3.{i}");
            let _ = b
                .login_password(&pw("limited", "wrong"), Some(&client))
                .await;
        }));
    }
    for t in again {
        t.await.unwrap();
    }
    assert_eq!(checked(b.clone()).await, 6);
    // Long enough later, the right password opens a session.
    clock.advance(3_600_000);
    b.login_password(&pw("limited", "right password"), Some("10.0.4.1"))
        .await
        .unwrap();
}

/// (c) Acts and service-key rotations run while two instances rotate the KEK: every record
/// opens afterwards, all under the new KEK, and each card's current key still answers.
async fn acts_and_kek_rotation_lose_no_record(w: &World) {
    let a = w.broker(no_backoff()).await;
    // Records other races on this database left (all must open too).
    let before = a.verify_records().await.unwrap().records;
    assert_eq!(w.admin(&a, mac_service("svc")).await, AdminResponse::Ok);
    let cards: Vec<String> = (0..40).map(|i| format!("ROT-{i}")).collect();
    for c in &cards {
        w.admin(
            &a,
            AdminRequest::EnrolCard {
                card: c.clone(),
                holder: c.clone(),
                password: None,
            },
        )
        .await;
        w.admin(
            &a,
            AdminRequest::EnrolCredential {
                card: c.clone(),
                service: "svc".into(),
            },
        )
        .await;
    }
    FileEnvelope::new_kek(&w.dir.join("keys"), "k2").unwrap();
    let b = w.broker(no_backoff()).await;
    let a = w.broker(no_backoff()).await;
    a.shards()
        .everywhere(vec![broker_server::store::Shard::put_setting(
            "current_kek",
            "k2",
        )])
        .await
        .unwrap();
    // Sessions straight into the shard (card logins are tested elsewhere).
    let mut sessions = Vec::new();
    for c in &cards {
        let token = format!("0.{}", broker_protocol::api::b64(c.as_bytes()));
        let hash: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()).into();
        a.shards()
            .of(c)
            .commit(vec![broker_server::store::Shard::put_session(
                &hash,
                c,
                Assurance::Card,
                i64::MAX / 2,
            )])
            .await
            .unwrap();
        sessions.push(token);
    }
    // Some service keys rotate before the KEK rotation starts: their new versions are under
    // k2 already, their retired ones still under k1 (a rewrap of the old version must not
    // touch the new one).
    let early: Vec<&String> = cards.iter().skip(1).step_by(3).collect();
    for c in &early {
        let r = w
            .admin(
                &a,
                AdminRequest::RotateServiceKey {
                    card: (*c).clone(),
                    service: "svc".into(),
                },
            )
            .await;
        assert!(
            matches!(r, AdminResponse::Credential { version: 2, .. }),
            "{r:?}"
        );
    }
    let mut work = Vec::new();
    for (i, inst) in [a.clone(), b.clone()].into_iter().enumerate() {
        work.push(tokio::spawn(async move {
            // Small budgets: many interleavings with the others.
            while inst.rewrap_some("k2", 7).await.unwrap().1 > 0 {}
            i
        }));
    }
    let acts = {
        let (b, sessions) = (b.clone(), sessions.clone());
        tokio::spawn(async move {
            let mut ok = 0;
            for _ in 0..3 {
                for s in &sessions {
                    b.act(&act(s, "svc")).await.unwrap();
                    ok += 1;
                }
            }
            ok
        })
    };
    // Service-key rotations by the administrator on instance b, meanwhile.
    for c in cards.iter().step_by(3) {
        let r = w
            .admin(
                &b,
                AdminRequest::RotateServiceKey {
                    card: c.clone(),
                    service: "svc".into(),
                },
            )
            .await;
        assert!(
            matches!(r, AdminResponse::Credential { version: 2, .. }),
            "{r:?}"
        );
    }
    for t in work {
        t.await.unwrap();
    }
    assert_eq!(acts.await.unwrap(), 120);
    // Whatever was written under k1 meanwhile is rewrapped by the sweep.
    while b.sweep().await.unwrap() > 0 {}
    let check = b.verify_records().await.unwrap();
    assert!(check.failed.is_empty(), "{:?}", check.failed);
    let expected = before + 40 + (cards.iter().step_by(3).count() + early.len()) as u64;
    assert_eq!((check.records, check.opened), (expected, expected));
    assert_eq!(
        check.by_kek.get("k2"),
        Some(&expected),
        "{:?}",
        check.by_kek
    );
    for s in &sessions {
        b.act(&act(s, "svc")).await.unwrap();
    }
}

/// A key store that counts the data keys it unwraps and holds its first unwrap until the
/// other instance's key store has reached its own first unwrap (or 10 s passed): both
/// instances have then read their first batch before either re-wraps anything.
struct Gated {
    inner: FileEnvelope,
    unwraps: AtomicU64,
    gate: Arc<(std::sync::Mutex<u32>, std::sync::Condvar)>,
}

impl broker_server::Envelope for Gated {
    fn keks(&self) -> Vec<String> {
        self.inner.keks()
    }
    fn wrap_dek(
        &self,
        kek: &str,
        dek: &[u8],
    ) -> Result<Vec<u8>, broker_server::envelope::EnvelopeError> {
        self.inner.wrap_dek(kek, dek)
    }
    fn unwrap_dek(
        &self,
        kek: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, broker_server::envelope::EnvelopeError> {
        if self.unwraps.fetch_add(1, Ordering::SeqCst) == 0 {
            let (arrived, cv) = &*self.gate;
            let mut n = arrived.lock().unwrap();
            *n += 1;
            cv.notify_all();
            // Well under the 10 s rotation lease: this wait blocks a runtime worker, and a
            // task the other instance needs can be stuck behind it (tokio's LIFO slot is not
            // stolen); a wait as long as the lease let the claims lapse, and the other
            // instance unwrapped the same batch again (111 unwraps for 101 records in CI).
            let _ = cv
                .wait_timeout_while(n, std::time::Duration::from_secs(3), |n| *n < 2)
                .unwrap();
        }
        self.inner.unwrap_dek(kek, wrapped)
    }
    fn describe(&self) -> String {
        "gated".into()
    }
}

/// (d) Two instances rotating the KEK together split the records: every record is unwrapped
/// once in all (the old code had both instances read, unwrap and re-wrap the same batch), and
/// the counts they report add up to the records (the old code counted a re-wrap that found the
/// record already moved).
async fn two_instances_split_a_kek_rotation(w: &World) {
    let a = w.broker(no_backoff()).await;
    assert_eq!(w.admin(&a, mac_service("split")).await, AdminResponse::Ok);
    let not_k3 = |v: &broker_server::service::RecordCheck| {
        v.records - v.by_kek.get("k3").copied().unwrap_or(0)
    };
    for i in 0..30 {
        let card = format!("SPLIT-{i}");
        for req in [
            AdminRequest::EnrolCard {
                card: card.clone(),
                holder: card.clone(),
                password: None,
            },
            AdminRequest::EnrolCredential {
                card: card.clone(),
                service: "split".into(),
            },
        ] {
            w.admin(&a, req).await;
        }
    }
    let records = not_k3(&a.verify_records().await.unwrap());
    assert!(records >= 30);
    FileEnvelope::new_kek(&w.dir.join("keys"), "k3").unwrap();
    let gate = Arc::new((std::sync::Mutex::new(0u32), std::sync::Condvar::new()));
    let mut envelopes = Vec::new();
    let mut instances = Vec::new();
    // Both instances up before either starts, so the gate holds the first one only while the
    // other reaches its first unwrap.
    for _ in 0..2 {
        let e = Arc::new(Gated {
            inner: FileEnvelope::open_dir(&w.dir.join("keys")).unwrap(),
            unwraps: AtomicU64::new(0),
            gate: gate.clone(),
        });
        envelopes.push(e.clone());
        instances.push(w.broker_with(no_backoff(), e).await);
    }
    let mut work = Vec::new();
    for inst in instances {
        work.push(tokio::spawn(async move {
            let mut done = 0;
            loop {
                let (n, left) = inst.rewrap_some("k3", 10).await.unwrap();
                done += n;
                if left == 0 {
                    break done;
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut reported = 0;
    for t in work {
        reported += t.await.unwrap();
    }
    let unwrapped: u64 = envelopes
        .iter()
        .map(|e| e.unwraps.load(Ordering::SeqCst))
        .sum();
    let check = a.verify_records().await.unwrap();
    assert!(check.failed.is_empty(), "{:?}", check.failed);
    assert_eq!(not_k3(&check), 0);
    assert_eq!(reported, records, "re-wraps reported by the two instances");
    assert_eq!(
        unwrapped, records,
        "data keys unwrapped by the two instances"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kek_rotation_split_sqlite() {
    two_instances_split_a_kek_rotation(&World::new("split-sqlite", false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoke_always_wins_sqlite() {
    revoke_always_wins(&World::new("revoke-sqlite", false), 6).await;
}

/// The three races on one private PostgreSQL (one start for all: starting it is most of the
/// time).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn races_on_postgresql() {
    let w = World::new("pg", true);
    revoke_always_wins(&w, 4).await;
    concurrent_wrong_passwords_check_at_most_the_limit(&w).await;
    acts_and_kek_rotation_lose_no_record(&w).await;
    two_instances_split_a_kek_rotation(&w).await;
    rolling::a_rolling_restart_loses_no_login(&w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rolling_restart_sqlite() {
    rolling::a_rolling_restart_loses_no_login(&World::new("rolling-sqlite", false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_password_limit_sqlite() {
    concurrent_wrong_passwords_check_at_most_the_limit(&World::new("limit-sqlite", false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acts_and_kek_rotation_sqlite() {
    acts_and_kek_rotation_lose_no_record(&World::new("rotate-sqlite", false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acts_and_rotation_survive_a_failover() {
    failover::acts_and_rotation_survive_a_failover(&World::ha("failover")).await;
}

/// `scripts/soak.sh` runs it (not part of the suite: it runs for minutes).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a soak run of minutes: scripts/soak.sh"]
async fn soak_on_a_formation() {
    soak::soak(&World::ha("soak")).await;
}
