//! Host ↔ card round trips through the SCP03 core for random commands at every level, in S8
//! and S16, with every key size; any tampered byte of a wrapped command or response is
//! detected; malformed input never panics.

use card_wire::apdu::{Class, Command, LengthForm, Response};
use card_wire::channel::ChannelFault;
use card_wire::scp03::handshake::{CardHandshake, CardKeyContext, HostHandshake, HostOptions};
use card_wire::scp03::{AesKey, IParam, Mode, SecureSession, SecurityLevel, StaticKeys};
use card_wire::sw::StatusWord;
use proptest::prelude::*;

const AID: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

fn keys(len: usize, seed: u8) -> StaticKeys {
    let k = |n: u8| AesKey::new(&(0..len as u8).map(|i| i ^ n ^ seed).collect::<Vec<_>>()).unwrap();
    StaticKeys::new(0x30, k(0x40), k(0x50), k(0x60)).unwrap()
}

/// Opens a session on both ends through the real handshake.
fn open(
    level: SecurityLevel,
    mode: Mode,
    key_len: usize,
    channel: u8,
) -> (SecureSession, SecureSession) {
    let ks = keys(key_len, 1);
    let i = IParam(0x70 | u8::from(mode == Mode::S16));
    let opts = HostOptions {
        level,
        mode,
        channel,
        ..HostOptions::default()
    };
    let host = HostHandshake::random(ks.clone(), opts).unwrap();
    let iu = host.initialize_update().unwrap();
    let iu = Command::parse(&iu.to_bytes()).unwrap();
    let ctx = CardKeyContext {
        keys: &ks,
        kdd: [9; 10],
        i,
        sequence_counter: 5,
        sd_aid: Some(&AID),
    };
    let (resp, card_hs) = CardHandshake::initialize_update(&iu, &ctx, |_| unreachable!()).unwrap();
    let (ea, host_session, info) = host.complete(&resp, Some(&AID)).unwrap();
    assert!(info.challenge_verified);
    assert_eq!(ea.class().channel(), Some(channel));
    let ea = Command::parse(&ea.to_bytes()).unwrap();
    let card_session = card_hs.external_authenticate(&ea).unwrap();
    (host_session, card_session)
}

fn arb_level() -> impl Strategy<Value = SecurityLevel> {
    prop::sample::select(SecurityLevel::ALL.to_vec())
}

fn arb_mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::S8), Just(Mode::S16)]
}

fn arb_cmd() -> impl Strategy<Value = Command> {
    (
        prop_oneof![Just(0x80u8), Just(0x00)],
        any::<u8>().prop_filter("valid INS", |i| i >> 4 != 6 && i >> 4 != 9),
        any::<u8>(),
        any::<u8>(),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::option::of(1usize..=300),
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
        Just(StatusWord(0x6283)),
        Just(StatusWord::SECURITY_STATUS_NOT_SATISFIED),
        Just(StatusWord::NOT_FOUND),
    ]
}

#[test]
fn every_level_mode_and_key_size_opens() {
    for len in [16, 24, 32] {
        for mode in [Mode::S8, Mode::S16] {
            for level in SecurityLevel::ALL {
                let (mut h, mut c) = open(level, mode, len, 0);
                let cmd = Command::new(0x80, 0xCA, 0x00, 0x66).with_le(256).unwrap();
                let w = h.wrap_command(&cmd).unwrap();
                assert_eq!(
                    c.unwrap_command(&Command::parse(&w.to_bytes()).unwrap())
                        .unwrap(),
                    cmd
                );
                let r = c.wrap_response(&Response::success(vec![1, 2, 3])).unwrap();
                assert_eq!(h.unwrap_response(&r).unwrap().data, vec![1, 2, 3]);
            }
        }
    }
}

#[test]
fn wrong_keys_are_caught_before_external_authenticate() {
    let card_keys = keys(16, 1);
    let host_keys = keys(16, 2);
    let host = HostHandshake::random(host_keys, HostOptions::default()).unwrap();
    let iu = host.initialize_update().unwrap();
    let ctx = CardKeyContext {
        keys: &card_keys,
        kdd: [0; 10],
        i: IParam(0x70),
        sequence_counter: 1,
        sd_aid: Some(&AID),
    };
    let (resp, _) = CardHandshake::initialize_update(&iu, &ctx, |_| unreachable!()).unwrap();
    // With the AID the pseudo-random challenge already betrays the wrong keys; without it
    // the card cryptogram does.
    let err = host.complete(&resp, Some(&AID)).err().unwrap();
    assert_eq!(
        err,
        card_wire::scp03::Scp03Error::Channel(ChannelFault::CardChallengeMismatch)
    );
    let host = HostHandshake::random(keys(16, 2), HostOptions::default()).unwrap();
    let iu = host.initialize_update().unwrap();
    let (resp, _) = CardHandshake::initialize_update(&iu, &ctx, |_| unreachable!()).unwrap();
    let err = host.complete(&resp, None).err().unwrap();
    assert_eq!(
        err,
        card_wire::scp03::Scp03Error::Channel(ChannelFault::CardCryptogramMismatch)
    );
    assert!(err.to_string().contains("Do NOT retry"));
}

