//! Racing clients against shared state, on SQLite and on a private PostgreSQL, with two TSM
//! instances on one database:
//!
//! - many simultaneous wrong access codes and wrong passwords check at most the attempts the
//!   provider allowed (every check spends an attempt first), and lock the download;
//! - a cancellation or revocation racing the relay always lands (never a conflict to retry),
//!   what it cancelled stays cancelled, and the sealed parts of its request are gone;
//! - a SIM reported lost while a provider issues to it keeps no live credential;
//! - many requests for the same SIM and provider at once (other idempotency keys) start one
//!   operation, never two.

mod support;

use std::sync::Arc;
use support::*;
use tsm_protocol::control::{
    CardTarget, ControlRequest, ControlResponse, OpState, RevokeReason, WalletChange, WalletUpdate,
};
use tsm_protocol::relay::{ServerMsg, StopOutcome};
use tsm_server::service::{ServiceError, Tsm};
use tsm_server::store::Backend;

fn wallet(iccid: &str, attempts: u8) -> ControlRequest {
    ControlRequest::WalletUpdate {
        card: CardTarget {
            iccid: iccid.into(),
        },
        instance: vec![0xF0, 0x4B, 0x41, 0x47, 0x49, 0x57, 0x4C, 0x01, 0x01],
        updates: vec![WalletUpdate {
            id: [1; 8],
            change: WalletChange::Points(5),
        }],
        access: grant(attempts),
    }
}

/// The stop of a locked download: refused as it locks, failed (locked) afterwards.
fn locked_out(outcome: StopOutcome) -> bool {
    matches!(outcome, StopOutcome::Refused | StopOutcome::Failed)
}

async fn world(backend: &Backend) -> World {
    let ca = Arc::new(test_pki::TestCa::new("JPKI for user authentication").unwrap());
    World::new(backend, ca).await
}

/// 24 wrong entries at once (wrong codes and wrong passwords, half on each of two instances)
/// against a download allowing 3: at most 3 are checked; then the download is locked and
/// even the right entries are not checked.
async fn wrong_entries_race(backend: Backend) {
    const LIMIT: u8 = 3;
    let w = world(&backend).await;
    let twin = w.instance().await;
    let card = iccid("898100000000000011");
    w.register(MNO, &card).await;
    for round in 0..3 {
        let a = accepted(w.send(BANK, &wallet(&card, LIMIT)).await);
        let before = w.tsm.entry_checks() + twin.entry_checks();
        let mut tasks = Vec::new();
        for i in 0..24 {
            let tsm: Arc<Tsm> = if i % 2 == 0 {
                w.tsm.clone()
            } else {
                twin.clone()
            };
            let (ticket, code) = (a.ticket.clone(), a.code.clone());
            tasks.push(tokio::spawn(async move {
                if i % 4 < 2 {
                    hello(&tsm, &ticket, &wrong_code(&code), PASSWORD).await
                } else {
                    hello(&tsm, &ticket, &code, "wrong horse").await
                }
            }));
        }
        let mut conflicts = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(ServerMsg::AskCredentials { attempts_left, .. }) => {
                    assert!(attempts_left < LIMIT)
                }
                Ok(ServerMsg::Stop { outcome, .. }) => assert!(locked_out(outcome)),
                Ok(other) => panic!("a wrong entry got {other:?}"),
                Err(ServiceError::Conflict) => conflicts += 1,
                Err(e) => panic!("{e}"),
            }
        }
        let checked = w.tsm.entry_checks() + twin.entry_checks() - before;
        assert!(
            checked <= u64::from(LIMIT),
            "round {round}: {checked} entries checked, {LIMIT} allowed ({conflicts} conflicts)"
        );
        // Whoever lost a race sends again: the download locks after exactly the limit.
        let mut locked = false;
        for _ in 0..2 * LIMIT {
            match hello(&w.tsm, &a.ticket, &wrong_code(&a.code), PASSWORD).await {
                Ok(ServerMsg::Stop { outcome, .. }) => {
                    assert!(locked_out(outcome), "{outcome:?}");
                    locked = true;
                    break;
                }
                Ok(_) | Err(ServiceError::Conflict) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(locked, "round {round}: the download never locked");
        let op = w.tsm.store().op(&a.op).await.unwrap().unwrap();
        assert_eq!((op.state, op.data.attempts_left), (OpState::Failed, 0));
        let checked = w.tsm.entry_checks() + twin.entry_checks() - before;
        assert_eq!(checked, u64::from(LIMIT), "round {round}");
        // The right entries now: refused without a check.
        let r = hello(&w.tsm, &a.ticket, &a.code, PASSWORD).await.unwrap();
        assert!(
            matches!(r, ServerMsg::Stop { outcome, .. } if locked_out(outcome)),
            "{r:?}"
        );
        assert_eq!(
            w.tsm.entry_checks() + twin.entry_checks() - before,
            u64::from(LIMIT)
        );
        let wrongs = w
            .tsm
            .store()
            .audit_trail(Some(&a.op))
            .await
            .unwrap()
            .iter()
            .filter(|e| e.event == "wrong-entries")
            .count();
        assert_eq!(wrongs, usize::from(LIMIT));
    }
}

