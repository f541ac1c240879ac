//! The runtime's Java Card semantics, as byte transcripts: SELECT routing, logical channels,
//! chaining, GET RESPONSE, power; and random APDUs (plain and inside a secure channel) never
//! panic the card.

use applet_sim::echo::ECHO_AID;
use applet_sim::{SimCard, SimConfig};
use card_wire::Transport;
use card_wire::apdu::Command;
use card_wire::scp03::handshake::{HostHandshake, HostOptions};
use card_wire::scp03::{SecurityLevel, StaticKeys};
use proptest::prelude::*;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).unwrap()
}

fn tx(card: &mut SimCard, apdu: &str) -> String {
    hex::encode_upper(card.transmit(&h(apdu)).unwrap())
}

fn card() -> SimCard {
    SimCard::powered(SimConfig::default().seeded(3))
}

#[test]
fn select_routing() {
    let mut c = card();
    // Partial AID selects the echo applet; the echo applet answers.
    assert_eq!(tx(&mut c, "00A4040004 F04B4147"), "9000");
    assert_eq!(tx(&mut c, "8010000002 AABB 00"), "AABB9000");
    // Unknown AID: 6A82 and the echo applet stays selected.
    assert_eq!(tx(&mut c, "00A4040005 D392F00026"), "6A82");
    assert_eq!(tx(&mut c, "8010000001 CC 00"), "CC9000");
    // Empty AID selects the default applet (the ISD) again.
    assert!(tx(&mut c, "00A4040000").starts_with("6F"));
    // Next occurrence of a partial AID that matches one applet: 6A82.
    assert_eq!(tx(&mut c, "00A4040205 F04B414749"), "9000");
    assert_eq!(tx(&mut c, "00A4040205 F04B414749"), "6A82");
}

#[test]
fn logical_channels_interleave_two_applets() {
    let mut c = card();
    // Open channel 1 (gets the default applet, the ISD) and select the echo applet there.
    assert_eq!(tx(&mut c, "0070000001"), "019000");
    assert_eq!(tx(&mut c, "01A4040006 F04B41474901"), "9000");
    // Channel 0 keeps the ISD; channel 1 the echo applet; commands interleave.
    assert!(tx(&mut c, "80CA006600").starts_with("66"));
    assert_eq!(tx(&mut c, "8110000001 11 00"), "119000");
    assert!(tx(&mut c, "80CA00CF00").starts_with("CF0A"));
    assert_eq!(tx(&mut c, "8110000001 22 00"), "229000");
    // Channel 19 (further interindustry CLA) by SELECT on a closed channel, then closed.
    assert_eq!(
        tx(&mut c, "4FA4040006 F04B41474901"),
        "6985",
        "echo is not multi-selectable"
    );
    let isd = tx(&mut c, "4FA4040008 A000000151000000 00");
    assert!(isd.ends_with("9000"), "{isd}");
    assert!(tx(&mut c, "CFCA006600").starts_with("66"));
    assert_eq!(tx(&mut c, "00708013"), "9000");
    assert_eq!(tx(&mut c, "CFCA006600"), "6881");
    // Closing channel 1 frees the echo applet for channel 0.
    assert_eq!(tx(&mut c, "00708001"), "9000");
    assert_eq!(tx(&mut c, "8110000001 11 00"), "6881");
    assert_eq!(tx(&mut c, "00A4040006 F04B41474901"), "9000");
    // Channel 0 cannot be closed.
    assert_eq!(tx(&mut c, "00708000"), "6A86");
}