#[test]
fn card_rejects_levels_its_i_does_not_allow_and_wrong_lengths() {
    let ks = keys(16, 1);
    let ctx = CardKeyContext {
        keys: &ks,
        kdd: [0; 10],
        i: IParam(0x10),
        sequence_counter: 1,
        sd_aid: Some(&AID),
    };
    let opts = HostOptions {
        level: SecurityLevel::CMAC_RMAC,
        ..HostOptions::default()
    };
    let host = HostHandshake::random(ks.clone(), opts).unwrap();
    let (resp, _) = CardHandshake::initialize_update(
        &host.initialize_update().unwrap(),
        &ctx,
        |_| unreachable!(),
    )
    .unwrap();
    // The host sees that the card's i has no R-MAC before sending anything.
    assert!(matches!(
        host.complete(&resp, Some(&AID)),
        Err(card_wire::scp03::Scp03Error::LevelNotSupported { .. })
    ));
    // A 16-byte challenge to an S8 card is a wrong length.
    let s16 = HostHandshake::random(
        ks.clone(),
        HostOptions {
            mode: Mode::S16,
            ..HostOptions::default()
        },
    )
    .unwrap();
    let e = CardHandshake::initialize_update(
        &s16.initialize_update().unwrap(),
        &ctx,
        |_| unreachable!(),
    )
    .err();
    assert_eq!(e, Some(StatusWord::WRONG_LENGTH));
}

#[test]
fn error_status_carries_no_rmac_and_session_survives() {
    let (mut h, mut c) = open(SecurityLevel::FULL, Mode::S8, 16, 0);
    let cmd = Command::new(0x80, 0xF2, 0x40, 0x02)
        .with_data(vec![0x4F, 0])
        .unwrap();
    let w = h.wrap_command(&cmd).unwrap();
    c.unwrap_command(&w).unwrap();
    let r = c
        .wrap_response(&Response::status(StatusWord(0x6A88)))
        .unwrap();
    assert!(r.data.is_empty());
    assert_eq!(h.unwrap_response(&r).unwrap().sw, StatusWord(0x6A88));
    // The next exchange still works (R-MAC did not move the chaining value).
    let w = h.wrap_command(&cmd).unwrap();
    c.unwrap_command(&w).unwrap();
    let r = c.wrap_response(&Response::success(vec![0xE3, 0])).unwrap();
    assert_eq!(h.unwrap_response(&r).unwrap().data, vec![0xE3, 0]);
}

#[test]
fn failure_closes_the_session_for_good() {
    let (mut h, mut c) = open(SecurityLevel::CMAC, Mode::S8, 16, 0);
    let cmd = Command::new(0x80, 0xCA, 0, 0x66).with_le(256).unwrap();
    let mut w = h.wrap_command(&cmd).unwrap();
    let mut data = w.take_data();
    data[0] ^= 1;
    assert!(c.unwrap_command(&w.with_data(data).unwrap()).is_err());
    assert!(c.is_closed());
    let w = h.wrap_command(&cmd).unwrap();
    assert_eq!(
        c.unwrap_command(&w),
        Err(card_wire::scp03::Scp03Error::Channel(
            ChannelFault::SessionClosed
        ))
    );
    // A plain command where C-MAC is required is refused.
    let (_, mut c2) = open(SecurityLevel::CMAC, Mode::S8, 16, 0);
    assert_eq!(
        c2.unwrap_command(&cmd),
        Err(card_wire::scp03::Scp03Error::Channel(
            ChannelFault::MissingSecureMessaging
        ))
    );
}

