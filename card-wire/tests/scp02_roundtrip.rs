//! Host ↔ card round trips through the SCP02 core for random commands at every SCP02 level
//! and `i`; tampered bytes are detected; malformed input never panics.

use card_wire::apdu::{Command, Response};
use card_wire::channel::ChannelFault;
use card_wire::scp02::handshake::{CardHandshake02, CardKeyContext02};
use card_wire::scp02::putkey::{parse_put_key_data, put_key_data};
use card_wire::scp02::{
    Des3Key, HostHandshake02, HostOptions02, IParam02, InitUpdateResponse02, Scp02Error,
    Scp02Session, StaticKeys02,
};
use card_wire::scp03::SecurityLevel;
use card_wire::sw::StatusWord;
use proptest::prelude::*;

const AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

fn keys(seed: u8) -> StaticKeys02 {
    let k = |n: u8| Des3Key::new(&(0..16u8).map(|i| i ^ n ^ seed).collect::<Vec<_>>()).unwrap();
    StaticKeys02::new(0x20, k(0x40), k(0x50), k(0x60))
}

const LEVELS: [SecurityLevel; 5] = [
    SecurityLevel::NONE,
    SecurityLevel::CMAC,
    SecurityLevel::CMAC_CDEC,
    SecurityLevel::CMAC_RMAC,
    SecurityLevel::CMAC_CDEC_RMAC,
];

/// `i` values with R-MAC support where the level needs it.
fn i_for(level: SecurityLevel, base: u8) -> IParam02 {
    IParam02(if level.r_mac() { base | 0x20 } else { base })
}

fn open(level: SecurityLevel, i: IParam02, seq: u16) -> (Scp02Session, Scp02Session) {
    let ks = keys(1);
    let opts = HostOptions02 {
        level,
        i,
        kvn: 0x20,
        ..HostOptions02::default()
    };
    let host = HostHandshake02::random(ks.clone(), opts).unwrap();
    let iu = Command::parse(&host.initialize_update().unwrap().to_bytes()).unwrap();
    let ctx = CardKeyContext02 {
        keys: &ks,
        kdd: [9; 10],
        i,
        sequence_counter: seq,
        sd_aid: &AID,
    };
    let (resp, card) = CardHandshake02::initialize_update(&iu, &ctx, || [7; 6]).unwrap();
    let (ea, host_s, info) = host.complete(&resp, Some(&AID)).unwrap();
    assert_eq!(info.challenge_verified, i.pseudo_random());
    let ea = Command::parse(&ea.to_bytes()).unwrap();
    let card_s = card.external_authenticate(&ea).unwrap();
    (host_s, card_s)
}

fn arb_cmd() -> impl Strategy<Value = Command> {
    (
        prop_oneof![Just(0x80u8), Just(0x00)],
        any::<u8>().prop_filter("valid INS", |i| i >> 4 != 6 && i >> 4 != 9),
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..=239),
        prop::option::of(1usize..=256),
    )
        .prop_map(|(cla, ins, p1, p2, data, ne)| {
            Command::new(cla, ins, p1, p2)
                .with_data(data)
                .unwrap()
                .with_ne(ne)
                .unwrap()
        })
}

fn arb_sw() -> impl Strategy<Value = StatusWord> {
    prop_oneof![
        Just(StatusWord::SUCCESS),
        Just(StatusWord(0x6310)),
        Just(StatusWord(0x6A88)),
    ]
}

#[test]
fn every_level_and_i_opens() {
    for level in LEVELS {
        for base in [0x05, 0x15, 0x45, 0x55] {
            let (mut h, mut c) = open(level, i_for(level, base), 0x1234);
            let cmd = Command::new(0x80, 0xCA, 0x00, 0x66).with_le(256).unwrap();
            let w = h.wrap_command(&cmd).unwrap();
            assert_eq!(c.unwrap_command(&w).unwrap(), cmd, "{level} i {base:02X}");
        }
    }
}

