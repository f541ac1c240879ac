//! The TSM's endpoints take any bytes: garbage, and valid messages with a bit flipped, end in
//! a refusal (a signed `Rejected`, or a bad-request error), never a panic or a state change.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use tsm_protocol::PartyId;
use tsm_protocol::control::ControlRequest;
use tsm_protocol::relay::AgentMsg;
use tsm_protocol::signing::{Policy, Signer, Trust};
use tsm_server::service::{Config, Tsm};
use tsm_server::store::{Backend, Store};

fn tsm(rt: &tokio::runtime::Runtime, sp: &Signer) -> Arc<Tsm> {
    let dir = std::env::temp_dir().join(format!("kagi-tsm-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = rt
        .block_on(Store::open(&Backend::Sqlite(dir.join("fuzz.db"))))
        .unwrap();
    let mut trust = Trust::new();
    trust.add(sp.party().clone(), *sp.verifying_key());
    let me = PartyId::new("tsm:fuzz").unwrap();
    Arc::new(Tsm::new(
        Config {
            signer: Signer::generate(me.clone()).unwrap(),
            trust,
            policy: Policy::new(me),
            providers: BTreeMap::new(),
            operators: BTreeMap::new(),
            state_key: card_wire::scp03::AesKey::new(&[1; 16]).unwrap(),
            revocation_list: None,
        },
        store,
    ))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn any_bytes_get_an_answer_not_a_panic(b in proptest::collection::vec(any::<u8>(), 0..200),
                                           flip in any::<usize>()) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let sp = Signer::generate(PartyId::new("sp:fuzz").unwrap()).unwrap();
        let t = tsm(&rt, &sp);
        let _ = rt.block_on(t.control(&b));
        let _ = rt.block_on(t.relay(&b));
        // A well-signed request with one bit flipped: refused.
        let out = tsm_protocol::control::sign_request(
            &sp,
            &PartyId::new("tsm:fuzz").unwrap(),
            &ControlRequest::CheckEligibility { iccid: "8981".into(), memory_needed: 1 },
            None,
            tsm_protocol::signing::now_ms(),
            60_000,
        ).unwrap();
        let mut bad = out.bytes.clone();
        let n = bad.len();
        bad[flip % n] ^= 0x01;
        if let Ok(answer) = rt.block_on(t.control(&bad)) {
            // Whatever answers is a refusal, signed by the TSM, to this very request.
            let mut tt = Trust::new();
            tt.add(t.party().clone(), t.verifying_key());
            let r = tsm_protocol::control::open_answer(&answer, &out.header, &tt, tsm_protocol::signing::now_ms());
            prop_assert!(
                matches!(r, Ok(tsm_protocol::control::ControlResponse::Rejected(_)) | Err(_)),
                "{r:?}"
            );
        }
        let hello = tsm_protocol::codec::encode(&AgentMsg::Hello {
            ticket: "00".repeat(16), agent: "fuzz".into(), resume: None, credentials: None,
        }).unwrap();
        let mut bad = hello.clone();
        let n = bad.len();
        bad[flip % n] ^= 0x01;
        let _ = rt.block_on(t.relay(&bad));
    }
}