/// A cancellation or revocation sent while the relay presents entries (right and wrong, on
/// both instances) always lands: no conflict, and the operation ends cancelled.
async fn cancel_and_revoke_race(backend: Backend) {
    let w = world(&backend).await;
    let twin = w.instance().await;
    let card = iccid("898100000000000012");
    w.register(MNO, &card).await;
    for round in 0..12 {
        let revoke = round % 2 == 1;
        let a = if revoke {
            w.issue(BANK, &card, 10).await
        } else {
            accepted(w.send(BANK, &wallet(&card, 10)).await)
        };
        // An issuance's sealed parts are kept while it runs.
        assert_eq!(
            w.tsm.store().sealed(&a.op).await.unwrap().is_some(),
            revoke,
            "round {round}"
        );
        let mut tasks = Vec::new();
        for i in 0..6 {
            let tsm: Arc<Tsm> = if i % 2 == 0 {
                w.tsm.clone()
            } else {
                twin.clone()
            };
            let (ticket, code) = (a.ticket.clone(), a.code.clone());
            tasks.push(tokio::spawn(async move {
                let code = if i == 3 { code } else { wrong_code(&code) };
                hello(&tsm, &ticket, &code, PASSWORD).await
            }));
        }
        let req = if revoke {
            ControlRequest::Revoke {
                credential: a.op,
                reason: RevokeReason::UserRequest,
            }
        } else {
            ControlRequest::Cancel { op: a.op }
        };
        let via = if round % 4 < 2 { &w.tsm } else { &twin };
        let answer = w.send_via(via, BANK, &req, None).await;
        match answer {
            Ok(ControlResponse::Operation(v)) if !revoke => {
                assert_eq!(v.state, OpState::Cancelled, "round {round}")
            }
            Ok(ControlResponse::Credential(s)) if revoke => {
                assert_eq!(s.state, "revoked", "round {round}")
            }
            other => panic!("round {round}: the {} answered {other:?}", req.name()),
        }
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) | Err(ServiceError::Conflict) => {}
                Err(e) => panic!("{e}"),
            }
        }
        // It stays so: the relay's writes that lost the race were not applied.
        let op = w.tsm.store().op(&a.op).await.unwrap().unwrap();
        assert_eq!(op.state, OpState::Cancelled, "round {round}");
        if revoke {
            let c = w.tsm.store().credential(&a.op).await.unwrap().unwrap();
            assert_eq!(c.state, "revoked", "round {round}");
        }
        // Whoever won, the sealed parts went with the operation's end.
        assert_eq!(
            w.tsm.store().sealed(&a.op).await.unwrap(),
            None,
            "round {round}"
        );
        let r = hello(&twin, &a.ticket, &a.code, PASSWORD).await.unwrap();
        assert!(
            matches!(
                r,
                ServerMsg::Stop {
                    outcome: StopOutcome::Refused,
                    ..
                }
            ),
            "round {round}: {r:?}"
        );
    }
}