#[test]
fn wrong_keys_are_caught_before_external_authenticate() {
    let card_keys = keys(1);
    let host = HostHandshake02::random(keys(2), HostOptions02::default()).unwrap();
    let iu = host.initialize_update().unwrap();
    let ctx = CardKeyContext02 {
        keys: &card_keys,
        kdd: [0; 10],
        i: IParam02::I15,
        sequence_counter: 3,
        sd_aid: &AID,
    };
    let (resp, _) = CardHandshake02::initialize_update(&iu, &ctx, || [1; 6]).unwrap();
    let opts = HostOptions02 {
        i: IParam02::I15,
        ..HostOptions02::default()
    };
    let host = HostHandshake02::random(keys(2), opts).unwrap();
    assert_eq!(
        host.complete(&resp, Some(&AID)).unwrap_err(),
        Scp02Error::Channel(ChannelFault::CardCryptogramMismatch)
    );
    // With i = 55 the pseudo-random challenge already betrays the wrong keys.
    let ctx = CardKeyContext02 {
        i: IParam02::I55,
        ..ctx
    };
    let (resp, _) = CardHandshake02::initialize_update(&iu, &ctx, || unreachable!()).unwrap();
    let host = HostHandshake02::random(keys(2), HostOptions02::default()).unwrap();
    assert_eq!(
        host.complete(&resp, Some(&AID)).unwrap_err(),
        Scp02Error::Channel(ChannelFault::CardChallengeMismatch)
    );
}

#[test]
fn card_refuses_r_mac_without_i_bit_and_r_enc() {
    let ks = keys(1);
    for (level, i) in [
        (SecurityLevel::CMAC_RMAC, IParam02::I55),
        (SecurityLevel::FULL, IParam02(0x75)),
    ] {
        let host = HostHandshake02::random(ks.clone(), HostOptions02::default()).unwrap();
        let iu = host.initialize_update().unwrap();
        let ctx = CardKeyContext02 {
            keys: &ks,
            kdd: [0; 10],
            i,
            sequence_counter: 1,
            sd_aid: &AID,
        };
        let (resp, card) = CardHandshake02::initialize_update(&iu, &ctx, || [0; 6]).unwrap();
        let (ea, _, _) = host.complete(&resp, Some(&AID)).unwrap();
        let forged = Command::new(0x84, 0x82, level.byte(), 0)
            .with_data(ea.data().to_vec())
            .unwrap();
        assert_eq!(
            card.external_authenticate(&forged).unwrap_err(),
            StatusWord::INCORRECT_P1P2
        );
    }
    let opts = HostOptions02 {
        level: SecurityLevel::FULL,
        ..HostOptions02::default()
    };
    assert!(matches!(
        HostHandshake02::random(keys(1), opts),
        Err(Scp02Error::LevelNotSupported { .. })
    ));
    let opts = HostOptions02 {
        i: IParam02(0x1D),
        ..HostOptions02::default()
    };
    assert_eq!(
        HostHandshake02::random(keys(1), opts).err(),
        Some(Scp02Error::UnsupportedI(0x1D))
    );
}

#[test]
fn failure_closes_the_session_for_good() {
    let (mut h, mut c) = open(SecurityLevel::CMAC, IParam02::I55, 1);
    let cmd = Command::new(0x80, 0xF2, 0x80, 0x02)
        .with_data(vec![0x4F, 0])
        .unwrap();
    let mut w = h.wrap_command(&cmd).unwrap().to_bytes();
    w[6] ^= 1;
    let w = Command::parse(&w).unwrap();
    assert_eq!(
        c.unwrap_command(&w),
        Err(Scp02Error::Channel(ChannelFault::CommandMacMismatch))
    );
    // Even the genuine next command is refused now.
    let w2 = h.wrap_command(&cmd).unwrap();
    assert_eq!(
        c.unwrap_command(&w2),
        Err(Scp02Error::Channel(ChannelFault::SessionClosed))
    );
}

