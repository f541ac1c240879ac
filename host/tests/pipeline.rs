//! The APDU pipeline: 61xx, 6Cxx, chaining that keeps CLA bits, extended length, against a
//! scripted transport (exact bytes) and against the simulator's echo applet.

use applet_sim::echo::{ECHO_AID, INS_ECHO, INS_PATTERN};
use applet_sim::{SimCard, SimConfig};
use card_wire::apdu::Command;
use card_wire::sw::StatusWord;
use card_wire::transport::Capabilities;
use kagi::channel::{ApduChannel, CardChannel};
use kagi::mock::ScriptedTransport;

#[test]
fn get_response_is_followed_on_the_same_channel() {
    let t = ScriptedTransport::new()
        .expect("01B0000000", "AABB 6103")
        .expect("01C0000003", "CCDDEE 9000");
    let mut ch = CardChannel::new(t);
    let r = ch
        .transmit(&Command::new(0x01, 0xB0, 0, 0).with_le(256).unwrap())
        .unwrap();
    assert_eq!(
        (r.data, r.sw),
        (vec![0xAA, 0xBB, 0xCC, 0xDD, 0xEE], StatusWord::SUCCESS)
    );
    assert!(ch.transport().finished());
}

#[test]
fn wrong_le_is_resent() {
    let t = ScriptedTransport::new()
        .expect("00CA9F7F00", "6C2D")
        .expect("00CA9F7F2D", "0102 9000");
    let mut ch = CardChannel::new(t);
    let r = ch
        .transmit(&Command::new(0x00, 0xCA, 0x9F, 0x7F).with_le(256).unwrap())
        .unwrap();
    assert_eq!(r.data, vec![1, 2]);
    assert!(ch.transport().finished());
}

#[test]
fn chaining_keeps_channel_and_secure_messaging_bits() {
    // CLA 0x85: proprietary, SM, channel 1 -> chained parts carry 0x95.
    let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let first = format!("95E80000FF{}", hex::encode_upper(&data[..255]));
    let last = format!("85E800002D{}00", hex::encode_upper(&data[255..]));
    let t = ScriptedTransport::new()
        .expect(&first, "9000")
        .expect(&last, "9000");
    let mut ch = CardChannel::new(t);
    let cmd = Command::new(0x85, 0xE8, 0, 0)
        .with_data(data)
        .unwrap()
        .with_le(256)
        .unwrap();
    assert_eq!(ch.transmit(&cmd).unwrap().sw, StatusWord::SUCCESS);
    assert!(ch.transport().finished());
}

#[test]
fn chain_stops_at_the_first_refusal() {
    let data = vec![0u8; 600];
    let t = ScriptedTransport::new().expect(&format!("10DA0000FF{}", "00".repeat(255)), "6A80");
    let mut ch = CardChannel::new(t);
    let r = ch
        .transmit(&Command::new(0x00, 0xDA, 0, 0).with_data(data).unwrap())
        .unwrap();
    assert_eq!(r.sw, StatusWord::INCORRECT_DATA);
}

#[test]
fn extended_length_when_the_transport_carries_it() {
    let data = vec![0x11u8; 300];
    let apdu = format!("00DA0000 00012C {} 0000", "11".repeat(300)).replace(' ', "");
    let t = ScriptedTransport::new().extended().expect(&apdu, "9000");
    let mut ch = CardChannel::new(t);
    let cmd = Command::new(0x00, 0xDA, 0, 0)
        .with_data(data)
        .unwrap()
        .with_le(65536)
        .unwrap();
    ch.transmit(&cmd).unwrap();
    assert!(ch.transport().finished());
}

fn echo_channel(extended: bool) -> CardChannel<SimCard> {
    let cfg = SimConfig {
        extended_length: extended,
        ..SimConfig::default()
    };
    let mut ch = CardChannel::new(SimCard::powered(cfg));
    if !extended {
        ch.limit_capabilities(Capabilities::SHORT);
    }
    kagi::gp::select(&mut ch, &ECHO_AID).unwrap();
    ch
}

