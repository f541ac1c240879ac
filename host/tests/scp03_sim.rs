//! The host's SCP03 channel against the in-process simulator: every level in S8 and S16 with
//! every key size, traces without key material, wrong keys stopped before EXTERNAL
//! AUTHENTICATE, and sessions on a logical channel.

use applet_sim::{SimCard, SimConfig};
use card_wire::apdu::Command;
use card_wire::channel::ChannelFault;
use card_wire::scp03::crypto::AesKey;
use card_wire::scp03::{
    Diversification, HostOptions, Mode, Scp03Error, SecurityLevel, SessionKeys, StaticKeys,
};
use card_wire::sw::StatusWord;
use kagi::Error;
use kagi::channel::{ApduChannel, CardChannel};
use kagi::gp::{self, StatusScope};
use kagi::secure::SecureChannel;
use kagi::trace::MemoryTrace;

fn keyset(len: usize) -> StaticKeys {
    let k = |b: u8| {
        AesKey::new(
            &(0..len as u8)
                .map(|i| b.wrapping_add(i))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    };
    StaticKeys::new(0x31, k(0x11), k(0x51), k(0x91)).unwrap()
}

fn card(keys: StaticKeys, s16: bool) -> CardChannel<SimCard> {
    let mut cfg = SimConfig::default().with_keys(vec![keys]).seeded(42);
    if s16 {
        cfg = cfg.s16();
    }
    CardChannel::new(SimCard::powered(cfg))
}

#[test]
fn every_level_mode_and_key_size_against_the_simulator() {
    for len in [16, 24, 32] {
        for mode in [Mode::S8, Mode::S16] {
            for level in SecurityLevel::ALL {
                let keys = keyset(len);
                let trace = MemoryTrace::default();
                let mut ch =
                    card(keys.clone(), mode == Mode::S16).with_trace(Box::new(trace.clone()));
                let sd = gp::select_domain(&mut ch, None).unwrap();
                let opts = HostOptions {
                    level,
                    mode,
                    ..HostOptions::default()
                };
                let mut sc = SecureChannel::open(&mut ch, keys.clone(), opts, Some(&sd.aid))
                    .unwrap_or_else(|e| panic!("AES-{} {mode:?} level {level}: {e}", len * 8));
                assert!(sc.info().challenge_verified);
                let isd = gp::get_status(&mut sc, StatusScope::IssuerDomain).unwrap();
                assert_eq!(isd[0].aid, sd.aid);
                let apps = gp::get_status(&mut sc, StatusScope::Applications).unwrap();
                assert_eq!(apps.len(), 1);
                assert_eq!(
                    gp::get_status(&mut sc, StatusScope::LoadFiles)
                        .unwrap()
                        .len(),
                    2
                );
                // No key bytes in the trace: static keys, nor session keys.
                let text = trace.lines().join("\n");
                let iu = &sc.info().init_update;
                let mut ctx = Vec::new();
                // The host challenge is in the trace's INITIALIZE UPDATE line.
                let iu_line = trace
                    .lines()
                    .into_iter()
                    .find(|l| l.starts_with(">> 8050"))
                    .unwrap();
                let hc = hex::decode(iu_line.split(' ').nth(3).unwrap()).unwrap();
                ctx.extend_from_slice(&hc);
                ctx.extend_from_slice(&iu.card_challenge);
                let sk = SessionKeys::derive(&keys, &ctx);
                for secret in [
                    keys.enc(),
                    keys.mac(),
                    keys.dek(),
                    &sk.s_enc,
                    &sk.s_mac,
                    &sk.s_rmac,
                ] {
                    let h = hex::encode_upper(secret.as_bytes());
                    assert!(!text.contains(&h), "key bytes in trace");
                    assert!(!text.contains(&h[..16]), "key prefix in trace");
                }
                // The trace is not empty: the whole session is in it, once, so the checks
                // above looked at real lines.
                let lines = trace.lines();
                let count = |p: &str| lines.iter().filter(|l| l.starts_with(p)).count();
                assert_eq!(
                    count(">> 8050"),
                    1,
                    "INITIALIZE UPDATE traced once:\n{text}"
                );
                assert_eq!(
                    count(">> 8482"),
                    1,
                    "EXTERNAL AUTHENTICATE traced once:\n{text}"
                );
                assert_eq!(count("[scp03] >> 80F2"), 3, "three GET STATUS:\n{text}");
                // GET STATUS on the wire: CLA 84 with C-MAC (every level but 00), data
                // encrypted (padded to a block, then the MAC) exactly when C-DECRYPTION is on.
                let wire: Vec<&String> = lines
                    .iter()
                    .filter(|l| l.starts_with(">> 84F2") || l.starts_with(">> 80F2"))
                    .collect();
                assert_eq!(wire.len(), 3, "{text}");
                let mac_len = if mode == Mode::S16 { 16 } else { 8 };
                for l in wire {
                    let fields: Vec<&str> = l.split(' ').collect();
                    let (header, lc, data) = (fields[1], fields[2], fields[3]);
                    assert_eq!(&header[..2], if level.c_mac() { "84" } else { "80" }, "{l}");
                    let plain_len = 2 + if level.c_mac() { mac_len } else { 0 };
                    if level.c_dec() {
                        assert_eq!(lc, format!("{:02X}", 16 + mac_len), "{l}");
                        assert!(!data.starts_with("4F00"), "plain data on the wire: {l}");
                    } else {
                        assert_eq!(lc, format!("{plain_len:02X}"), "{l}");
                        assert!(data.starts_with("4F00"), "{l}");
                    }
                }
            }
        }
    }
}

#[test]
fn wrong_keys_never_reach_external_authenticate() {
    let trace = MemoryTrace::default();
    let mut ch = card(keyset(16), false).with_trace(Box::new(trace.clone()));
    let sd = gp::select_domain(&mut ch, None).unwrap();
    let wrong = StaticKeys::default_test_keys(0x31);
    for sd_aid in [Some(sd.aid.as_slice()), None] {
        let err = SecureChannel::open(&mut ch, wrong.clone(), HostOptions::default(), sd_aid)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                Error::Scp03(
                    Scp03Error::Channel(ChannelFault::CardChallengeMismatch)
                        | Scp03Error::Channel(ChannelFault::CardCryptogramMismatch)
                )
            ),
            "{err}"
        );
    }
    // Both attempts are in the trace (so the check below reads real lines), and neither went
    // on to EXTERNAL AUTHENTICATE.
    let lines = trace.lines();
    assert_eq!(
        lines.iter().filter(|l| l.starts_with(">> 8050")).count(),
        2,
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains(">> 8482")), "{lines:?}");
    // The right keys still work afterwards: nothing was locked.
    SecureChannel::open(&mut ch, keyset(16), HostOptions::default(), Some(&sd.aid)).unwrap();
}

