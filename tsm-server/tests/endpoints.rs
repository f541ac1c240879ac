//! The TSM's endpoints take any bytes. Garbage gets an error, never a panic; a valid request
//! with one bit flipped is refused with a `protocol.*` code (or as a malformed message) and
//! changes nothing in the tables but the trail of refused messages, which counts it once
//! (`tsm_server::refusals`), while the same request unaltered is accepted.

mod support;

use proptest::prelude::*;
use std::sync::{Arc, OnceLock};
use support::*;
use tsm_protocol::control::{
    CardTarget, ControlRequest, ControlResponse, WalletChange, WalletUpdate,
};
use tsm_protocol::relay::{AgentMsg, AgentStatus, ServerMsg};
use tsm_server::service::ServiceError;
use tsm_server::store::Stmt;

struct Env {
    rt: tokio::runtime::Runtime,
    w: World,
    card: String,
    /// One case at a time (the tests compare the whole tables).
    lock: std::sync::Mutex<()>,
    _dir: TempDir,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = TempDir::new("fuzz");
        let ca = Arc::new(test_pki::TestCa::new("JPKI for user authentication").unwrap());
        let w = rt.block_on(World::new(&dir.sqlite(), ca));
        let card = iccid("898100000000000077");
        rt.block_on(w.register(MNO, &card));
        Env {
            rt,
            w,
            card,
            lock: std::sync::Mutex::new(()),
            _dir: dir,
        }
    })
}

fn wallet(iccid: &str) -> ControlRequest {
    ControlRequest::WalletUpdate {
        card: CardTarget {
            iccid: iccid.into(),
        },
        instance: vec![0xF0, 0x4B, 0x41, 0x47, 0x49, 0x57, 0x4C, 0x01, 0x01],
        updates: vec![WalletUpdate {
            id: [1; 8],
            change: WalletChange::Points(5),
        }],
        access: grant(3),
    }
}

/// The body of the TSM's signed answer (its signature checked, whatever header it echoes).
fn answer_body(e: &Env, answer: &[u8]) -> ControlResponse {
    tsm_protocol::signing::verify_document::<ControlResponse>(
        &tsm_protocol::Sealed::from_bytes(answer).expect("the answer is a sealed document"),
        tsm_protocol::Kind::ControlResponse,
        &e.w.answers,
    )
    .expect("the answer is signed by the TSM")
    .body
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_flipped_bit_is_refused_and_changes_nothing(flip in any::<usize>(), bit in 0u8..8) {
        let e = env();
        let _one = e.lock.lock().unwrap_or_else(|p| p.into_inner());
        let out = e.w.sign(
            BANK,
            &wallet(&e.card),
            Some(tsm_protocol::IdempotencyKey::random().unwrap()),
        );
        let mut bad = out.bytes.clone();
        let n = bad.len();
        bad[flip % n] ^= 1 << bit;
        let before = e.rt.block_on(e.w.dump());
        let refused = e.rt.block_on(refused_total(e.w.tsm.store()));
        match e.rt.block_on(e.w.tsm.control(&bad)) {
            Ok(answer) => match answer_body(e, &answer) {
                ControlResponse::Rejected(r) => {
                    prop_assert!(r.code.starts_with("protocol."), "refused as {r:?}")
                }
                other => prop_assert!(false, "an altered request answered {other:?}"),
            },
            // Not even a message: a 400.
            Err(ServiceError::BadRequest(_)) => {}
            Err(other) => prop_assert!(false, "{other}"),
        }
        prop_assert_eq!(e.rt.block_on(e.w.dump()), before, "the altered request changed the tables");
        // Counted in memory first; written at the latest by the sweep's flush.
        e.rt.block_on(e.w.tsm.flush_refusals());
        prop_assert_eq!(e.rt.block_on(refused_total(e.w.tsm.store())), refused + 1);
        // The same request unaltered is accepted (and cancelled again for the next case).
        let answer = e.rt.block_on(e.w.tsm.control(&out.bytes)).unwrap();
        let op = match answer_body(e, &answer) {
            ControlResponse::Accepted { op, .. } => op,
            other => { prop_assert!(false, "the unaltered request answered {other:?}"); unreachable!() }
        };
        let c = e.rt.block_on(e.w.send(BANK, &ControlRequest::Cancel { op }));
        prop_assert!(matches!(c, ControlResponse::Operation(_)), "{c:?}");
    }

    #[test]
    fn any_bytes_get_an_answer_not_a_panic(b in proptest::collection::vec(any::<u8>(), 0..200),
                                           flip in any::<usize>()) {
        let e = env();
        let _one = e.lock.lock().unwrap_or_else(|p| p.into_inner());
        let before = e.rt.block_on(e.w.dump());
        let refused = e.rt.block_on(refused_total(e.w.tsm.store()));
        let _ = e.rt.block_on(e.w.tsm.control(&b));
        // Garbage to the control endpoint is one refused message, counted.
        // Counted in memory first; written at the latest by the sweep's flush.
        e.rt.block_on(e.w.tsm.flush_refusals());
        prop_assert_eq!(e.rt.block_on(refused_total(e.w.tsm.store())), refused + 1);
        let _ = e.rt.block_on(e.w.tsm.relay(&b));
        let hello = tsm_protocol::codec::encode(&AgentMsg::Hello {
            ticket: "00".repeat(16), agent: "fuzz".into(), resume: None, credentials: None,
            prepared: None,
        }).unwrap();
        let mut bad = hello.clone();
        let n = bad.len();
        bad[flip % n] ^= 0x01;
        let _ = e.rt.block_on(e.w.tsm.relay(&bad));
        prop_assert_eq!(e.rt.block_on(e.w.dump()), before);
    }
}

