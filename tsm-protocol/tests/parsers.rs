//! Everything that crosses a boundary decodes without panicking: random bytes and single
//! flipped bits of valid messages, for every message type; the relay agent fed arbitrary
//! orders; the card-script engine fed arbitrary reports.

use proptest::prelude::*;
use std::sync::Arc;
use tsm_protocol::codec;
use tsm_protocol::control::{ControlRequest, ControlResponse, OpState};
use tsm_protocol::ids::{OpId, SessionId};
use tsm_protocol::receipt::ExecutionReceipt;
use tsm_protocol::relay::{Agent, AgentCmd, AgentMsg, AgentStatus, BatchResult, ServerMsg};
use tsm_protocol::script::{Engine, Goal, Next, Plan};
use tsm_protocol::signing::Sealed;

fn samples() -> Vec<Vec<u8>> {
    vec![
        codec::encode(&AgentMsg::Report {
            session: SessionId([1; 16]),
            seq: 3,
            status: AgentStatus::Processed,
            results: vec![BatchResult {
                batch_id: 2,
                executed: 1,
                rapdus: vec![vec![0x90, 0x00]],
                transport_error: None,
                channel: Some(1),
            }],
        })
        .unwrap(),
        codec::encode(&ServerMsg::Order {
            session: SessionId([2; 16]),
            seq: 1,
            delay_ms: 0,
            cmds: vec![AgentCmd::Apdus {
                batch_id: 1,
                capdus: vec![vec![
                    0x80, 0x50, 0x30, 0x00, 0x08, 1, 2, 3, 4, 5, 6, 7, 8, 0,
                ]],
                stop_on_error: true,
            }],
        })
        .unwrap(),
        codec::encode(&ControlRequest::Cancel { op: OpId([3; 16]) }).unwrap(),
        codec::encode(&ControlResponse::Accepted {
            op: OpId([4; 16]),
            state: OpState::AwaitingDevice,
            device_ticket: Some("t".into()),
            access_code: Some("1234-5678-9012".into()),
            expires_at: 9,
        })
        .unwrap(),
    ]
}

fn decode_all(b: &[u8]) {
    let _ = codec::decode::<AgentMsg>(b);
    let _ = codec::decode::<ServerMsg>(b);
    let _ = codec::decode::<ControlRequest>(b);
    let _ = codec::decode::<ControlResponse>(b);
    let _ = codec::decode::<ExecutionReceipt>(b);
    if let Ok(s) = Sealed::from_bytes(b) {
        let _ = s.peek_header();
    }
}

/// Keys that open nothing (the engine never gets that far with garbage).
struct NoKeys;
impl card_wire::scp03::CardKeys for NoKeys {
    fn for_card(
        &self,
        _kdd: &[u8; 10],
    ) -> Result<card_wire::scp03::StaticKeys, card_wire::scp03::Scp03Error> {
        Ok(card_wire::scp03::StaticKeys::default_test_keys(0x30))
    }
}

fn arb_result() -> impl Strategy<Value = BatchResult> {
    (
        0u32..4,
        any::<u16>(),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5),
        proptest::option::of(0u8..25),
    )
        .prop_map(|(batch_id, executed, rapdus, channel)| BatchResult {
            batch_id,
            executed,
            rapdus,
            transport_error: None,
            channel,
        })
}

proptest! {
    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        decode_all(&b);
    }

    #[test]
    fn flipped_bits_never_panic(which in 0usize..4, pos in any::<usize>(), bit in 0u8..8) {
        let mut b = samples()[which].clone();
        let n = b.len();
        b[pos % n] ^= 1 << bit;
        decode_all(&b);
    }

    #[test]
    fn the_agent_takes_any_order(capdus in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..6),
                                 aid in proptest::collection::vec(any::<u8>(), 0..20)) {
        let mut card = applet_sim::SimCard::powered(applet_sim::SimConfig::default());
        let mut agent = Agent::new();
        let cmds = vec![
            AgentCmd::OpenChannel { aid },
            AgentCmd::Apdus { batch_id: 1, capdus, stop_on_error: false },
            AgentCmd::CloseChannel,
        ];
        let _ = agent.on_order(&mut card, SessionId([9; 16]), 1, &cmds);
        // The same order again is answered from the stored report, an older one refused.
        let again = agent.on_order(&mut card, SessionId([9; 16]), 1, &cmds);
        let AgentMsg::Report { seq, .. } = again else { panic!("not a report") };
        prop_assert_eq!(seq, 1);
    }

    #[test]
    fn the_engine_takes_any_report(reports in proptest::collection::vec(proptest::collection::vec(arb_result(), 0..4), 1..6)) {
        let plan = Plan {
            op: OpId([1; 16]),
            sd_aid: vec![0xA0, 0, 0, 1, 0x51, 0, 0, 0],
            kvn: 0x30,
            expected_cin: "00".into(),
            goals: vec![Goal::Absent { aid: vec![1, 2, 3, 4, 5], related: false }],
            new_keys: None,
            fallback: None,
        };
        let mut engine = Engine::new(plan, Arc::new(NoKeys), [0; 32]);
        let _ = engine.open();
        for r in reports {
            match engine.on_report(AgentStatus::Processed, &r) {
                Next::Order(_) => {}
                _ => break,
            }
        }
    }
}
