//! The host's secure channel against the simulator's `gp-scp02` preset (SCP02 i=55, 3DES test
//! keys): the protocol is chosen from the card's answer, the pseudo-random challenge is checked
//! when the recognition data gives `i`, every SCP02 level runs, PUT KEY of a 3DES key set and
//! re-authentication with it, EMV/VISA2-diversified cards, and the refusals.

use applet_sim::card::SCP02_KVN;
use applet_sim::{SimCard, SimConfig};
use card_wire::channel::ChannelFault;
use card_wire::scp02::{IParam02, Scp02Error, StaticKeys02};
use card_wire::scp03::crypto::AesKey;
use card_wire::scp03::{Diversification, HostOptions, Scp03Error, SecurityLevel, StaticKeys};
use kagi::Error;
use kagi::channel::CardChannel;
use kagi::gp::{self, StatusScope};
use kagi::secure::{ScpChoice, ScpOptions, SecureChannel};

fn card(cfg: SimConfig) -> CardChannel<SimCard> {
    CardChannel::new(SimCard::powered(cfg.seeded(7)))
}

fn scp02_card() -> CardChannel<SimCard> {
    card(SimConfig::preset("gp-scp02").unwrap())
}

fn test_keys() -> StaticKeys {
    StaticKeys::default_test_keys(SCP02_KVN)
}

fn opts(level: SecurityLevel) -> HostOptions {
    HostOptions {
        level,
        ..HostOptions::default()
    }
}

#[test]
fn scp02_is_chosen_from_the_answer_and_lists_the_registry() {
    let mut ch = scp02_card();
    let sd = gp::select_domain(&mut ch, None).unwrap();
    assert_eq!(sd.recognition.as_ref().unwrap().scp, Some((0x02, 0x55)));
    // Plain `open` (no recognition data given): the card's answer picks SCP02.
    let mut sc = SecureChannel::open(
        &mut ch,
        test_keys(),
        opts(SecurityLevel::CMAC),
        Some(&sd.aid),
    )
    .unwrap();
    assert_eq!(sc.scp(), 0x02);
    assert_eq!(sc.info().init_update.kvn, SCP02_KVN);
    assert!(
        !sc.info().challenge_verified,
        "i unknown: nothing to verify"
    );
    let apps = gp::get_status(&mut sc, StatusScope::Applications).unwrap();
    assert_eq!(apps.len(), 1);
    let files = gp::get_status(&mut sc, StatusScope::LoadFiles).unwrap();
    assert_eq!(files.len(), 2);
}

#[test]
fn every_scp02_level_with_the_recognised_i() {
    for level in [
        SecurityLevel::NONE,
        SecurityLevel::CMAC,
        SecurityLevel::CMAC_CDEC,
    ] {
        let mut ch = scp02_card();
        let sd = gp::select_domain(&mut ch, None).unwrap();
        let scp =
            ScpOptions::from_recognition(ScpChoice::Auto, sd.recognition.as_ref().unwrap().scp);
        assert_eq!(scp.scp02_i, Some(IParam02::I55));
        let mut sc = SecureChannel::open_scp(&mut ch, test_keys(), opts(level), Some(&sd.aid), scp)
            .unwrap_or_else(|e| panic!("level {level}: {e}"));
        assert!(sc.info().challenge_verified);
        assert_eq!(
            sc.scp02_info().unwrap().init_update.sequence_counter,
            [0, 1]
        );
        let isd = gp::get_status(&mut sc, StatusScope::IssuerDomain).unwrap();
        assert_eq!(isd[0].aid, sd.aid);
    }
}

#[test]
fn put_key_of_a_3des_set_then_reauthenticate() {
    let mut ch = scp02_card();
    let sd = gp::select_domain(&mut ch, None).unwrap();
    let k = |b: u8| AesKey::new(&[b; 16]).unwrap();
    let new = StaticKeys::new(0x21, k(0x11), k(0x22), k(0x33)).unwrap();
    {
        let mut sc = SecureChannel::open(
            &mut ch,
            test_keys(),
            opts(SecurityLevel::CMAC_CDEC),
            Some(&sd.aid),
        )
        .unwrap();
        // The SCP03 DEK path refuses: SCP02 encrypts under the session DEK.
        assert!(sc.dek().is_err());
        let kcvs = sc.put_key_set(&new, None).unwrap();
        // Answer = KVN ‖ 3DES KCVs (first 3 bytes of 3DES-ECB of 8 zero bytes, per key).
        let new02 = StaticKeys02::from_scp03(&new).unwrap();
        let mut want = vec![0x21];
        for key in [new02.enc(), new02.mac(), new02.dek()] {
            want.extend_from_slice(&key.kcv());
        }
        assert_eq!(kcvs, want);
    }
    let with_kvn = |kvn| HostOptions {
        kvn,
        ..opts(SecurityLevel::CMAC)
    };
    let mut sc = SecureChannel::open(&mut ch, new.clone(), with_kvn(0x21), Some(&sd.aid)).unwrap();
    assert_eq!(sc.info().init_update.kvn, 0x21);
    gp::get_status(&mut sc, StatusScope::Applications).unwrap();
    drop(sc);
    // The old keys do not open key set 21: stopped before EXTERNAL AUTHENTICATE.
    let err = SecureChannel::open(&mut ch, test_keys(), with_kvn(0x21), Some(&sd.aid))
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::Scp02(Scp02Error::Channel(ChannelFault::CardCryptogramMismatch))
        ),
        "{err}"
    );
}