/// The operator reports a SIM lost while the provider issues to it (on the other instance):
/// either the issue is refused, or its credential is revoked — never a live credential on a
/// lost card.
async fn card_lost_race(backend: Backend) {
    let w = Arc::new(world(&backend).await);
    let twin = w.instance().await;
    for round in 0..12u32 {
        let card = iccid(&format!("8981000000000{:05}", 100 + round));
        w.register(MNO, &card).await;
        let issue = w.issue_request(&card, 3);
        let w2 = w.clone();
        let twin2 = twin.clone();
        let issuing = tokio::spawn(async move {
            w2.send_via(
                &twin2,
                BANK,
                &issue,
                Some(tsm_protocol::IdempotencyKey::random().unwrap()),
            )
            .await
        });
        let lost = w
            .send(
                MNO,
                &ControlRequest::CardLost {
                    iccid: card.clone(),
                },
            )
            .await;
        assert_eq!(lost, ControlResponse::Ok);
        let issued = issuing.await.unwrap();
        match issued {
            Ok(ControlResponse::Accepted { .. }) | Ok(ControlResponse::Rejected(_)) => {}
            other => panic!("round {round}: {other:?}"),
        }
        for c in w.tsm.store().credentials_on(&card).await.unwrap() {
            assert_eq!(
                c.state, "revoked",
                "round {round}: a live credential on a lost SIM"
            );
        }
        let live: Vec<_> = w.tsm.store().live_ops_on(&card).await.unwrap();
        assert!(
            live.is_empty(),
            "round {round}: operation {} is live on a lost SIM",
            live[0].id
        );
    }
}

/// 16 wallet updates for one SIM at once (each with its own idempotency key, half on each
/// instance, signed beforehand and released together): one operation starts, the others are
/// refused as in progress; never two live operations of one provider on one card.
async fn one_live_operation_race(backend: Backend) {
    const N: usize = 16;
    let w = Arc::new(world(&backend).await);
    let twin = w.instance().await;
    for round in 0..4u32 {
        let card = iccid(&format!("8981000000000{:05}", 300 + round));
        w.register(MNO, &card).await;
        let start = Arc::new(tokio::sync::Barrier::new(N));
        let mut tasks = Vec::new();
        for i in 0..N {
            let tsm = if i % 2 == 0 {
                w.tsm.clone()
            } else {
                twin.clone()
            };
            let idem = Some(tsm_protocol::IdempotencyKey::random().unwrap());
            let out = w.sign(BANK, &wallet(&card, 3), idem);
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                (tsm.control(&out.bytes).await, out.header)
            }));
        }
        let (mut accepted, mut busy) = (0, 0);
        for t in tasks {
            let (answer, header) = t.await.unwrap();
            let answer = answer.map(|a| {
                tsm_protocol::control::open_answer(
                    &a,
                    &header,
                    &w.answers,
                    tsm_protocol::signing::now_ms(),
                )
            });
            match answer {
                Ok(Ok(ControlResponse::Accepted { .. })) => accepted += 1,
                Ok(Ok(ControlResponse::Rejected(r))) if r.code == "business.in-progress" => {
                    busy += 1
                }
                other => panic!("round {round}: {other:?}"),
            }
        }
        let live = w.tsm.store().live_ops_on(&card).await.unwrap();
        assert_eq!(
            (accepted, busy, live.len()),
            (1, N - 1, 1),
            "round {round}: accepted, refused as in progress, live operations"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_one_live_operation_per_card_and_provider() {
    let dir = TempDir::new("race-live");
    one_live_operation_race(dir.sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_one_live_operation_per_card_and_provider() {
    let pg = tsm_server::testing::PrivatePostgres::start("tsm-race-live").unwrap();
    one_live_operation_race(Backend::Postgres(pg.url.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_wrong_entries_check_at_most_the_limit() {
    let dir = TempDir::new("race-entries");
    wrong_entries_race(dir.sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_wrong_entries_check_at_most_the_limit() {
    let pg = tsm_server::testing::PrivatePostgres::start("tsm-race-entries").unwrap();
    wrong_entries_race(Backend::Postgres(pg.url.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_cancel_and_revoke_always_land() {
    let dir = TempDir::new("race-cancel");
    cancel_and_revoke_race(dir.sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cancel_and_revoke_always_land() {
    let pg = tsm_server::testing::PrivatePostgres::start("tsm-race-cancel").unwrap();
    cancel_and_revoke_race(Backend::Postgres(pg.url.clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_lost_card_keeps_no_live_credential() {
    let dir = TempDir::new("race-lost");
    card_lost_race(dir.sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_a_lost_card_keeps_no_live_credential() {
    let pg = tsm_server::testing::PrivatePostgres::start("tsm-race-lost").unwrap();
    card_lost_race(Backend::Postgres(pg.url.clone())).await;
}
