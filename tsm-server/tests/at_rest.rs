//! What the TSM keeps of sealed content and card certificates:
//!
//! - the sealed parts of a request (a credential's key and PIN) are never in the operation's
//!   record; they sit in their own table while the operation runs and are deleted in the
//!   transaction that ends it (here: a cancellation, and an expiry by the sweeper);
//! - a SIM's key agreement certificate is what its operator registered, handed to providers
//!   on request; another operator cannot replace it; a SIM without one is refused with a
//!   code that says who must register it; an operator's garbage certificate is refused.

mod support;

use std::sync::Arc;
use support::*;
use tsm_protocol::ErrorReport;
use tsm_protocol::control::{ControlRequest, ControlResponse};

async fn world(backend: &tsm_server::store::Backend) -> World {
    let ca = Arc::new(test_pki::TestCa::new("JPKI for user authentication").unwrap());
    World::new(backend, ca).await
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of every column of every row of `table`.
async fn all_bytes(w: &World, table: &'static str) -> Vec<u8> {
    let sql: &'static str = match table {
        "ops" => "SELECT * FROM ops",
        "sealed" => "SELECT * FROM sealed",
        _ => unreachable!("a table of this test"),
    };
    let mut out = Vec::new();
    for row in w.tsm.store().query(sql, vec![]).await.unwrap() {
        for v in row {
            out.extend(v.blob());
            out.extend(v.text().into_bytes());
        }
    }
    out
}

#[tokio::test]
async fn sealed_parts_live_apart_and_go_when_the_operation_ends() {
    let dir = TempDir::new("at-rest");
    let w = world(&dir.sqlite()).await;
    let card = iccid("898100000000000061");
    w.register(MNO, &card).await;
    // Recognisable, random sealed parts (what a provider's seal looks like to the TSM).
    let key_part: Vec<u8> = [rand16(), rand16(), rand16()].concat();
    let pin_part: Vec<u8> = [rand16(), rand16()].concat();
    let mut req = w.issue_request(&card, 3);
    if let ControlRequest::Issue { credential, .. } = &mut req {
        credential.sealed_key = key_part.clone();
        credential.sealed_pin = pin_part.clone();
    }
    let a = accepted(w.send(BANK, &req).await);
    let ops = all_bytes(&w, "ops").await;
    assert!(
        !contains(&ops, &key_part),
        "the sealed key is in the operation's record"
    );
    assert!(
        !contains(&ops, &pin_part),
        "the sealed PIN is in the operation's record"
    );
    let sealed = all_bytes(&w, "sealed").await;
    assert!(contains(&sealed, &key_part) && contains(&sealed, &pin_part));
    // The provider cancels: the operation ends and its sealed parts go in the same commit.
    let r = w.send(BANK, &ControlRequest::Cancel { op: a.op }).await;
    assert!(matches!(r, ControlResponse::Operation(_)), "{r:?}");
    assert_eq!(w.tsm.store().sealed(&a.op).await.unwrap(), None);
    assert!(all_bytes(&w, "sealed").await.is_empty());

    // An operation that expires waiting for its device loses them to the sweeper.
    let b = w.issue(BANK, &card, 3).await;
    assert!(w.tsm.store().sealed(&b.op).await.unwrap().is_some());
    w.tsm
        .store()
        .commit(vec![tsm_server::store::Stmt::one(
            "UPDATE ops SET expires_at = 1 WHERE id = $1",
            vec![b.op.to_hex().into()],
        )])
        .await
        .unwrap();
    assert_eq!(w.tsm.sweep().await.unwrap(), 1);
    assert_eq!(w.tsm.store().sealed(&b.op).await.unwrap(), None);
}

/// A running operation whose relay vanished: past its deadline and without progress for the
/// stall time it expires (code `tsm.deadline`, sealed parts gone); one that moved recently
/// stays running.
#[tokio::test]
async fn a_running_operation_whose_relay_vanished_expires_at_its_deadline() {
    let dir = TempDir::new("running-deadline");
    let w = world(&dir.sqlite()).await;
    let card = iccid("898100000000000062");
    w.register(MNO, &card).await;
    let a = w.issue(BANK, &card, 3).await;
    let set = |updated_at: i64| {
        tsm_server::store::Stmt::one(
            "UPDATE ops SET state = 'running', expires_at = 1, updated_at = $2 WHERE id = $1",
            vec![a.op.to_hex().into(), updated_at.into()],
        )
    };
    // Past its deadline, but the session moved a moment ago: left alone.
    let just_now = tsm_protocol::signing::now_ms() as i64 - 1_000;
    w.tsm.store().commit(vec![set(just_now)]).await.unwrap();
    assert_eq!(w.tsm.sweep().await.unwrap(), 0);
    assert_eq!(
        w.tsm.store().op(&a.op).await.unwrap().unwrap().state,
        tsm_protocol::control::OpState::Running
    );
    // No progress for longer than the stall time: expired, with its reason.
    let stalled = just_now - tsm_server::service::RUNNING_STALL_MS - 1_000;
    w.tsm.store().commit(vec![set(stalled)]).await.unwrap();
    assert_eq!(w.tsm.sweep().await.unwrap(), 1);
    let op = w.tsm.store().op(&a.op).await.unwrap().unwrap();
    assert_eq!(op.state, tsm_protocol::control::OpState::Expired);
    assert_eq!(op.data.error.unwrap().code, "tsm.deadline");
    assert_eq!(w.tsm.store().sealed(&a.op).await.unwrap(), None);
}

fn rejected_code(r: &ControlResponse) -> Option<&str> {
    match r {
        ControlResponse::Rejected(ErrorReport { code, .. }) => Some(code),
        _ => None,
    }
}

#[tokio::test]
async fn a_card_certificate_is_the_operators_and_providers_read_it() {
    let dir = TempDir::new("card-cert");
    let w = world(&dir.sqlite()).await;
    let card = iccid("898100000000000079");
    // Registered without a certificate: nothing to seal to, and the refusal says who acts.
    w.register(MNO, &card).await;
    let ask = ControlRequest::CardCertificate {
        iccid: card.clone(),
    };
    let r = w.send(BANK, &ask).await;
    assert_eq!(rejected_code(&r), Some("business.no-card-certificate"));
    // Any DER certificate stands for the card's here (the provider checks its chain).
    let cert = w.ca.certificate_der().unwrap();
    let register = |cert: Option<Vec<u8>>| ControlRequest::RegisterCard {
        iccid: card.clone(),
        cin: "0102030405060708090A".into(),
        sd_aid: vec![],
        free_memory: 65536,
        card_certificate: cert,
    };
    assert_eq!(
        w.send(MNO, &register(Some(cert.clone()))).await,
        ControlResponse::Ok
    );
    assert_eq!(
        w.send(BANK, &ask).await,
        ControlResponse::CardCertificate {
            iccid: card.clone(),
            certificate: cert.clone()
        }
    );
    // Another operator cannot put its own certificate there.
    let r = w.send(OTHER_MNO, &register(Some(cert.clone()))).await;
    assert_eq!(rejected_code(&r), Some("business.card-taken"));
    // Garbage from the operator is refused before anything is written.
    let r = w
        .send(MNO, &register(Some(b"not a certificate".to_vec())))
        .await;
    assert_eq!(rejected_code(&r), Some("business.bad-card-certificate"));
    assert_eq!(
        w.send(BANK, &ask).await,
        ControlResponse::CardCertificate {
            iccid: card.clone(),
            certificate: cert
        }
    );
    // Only providers ask for it.
    let r = w.send(MNO, &ask).await;
    assert_eq!(rejected_code(&r), Some("business.not-a-provider"));
}