#[test]
fn diversified_cards_open_with_the_master_and_the_scheme() {
    for scheme in [Diversification::Emv, Diversification::Visa2] {
        let base = SimConfig::preset("gp-scp02").unwrap();
        let kdd = base.isd.kdd;
        let master = StaticKeys02::default_test_keys(SCP02_KVN);
        let per_card = master.diversify(scheme, &kdd).unwrap();
        let aes = |k: &card_wire::scp02::Des3Key| AesKey::new(k.as_bytes()).unwrap();
        let card_keys = StaticKeys::new(
            SCP02_KVN,
            aes(per_card.enc()),
            aes(per_card.mac()),
            aes(per_card.dek()),
        )
        .unwrap();
        let mut ch = card(base.with_keys(vec![card_keys]));
        let sd = gp::select_domain(&mut ch, None).unwrap();
        let o = HostOptions {
            diversification: scheme,
            ..opts(SecurityLevel::CMAC)
        };
        let mut sc = SecureChannel::open(&mut ch, test_keys(), o, Some(&sd.aid)).unwrap();
        gp::get_status(&mut sc, StatusScope::Applications).unwrap();
        drop(sc);
        // Undiversified, the master keys are refused before EXTERNAL AUTHENTICATE.
        let err = SecureChannel::open(&mut ch, test_keys(), opts(SecurityLevel::CMAC), None)
            .err()
            .unwrap();
        assert!(
            matches!(
                err,
                Error::Scp02(Scp02Error::Channel(ChannelFault::CardCryptogramMismatch))
            ),
            "{err}"
        );
    }
}

#[test]
fn forced_protocols_and_impossible_levels_are_refused() {
    let mut ch = scp02_card();
    let sd = gp::select_domain(&mut ch, None).unwrap();
    let force = |choice| ScpOptions {
        choice,
        scp02_i: None,
    };
    let err = SecureChannel::open_scp(
        &mut ch,
        test_keys(),
        opts(SecurityLevel::CMAC),
        Some(&sd.aid),
        force(ScpChoice::Scp03),
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, Error::Scp03(Scp03Error::NotScp03(0x02))),
        "{err}"
    );
    // SCP02 has no R-ENC: level 33 is refused before EXTERNAL AUTHENTICATE.
    let err = SecureChannel::open(&mut ch, test_keys(), opts(SecurityLevel::FULL), None)
        .err()
        .unwrap();
    assert!(
        matches!(err, Error::Scp02(Scp02Error::LevelNotSupported { .. })),
        "{err}"
    );
    // An SCP03 card when SCP02 is demanded.
    let mut ch = card(SimConfig::default());
    let sd = gp::select_domain(&mut ch, None).unwrap();
    let err = SecureChannel::open_scp(
        &mut ch,
        StaticKeys::default_test_keys(0x30),
        opts(SecurityLevel::CMAC),
        Some(&sd.aid),
        force(ScpChoice::Scp02),
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, Error::Scp02(Scp02Error::NotScp02(0x03))),
        "{err}"
    );
    // AES-256 keys cannot be SCP02 keys.
    let mut ch = scp02_card();
    let big = StaticKeys::single(SCP02_KVN, AesKey::new(&[1; 32]).unwrap());
    let err = SecureChannel::open(&mut ch, big, opts(SecurityLevel::CMAC), None)
        .err()
        .unwrap();
    assert!(err.to_string().contains("16 bytes"), "{err}");
}

#[test]
fn probe_names_the_matching_scheme_without_external_authenticate() {
    use kagi::trace::MemoryTrace;
    let base = SimConfig::preset("gp-scp02").unwrap();
    let kdd = base.isd.kdd;
    let per_card = StaticKeys02::default_test_keys(SCP02_KVN)
        .diversify(Diversification::Visa2, &kdd)
        .unwrap();
    let aes = |k: &card_wire::scp02::Des3Key| AesKey::new(k.as_bytes()).unwrap();
    let card_keys = StaticKeys::new(
        SCP02_KVN,
        aes(per_card.enc()),
        aes(per_card.mac()),
        aes(per_card.dek()),
    )
    .unwrap();
    let trace = MemoryTrace::default();
    let mut ch = card(base.with_keys(vec![card_keys])).with_trace(Box::new(trace.clone()));
    gp::select_domain(&mut ch, None).unwrap();
    let p = kagi::probe::probe_keys(&mut ch, &test_keys(), 0, None, false).unwrap();
    assert_eq!(p.scp, 0x02);
    assert_eq!(p.matched, Some(Diversification::Visa2));
    assert_eq!(
        p.tried,
        [
            Diversification::None,
            Diversification::Emv,
            Diversification::Visa2
        ]
    );
    // SCP03 card with kdf3-diversified keys.
    let master = StaticKeys::default_test_keys(0x30);
    let cfg = SimConfig::default();
    let kdd03 = cfg.isd.kdd;
    let mut ch2 = card(cfg.with_keys(vec![master.diversify(Diversification::Kdf3, &kdd03)]));
    gp::select_domain(&mut ch2, None).unwrap();
    let p = kagi::probe::probe_keys(&mut ch2, &master, 0, None, false).unwrap();
    assert_eq!((p.scp, p.matched), (0x03, Some(Diversification::Kdf3)));
    // Wrong keys: nothing matches, and still no EXTERNAL AUTHENTICATE was sent.
    let wrong = StaticKeys::single(SCP02_KVN, AesKey::new(&[9; 16]).unwrap());
    let p = kagi::probe::probe_keys(&mut ch, &wrong, 0, None, false).unwrap();
    assert_eq!(p.matched, None);
    let lines = trace.lines();
    assert!(!lines.iter().any(|l| l.starts_with(">> 8482")), "{lines:?}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with(">> 8050")).count(),
        2,
        "{lines:?}"
    );
}