#[test]
fn kvn_mismatch_and_unknown_kvn() {
    let mut ch = card(keyset(16), false);
    gp::select_domain(&mut ch, None).unwrap();
    let opts = HostOptions {
        kvn: 0x20,
        ..HostOptions::default()
    };
    let err = SecureChannel::open(&mut ch, keyset(16), opts, None)
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::Scp03(Scp03Error::InitializeUpdateRefused(StatusWord(0x6A88)))
        ),
        "{err}"
    );
}

#[test]
fn s16_card_tells_an_s8_host() {
    let mut ch = card(keyset(16), true);
    gp::select_domain(&mut ch, None).unwrap();
    let err = SecureChannel::open(&mut ch, keyset(16), HostOptions::default(), None)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Scp03(Scp03Error::ModeMismatch { .. })),
        "{err}"
    );
}

#[test]
fn kdf3_diversified_card() {
    let master = StaticKeys::default_test_keys(0x30);
    let kdd = SimConfig::default().isd.kdd;
    let per_card = master.diversify(Diversification::Kdf3, &kdd);
    let mut ch = card(per_card, false);
    let sd = gp::select_domain(&mut ch, None).unwrap();
    let opts = HostOptions {
        diversification: Diversification::Kdf3,
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    };
    let mut sc = SecureChannel::open(&mut ch, master, opts, Some(&sd.aid)).unwrap();
    assert_eq!(
        gp::get_status(&mut sc, StatusScope::IssuerDomain)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn management_needs_authentication_and_unsecured_commands_end_the_session() {
    let mut ch = card(keyset(16), false);
    let sd = gp::select_domain(&mut ch, None).unwrap();
    let err = gp::get_status(&mut ch, StatusScope::IssuerDomain).unwrap_err();
    assert_eq!(
        err.status(),
        Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
    );
    {
        let mut sc =
            SecureChannel::open(&mut ch, keyset(16), HostOptions::default(), Some(&sd.aid))
                .unwrap();
        gp::get_status(&mut sc, StatusScope::IssuerDomain).unwrap();
    }
    // A plain command in an authenticated session is refused and ends the session.
    let r = ch
        .transmit(
            &Command::new(0x80, 0xF2, 0x80, 0x02)
                .with_data(vec![0x4F, 0])
                .unwrap(),
        )
        .unwrap();
    assert_eq!(r.sw, StatusWord::SECURITY_STATUS_NOT_SATISFIED);
}

#[test]
fn session_on_a_logical_channel() {
    let trace = MemoryTrace::default();
    let mut ch = card(keyset(32), false).with_trace(Box::new(trace.clone()));
    gp::select_domain(&mut ch, None).unwrap();
    // MANAGE CHANNEL OPEN from channel 0 gives channel 1 with the default applet (the ISD).
    let r = ch
        .transmit(&Command::new(0x00, 0x70, 0x00, 0x00).with_le(1).unwrap())
        .unwrap();
    assert_eq!((r.sw, r.data.clone()), (StatusWord::SUCCESS, vec![1]));
    let opts = HostOptions {
        channel: 1,
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    };
    let aid = SimConfig::default().isd.aid;
    let mut sc = SecureChannel::open(&mut ch, keyset(32), opts, Some(aid.as_bytes())).unwrap();
    let status = Command::new(0x81, 0xF2, 0x80, 0x02)
        .with_data(vec![0x4F, 0])
        .unwrap()
        .with_le(256)
        .unwrap();
    let r = sc.transmit(&status).unwrap();
    assert_eq!(r.sw, StatusWord::SUCCESS);
    assert!(r.data.starts_with(&[0xE3]));
    // The whole session went over channel 1 (CLA 81, then 85 with secure messaging).
    let lines = trace.lines();
    for prefix in [">> 8150", ">> 8582", ">> 85F2"] {
        assert_eq!(
            lines.iter().filter(|l| l.starts_with(prefix)).count(),
            1,
            "{prefix}: {lines:?}"
        );
    }
    assert!(!lines.iter().any(|l| l.starts_with(">> 8050")), "{lines:?}");
}