#[test]
fn long_commands_and_responses_through_the_simulator() {
    for extended in [false, true] {
        let mut ch = echo_channel(extended);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let echo = Command::new(0x80, INS_ECHO, 0, 0)
            .with_data(data.clone())
            .unwrap()
            .with_le(65536)
            .unwrap();
        let r = ch.transmit(&echo).unwrap();
        assert_eq!(
            (r.sw, r.data.len()),
            (StatusWord::SUCCESS, 1000),
            "extended={extended}"
        );
        assert_eq!(r.data, data);
        let pattern = Command::new(0x80, INS_PATTERN, 0x02, 0x10)
            .with_le(256)
            .unwrap();
        let r = ch.transmit(&pattern).unwrap();
        assert_eq!(r.data.len(), 0x210);
        assert!(r.data.iter().enumerate().all(|(i, b)| *b == i as u8));
    }
}

#[test]
fn the_simulator_refuses_extended_when_configured_short() {
    let cfg = SimConfig {
        extended_length: false,
        ..SimConfig::default()
    };
    let mut card = SimCard::powered(cfg);
    use card_wire::Transport;
    let r = card
        .transmit(&hex::decode("00A4040000000100").unwrap())
        .unwrap();
    assert_eq!(r, vec![0x67, 0x00]);
}

/// A command and its GET RESPONSEs run inside one exclusive use of the card (one PC/SC
/// transaction), so no other application can slip a command in between.
#[test]
fn a_command_and_its_get_responses_share_one_transaction() {
    use card_wire::transport::{ResetKind, SendApdu, Transport, TransportError};
    struct Counting {
        inner: ScriptedTransport,
        open: bool,
        transactions: usize,
        outside: usize,
    }
    impl Transport for Counting {
        fn transmit(&mut self, c: &[u8]) -> Result<Vec<u8>, TransportError> {
            if !self.open {
                self.outside += 1;
            }
            self.inner.transmit(c)
        }
        fn reset(&mut self, k: ResetKind) -> Result<Vec<u8>, TransportError> {
            self.inner.reset(k)
        }
        fn atr(&self) -> Option<Vec<u8>> {
            self.inner.atr()
        }
        fn capabilities(&self) -> Capabilities {
            self.inner.capabilities()
        }
        fn describe(&self) -> String {
            "counting".into()
        }
        fn exclusive(
            &mut self,
            f: &mut dyn FnMut(&mut SendApdu<'_>) -> Result<(), TransportError>,
        ) -> Result<(), TransportError> {
            self.transactions += 1;
            self.open = true;
            let inner = &mut self.inner;
            let r = f(&mut |c: &[u8]| inner.transmit(c));
            self.open = false;
            r
        }
    }
    let inner = ScriptedTransport::new()
        .expect("00B0000000", "AABB 6102")
        .expect("00C0000002", "CCDD 6101")
        .expect("00C0000001", "EE 9000");
    let mut ch = CardChannel::new(Counting {
        inner,
        open: false,
        transactions: 0,
        outside: 0,
    });
    let r = ch
        .transmit(&Command::new(0, 0xB0, 0, 0).with_le(256).unwrap())
        .unwrap();
    assert_eq!(r.data.len(), 5);
    assert_eq!(
        (ch.transport().transactions, ch.transport().outside),
        (1, 0)
    );
}

#[test]
fn a_card_that_never_stops_answering_61xx_is_an_error_not_a_hang() {
    // The limit is the library's published constant; the card answers 6101 to every command.
    let mut t = ScriptedTransport::new().expect("00B0000000", "AA 6101");
    for _ in 0..kagi::channel::MAX_GET_RESPONSE {
        t = t.expect("00C0000001", "AA 6101");
    }
    let mut ch = CardChannel::new(t);
    let e = ch
        .transmit(&Command::new(0x00, 0xB0, 0, 0).with_le(256).unwrap())
        .unwrap_err();
    assert!(
        matches!(e, kagi::Error::EndlessResponse(n) if n == kagi::channel::MAX_GET_RESPONSE),
        "{e}"
    );
    assert!(ch.transport().finished());
}