#[test]
fn chaining_and_get_response() {
    let mut c = card();
    tx(&mut c, "00A4040006 F04B41474901");
    // A chained echo: two parts, delivered as one command.
    assert_eq!(tx(&mut c, "9010000002 0102"), "9000");
    assert_eq!(tx(&mut c, "8010000002 0304 00"), "010203049000");
    // A chain interrupted by another INS is refused.
    assert_eq!(tx(&mut c, "9010000001 01"), "9000");
    assert_eq!(tx(&mut c, "80CA006600"), "6883");
    // 300 bytes with Le=00: 256 bytes, 612C, then the rest with GET RESPONSE.
    let r = c.transmit(&h("8012012C00")).unwrap();
    assert_eq!((r.len(), &r[256..]), (258, &[0x61, 0x2C][..]));
    let r = c.transmit(&h("00C000002C")).unwrap();
    assert_eq!((r.len(), &r[44..]), (46, &[0x90, 0x00][..]));
    assert_eq!(r[0], 0x00); // byte 256 of the pattern
    // No pending data: GET RESPONSE is refused.
    assert_eq!(tx(&mut c, "00C0000010"), "6985");
    // Case 3 command with response data: 61xx (no Le).
    assert_eq!(tx(&mut c, "8010000002 AABB"), "6102");
    assert_eq!(tx(&mut c, "00C0000002"), "AABB9000");
}

#[test]
fn malformed_apdus_get_status_words() {
    let mut c = card();
    assert_eq!(tx(&mut c, "FFA40400"), "6E00");
    assert_eq!(tx(&mut c, "00600000"), "6D00");
    assert_eq!(tx(&mut c, "00A40400 05 01"), "6700");
    assert_eq!(tx(&mut c, "20A40400"), "6E00");
    assert_eq!(tx(&mut c, "00A4040100"), "6A86");
}

#[test]
fn power_clears_channels_and_sessions() {
    let mut c = card();
    assert_eq!(tx(&mut c, "0070000001"), "019000");
    c.power_off();
    assert!(c.transmit(&h("00A4040000")).is_err());
    c.power_on();
    assert_eq!(tx(&mut c, "81CA006600"), "6881");
    // After reset the ISD is selected on channel 0 by default.
    assert!(tx(&mut c, "80CA006600").starts_with("66"));
}

fn open_session(c: &mut SimCard, level: SecurityLevel) -> card_wire::scp03::SecureSession {
    let opts = HostOptions {
        level,
        ..HostOptions::default()
    };
    let hs = HostHandshake::random(StaticKeys::default_test_keys(0x30), opts).unwrap();
    let iu = c
        .transmit(&hs.initialize_update().unwrap().to_bytes())
        .unwrap();
    let resp = card_wire::Response::parse(&iu).unwrap();
    let (ea, session, _) = hs
        .complete(&resp, Some(SimConfig::default().isd.aid.as_bytes()))
        .unwrap();
    assert_eq!(c.transmit(&ea.to_bytes()).unwrap(), vec![0x90, 0x00]);
    session
}

#[test]
fn failed_authentications_lock_the_keys() {
    let mut c = card();
    for _ in 0..10 {
        let hs = HostHandshake::random(StaticKeys::default_test_keys(0x30), HostOptions::default())
            .unwrap();
        c.transmit(&hs.initialize_update().unwrap().to_bytes())
            .unwrap();
        // A made-up EXTERNAL AUTHENTICATE: the MAC does not verify.
        assert_eq!(
            tx(&mut c, "8482010010 00000000000000000000000000000000"),
            "6982"
        );
    }
    assert_eq!(
        tx(
            &mut c,
            "805000000811223344556677880 0".replace(' ', "").as_str()
        ),
        "6983"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random APDUs, with and without an open secure channel, get a response and never panic.
    #[test]
    fn random_apdus_never_panic(apdus in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..20),
                                secure in any::<bool>(), headers in prop::collection::vec((0u8..=0xFF, any::<u8>(), any::<u8>(), any::<u8>()), 1..20)) {
        let mut c = card();
        if secure {
            let _ = open_session(&mut c, SecurityLevel::FULL);
        }
        for (raw, (cla, ins, p1, p2)) in apdus.iter().zip(headers.iter()) {
            let r = c.transmit(raw).unwrap();
            prop_assert!(r.len() >= 2);
            // Well-formed commands with arbitrary headers too.
            if let Ok(cmd) = Command::new(*cla, *ins, *p1, *p2).with_data(raw.clone()) {
                let r = c.transmit(&cmd.to_bytes()).unwrap();
                prop_assert!(r.len() >= 2);
            }
        }
        // The card still works afterwards.
        let r = c.transmit(&h("00A4040006F04B41474901")).unwrap();
        prop_assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
    }
}