/// A stored answer that no longer decodes (a damaged database) is the TSM's fault, not the
/// relay's: the repeated report gets a database error (HTTP 503), never "bad request" (400).
#[tokio::test]
async fn a_damaged_stored_answer_is_a_store_error_not_a_bad_request() {
    let dir = TempDir::new("damaged");
    let ca = Arc::new(test_pki::TestCa::new("JPKI for user authentication").unwrap());
    let w = World::new(&dir.sqlite(), ca).await;
    let card = iccid("898100000000000085");
    w.register(MNO, &card).await;
    let a = w.issue(BANK, &card, 3).await;
    let session = match hello(&w.tsm, &a.ticket, &a.code, PASSWORD).await.unwrap() {
        ServerMsg::Order { session, .. } => session,
        other => panic!("the right entries answered {other:?}"),
    };
    let (_, seq, _) = w
        .tsm
        .store()
        .session(&session.to_hex())
        .await
        .unwrap()
        .expect("the session is stored");
    let report = |seq: i64| {
        tsm_protocol::codec::encode(&AgentMsg::Report {
            session,
            seq: u32::try_from(seq).unwrap(),
            status: AgentStatus::Processed,
            results: Vec::new(),
        })
        .unwrap()
    };
    // Undamaged, the report of the order already answered gets the same order again.
    let again: ServerMsg =
        tsm_protocol::codec::decode(&w.tsm.relay(&report(seq - 1)).await.unwrap()).unwrap();
    assert!(matches!(again, ServerMsg::Order { .. }), "{again:?}");
    w.tsm
        .store()
        .commit(vec![Stmt::any(
            "UPDATE sessions SET reply = $1 WHERE id = $2",
            vec![vec![0xFF_u8; 3].into(), session.to_hex().into()],
        )])
        .await
        .unwrap();
    match w.tsm.relay(&report(seq - 1)).await {
        Err(ServiceError::Store(e)) => assert!(e.to_string().contains("session"), "{e}"),
        other => panic!("a damaged stored answer gave {other:?}"),
    }
}