#[test]
fn put_key_round_trip_and_kcv_check() {
    let (h, _) = open(SecurityLevel::CMAC, IParam02::I55, 9);
    let new = keys(0x33);
    let data = put_key_data(h.dek(), &new);
    assert_eq!(parse_put_key_data(h.dek(), &data).unwrap(), new);
    let mut bad = data.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(
        parse_put_key_data(h.dek(), &bad),
        Err(Scp02Error::KcvMismatch)
    );
    // Another session's DEK cannot decrypt it.
    let (other, _) = open(SecurityLevel::CMAC, IParam02::I55, 10);
    assert_eq!(
        parse_put_key_data(other.dek(), &data),
        Err(Scp02Error::KcvMismatch)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn round_trips(level in prop::sample::select(LEVELS.to_vec()),
                   base in prop::sample::select(vec![0x05u8, 0x15, 0x45, 0x55]),
                   seq in any::<u16>(),
                   cmds in prop::collection::vec((arb_cmd(), prop::collection::vec(any::<u8>(), 0..200), arb_sw()), 1..5)) {
        let (mut h, mut c) = open(level, i_for(level, base), seq);
        for (cmd, data, sw) in cmds {
            let w = h.wrap_command(&cmd).unwrap();
            let w = Command::parse(&w.to_bytes()).unwrap();
            prop_assert_eq!(c.unwrap_command(&w).unwrap(), cmd);
            let resp = Response::new(data, sw);
            let wr = c.wrap_response(&resp).unwrap();
            prop_assert_eq!(h.unwrap_response(&wr).unwrap(), resp);
        }
    }

    #[test]
    fn tampering_is_detected(level in prop::sample::select(LEVELS[1..].to_vec()),
                             cmd in arb_cmd(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (mut h, mut c) = open(level, i_for(level, 0x55), 7);
        let mut bytes = h.wrap_command(&cmd).unwrap().to_bytes();
        // Flip a bit of the header (except CLA's SM/channel bits) or the body, not Le.
        let body_end = 5 + bytes[4] as usize;
        let idx = pos.index(body_end);
        if idx == 0 || idx == 4 { return Ok(()); }
        bytes[idx] ^= 1 << bit;
        if let Ok(t) = Command::parse(&bytes) {
            prop_assert!(c.unwrap_command(&t).is_err());
        }
        if level.r_mac() {
            let (mut h, mut c) = open(level, i_for(level, 0x55), 8);
            let w = h.wrap_command(&cmd).unwrap();
            c.unwrap_command(&w).unwrap();
            let mut r = c.wrap_response(&Response::success(vec![1, 2, 3])).unwrap();
            let i = pos.index(r.data.len());
            r.data[i] ^= 1 << bit;
            prop_assert!(h.unwrap_response(&r).is_err());
        }
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300),
                            level in prop::sample::select(LEVELS.to_vec())) {
        let _ = InitUpdateResponse02::parse(&bytes);
        let (mut h, mut c) = open(level, i_for(level, 0x15), 2);
        if let Ok(cmd) = Command::parse(&bytes) {
            let _ = c.unwrap_command(&cmd);
            let _ = h.wrap_command(&cmd);
        }
        if let Ok(r) = Response::parse(&bytes) {
            let _ = h.unwrap_response(&r);
        }
        let _ = parse_put_key_data(h.dek(), &bytes);
        let host = HostHandshake02::random(keys(1), HostOptions02::default()).unwrap();
        if let Ok(r) = Response::parse(&bytes) {
            let _ = host.complete(&r, Some(&AID));
        }
        if let Ok(cmd) = Command::parse(&bytes) {
            let ks = keys(1);
            let ctx = CardKeyContext02 { keys: &ks, kdd: [0; 10], i: IParam02::I55, sequence_counter: 1, sd_aid: &AID };
            if let Ok((_, card)) = CardHandshake02::initialize_update(&cmd, &ctx, || [0; 6]) {
                let _ = card.external_authenticate(&cmd);
            }
        }
    }
}