#[test]
fn echo_aid_constant_matches() {
    assert_eq!(hex::encode_upper(ECHO_AID), "F04B41474901");
}

#[test]
fn tearing_during_authentication_never_gives_a_free_try() {
    // Cut power at each write of a failing EXTERNAL AUTHENTICATE: afterwards the failure
    // counter has counted the attempt, or the card never checked it.
    for n in 1..=3 {
        let mut c = card();
        let hs = HostHandshake::random(StaticKeys::default_test_keys(0x30), HostOptions::default())
            .unwrap();
        c.transmit(&hs.initialize_update().unwrap().to_bytes())
            .unwrap();
        let before = c
            .store()
            .get("sd/A000000151000000/fail")
            .map(|v| v.to_vec());
        c.tear_at(n);
        let r = c.transmit(&h("8482010010 00000000000000000000000000000000"));
        c.power_on();
        let after = c
            .store()
            .get("sd/A000000151000000/fail")
            .map(|v| v.to_vec());
        match r {
            // The check answered: the failure is counted.
            Ok(sw) => assert_eq!((sw, after), (vec![0x69, 0x82], Some(vec![0, 0, 0, 1]))),
            // Power was lost: either nothing was checked (no count change) or the count rose.
            Err(_) => assert!(
                after == before || after == Some(vec![0, 0, 0, 1]),
                "n={n}: {after:?}"
            ),
        }
    }
}

mod jpki_fuzz {
    use super::*;
    use applet_sim::jpki::JPKI_AID;

    /// A card with the JPKI class installed (not personalised: no keys, PINs or certificates).
    fn jpki_card() -> SimCard {
        use applet_sim::registry::{self, LoadFile, RegistryEntry};
        let cfg = SimConfig::default().seeded(11);
        let mut store = cfg.manufacture().unwrap();
        let aid = applet_sim::Aid::new(&JPKI_AID).unwrap();
        let pkg = applet_sim::Aid::new(&JPKI_AID[..7]).unwrap();
        registry::put_load_file(
            &mut store,
            &LoadFile {
                aid: pkg.clone(),
                sd: cfg.isd.aid.clone(),
                modules: vec![(aid.clone(), "jpki.ap".into())],
            },
        )
        .unwrap();
        registry::put_entry(
            &mut store,
            &RegistryEntry {
                aid,
                class: "jpki.ap".into(),
                life_cycle: 7,
                privileges: [0; 3],
                sd: Some(cfg.isd.aid.clone()),
                elf: Some(pkg),
                params: vec![],
            },
        )
        .unwrap();
        let mut c = SimCard::from_store(store, Some(1), true);
        c.power_on();
        c
    }

    #[test]
    fn unpersonalised_and_wrong_channel() {
        let mut c = jpki_card();
        assert_eq!(tx(&mut c, "00A4040C0A D392F000260100000001"), "9000");
        assert_eq!(tx(&mut c, "00A4020C02 0018"), "6A82"); // no PIN yet
        assert_eq!(tx(&mut c, "802A00970A 00000000000000000000 00"), "6982");
        // Channel 1 is not open: 6881, and channel 0's state is untouched.
        assert_eq!(tx(&mut c, "01B0000004"), "6881");
        assert_eq!(tx(&mut c, "00B0000004"), "6986");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn random_commands_to_the_jpki_ap_never_panic(cmds in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>(), prop::collection::vec(any::<u8>(), 0..40)), 1..30)) {
            let mut c = jpki_card();
            tx(&mut c, "00A4040C0A D392F000260100000001");
            for (cla, ins, p1, p2, data) in cmds {
                let cla = if cla == 0xFF { 0x00 } else { cla & 0x8F };
                if let Ok(cmd) = Command::new(cla, ins, p1, p2).with_data(data) {
                    let r = c.transmit(&cmd.to_bytes()).unwrap();
                    prop_assert!(r.len() >= 2);
                }
            }
        }
    }
}