#[test]
fn extended_length_wrapping_macs_the_extended_lc() {
    let (mut h, mut c) = open(SecurityLevel::FULL, Mode::S16, 32, 0);
    let cmd = Command::new(0x80, 0xE8, 0x00, 0x00)
        .with_data(vec![7; 1000])
        .unwrap();
    let w = h.wrap_command(&cmd).unwrap();
    assert!(w.is_extended());
    let parsed = Command::parse(&w.to_bytes()).unwrap();
    assert_eq!(c.unwrap_command(&parsed).unwrap().data(), cmd.data());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn round_trips(level in arb_level(), mode in arb_mode(), key_len in prop::sample::select(vec![16usize, 24, 32]),
                   channel in 0u8..20, cmds in prop::collection::vec((arb_cmd(), prop::collection::vec(any::<u8>(), 0..300), arb_sw()), 1..6)) {
        let (mut h, mut c) = open(level, mode, key_len, channel);
        for (cmd, rdata, sw) in cmds {
            let cmd = cmd.clone().with_class(Class(cmd.class().byte()).with_channel(channel).unwrap());
            let w = h.wrap_command(&cmd).unwrap();
            prop_assert_eq!(w.class().channel(), Some(channel));
            let received = Command::parse(&w.to_bytes()).unwrap();
            let plain = c.unwrap_command(&received).unwrap();
            prop_assert_eq!(plain.data(), cmd.data());
            prop_assert_eq!(plain.header(), cmd.header());
            prop_assert_eq!(plain.ne(), cmd.ne());
            let resp = Response::new(if sw.is_normal_or_warning() { rdata.clone() } else { vec![] }, sw);
            let wr = c.wrap_response(&resp).unwrap();
            let back = h.unwrap_response(&Response::parse(&wr.to_bytes()).unwrap()).unwrap();
            prop_assert_eq!(back, resp);
        }
    }

    #[test]
    fn tampering_is_detected(level in prop::sample::select(vec![SecurityLevel::CMAC, SecurityLevel::CMAC_CDEC, SecurityLevel::CMAC_RMAC, SecurityLevel::FULL]),
                             mode in arb_mode(), cmd in arb_cmd(), rdata in prop::collection::vec(any::<u8>(), 0..64),
                             pos in any::<prop::sample::Index>(), bit in 0u8..8, tamper_response in any::<bool>()) {
        let (mut h, mut c) = open(level, mode, 16, 0);
        let w = h.wrap_command(&cmd).unwrap();
        let mut bytes = w.to_bytes();
        if !tamper_response || !level.r_mac() {
            // Any byte of the command except Le (which GP leaves unprotected).
            let protected = bytes.len() - usize::from(w.ne().is_some()) * if w.is_extended() { 2 } else { 1 };
            let i = pos.index(protected);
            bytes[i] ^= 1 << bit;
            // Detected means refused: the bytes no longer parse as a command, or the card
            // refuses to unwrap them. Unwrapping to anything at all (same or other content)
            // is a miss.
            // The logical channel bits are the one part of the header the MAC leaves out (it
            // is computed with them zeroed, SCP03 v1.1.1 §6.2.4): a card routes such a command
            // to the other channel, whose own security status knows nothing of this session,
            // so it never reaches this session. Model that routing, then require refusal.
            let parsed = Command::parse(&bytes);
            if let Ok(t) = &parsed && t.class().channel() != w.class().channel() {
                return Ok(());
            }
            let out = parsed.map(|t| c.unwrap_command(&t));
            prop_assert!(!matches!(out, Ok(Ok(_))), "tampered command accepted: {:?}", out);
            if let Ok(unwrapped) = out {
                prop_assert!(c.is_closed(), "a refused command must close the session: {:?}", unwrapped);
            }
        } else {
            c.unwrap_command(&Command::parse(&bytes).unwrap()).unwrap();
            let r = c.wrap_response(&Response::success(rdata)).unwrap();
            let mut rb = r.to_bytes();
            let i = pos.index(rb.len());
            rb[i] ^= 1 << bit;
            let parsed = Response::parse(&rb).unwrap();
            let out = h.unwrap_response(&parsed);
            // Either rejected, or (only when the SW was turned into an error) reported as that error.
            prop_assert!(out.is_err() || !parsed.sw.is_normal_or_warning());
        }
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400), level in arb_level(), mode in arb_mode()) {
        let (mut h, mut c) = open(level, mode, 16, 0);
        if let Ok(cmd) = Command::parse(&bytes) {
            let _ = c.unwrap_command(&cmd);
        }
        if let Ok(r) = Response::parse(&bytes) {
            let _ = h.unwrap_response(&r);
        }
        let _ = card_wire::scp03::InitUpdateResponse::parse(&bytes);
        let _ = Command::parse(&bytes).map(|c| c.with_form(LengthForm::Auto));
    }
}
