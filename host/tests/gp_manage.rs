//! GlobalPlatform card management against the simulator through the host library: load,
//! install, personalise, delete, PUT KEY, supplementary security domains, life cycles, card
//! images, and tearing at every persistent write of an install + personalisation sequence.

use applet_sim::card::{SSD_MODULE, SSD_PACKAGE};
use applet_sim::echo::{ECHO_AID, INS_READ_RECORD};
use applet_sim::{SimCard, SimConfig};
use card_wire::apdu::Command;
use card_wire::scp03::crypto::AesKey;
use card_wire::scp03::{HostOptions, SecurityLevel, StaticKeys};
use card_wire::sw::StatusWord;
use card_wire::transport::{ResetKind, Transport, TransportError};
use kagi::channel::{ApduChannel, CardChannel};
use kagi::gp::manage::{self, InstallSpec};
use kagi::gp::{self, StatusScope};
use kagi::secure::SecureChannel;

const ISD: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];
const PKG: [u8; 6] = [0xF0, 0x01, 0x02, 0x03, 0x04, 0x05];
const MODULE: [u8; 7] = [0xF0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x01];
const APP: [u8; 7] = [0xF0, 0x01, 0x02, 0x03, 0x04, 0x05, 0xA1];

fn test_keys() -> StaticKeys {
    StaticKeys::default_test_keys(0x30)
}

fn full() -> HostOptions {
    HostOptions {
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    }
}

fn open<'c, T: Transport>(
    ch: &'c mut CardChannel<T>,
    keys: StaticKeys,
    sd: &[u8],
) -> kagi::Result<SecureChannel<'c, T>> {
    gp::select(ch, sd)?;
    SecureChannel::open(ch, keys, full(), Some(sd))
}

/// A load file with `n` modules of the echo class (long enough for several LOAD blocks).
fn echo_load_file(n: u8) -> Vec<u8> {
    let modules: Vec<(Vec<u8>, String)> = (0..n)
        .map(|i| {
            let mut m = MODULE.to_vec();
            m[6] = 1 + i;
            (m, "kagi.echo".to_string())
        })
        .collect();
    manage::sim_load_file(&PKG, &modules)
}

fn spec() -> InstallSpec {
    InstallSpec {
        package: PKG.to_vec(),
        module: MODULE.to_vec(),
        instance: APP.to_vec(),
        selectable: true,
        ..InstallSpec::default()
    }
}

fn read_record<T: Transport>(ch: &mut CardChannel<T>, n: u8) -> kagi::Result<card_wire::Response> {
    gp::select(ch, &APP)?;
    ch.transmit(&Command::new(0x80, INS_READ_RECORD, 0, n).with_le(256)?)
}

#[test]
fn load_install_personalise_delete() {
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(1)));
    {
        let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
        manage::load(&mut sc, &PKG, None, &echo_load_file(12), true).unwrap();
        manage::install(&mut sc, &spec()).unwrap();
        let blocks = vec![b"first".to_vec(), b"second".to_vec()];
        manage::personalize(&mut sc, &APP, &blocks, false).unwrap();
        let apps = gp::get_status(&mut sc, StatusScope::Applications).unwrap();
        assert!(
            apps.iter()
                .any(|e| e.aid == APP && e.life_cycle_name() == "SELECTABLE")
        );
        let pkgs = gp::get_status(&mut sc, StatusScope::LoadFilesAndModules).unwrap();
        assert!(pkgs.iter().any(|e| e.aid == PKG));
        // The same package twice, and an instance AID in use, are refused.
        let e = manage::load(&mut sc, &PKG, None, &echo_load_file(1), true).unwrap_err();
        assert_eq!(e.status(), Some(StatusWord::CONDITIONS_NOT_SATISFIED));
        assert_eq!(
            manage::install(&mut sc, &spec()).unwrap_err().status(),
            Some(StatusWord::CONDITIONS_NOT_SATISFIED)
        );
        // A package with instances cannot go alone.
        assert_eq!(
            manage::delete(&mut sc, &PKG, false).unwrap_err().status(),
            Some(StatusWord::CONDITIONS_NOT_SATISFIED)
        );
    }
    assert_eq!(read_record(&mut ch, 0).unwrap().data, b"first");
    assert_eq!(read_record(&mut ch, 1).unwrap().data, b"second");
    assert_eq!(
        read_record(&mut ch, 2).unwrap().sw,
        StatusWord::RECORD_NOT_FOUND
    );
    {
        let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
        manage::delete(&mut sc, &PKG, true).unwrap();
        assert!(
            !gp::get_status(&mut sc, StatusScope::Applications)
                .unwrap()
                .iter()
                .any(|e| e.aid == APP)
        );
        assert_eq!(
            manage::delete(&mut sc, &PKG, true).unwrap_err().status(),
            Some(StatusWord::REFERENCED_DATA_NOT_FOUND)
        );
        // The ISD cannot be deleted.
        assert_eq!(
            manage::delete(&mut sc, &ISD, false).unwrap_err().status(),
            Some(StatusWord::CONDITIONS_NOT_SATISFIED)
        );
    }
    // The deleted applet's data is gone with it.
    assert!(ch.transport().store().keys("app/F0010203040").is_empty());
    assert_eq!(
        gp::select(&mut ch, &APP).unwrap_err().status(),
        Some(StatusWord::NOT_FOUND)
    );
}

#[test]
fn load_file_failures_are_exact() {
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(1)));
    let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
    // Unknown class.
    let unknown = manage::sim_load_file(&PKG, &[(MODULE.to_vec(), "javacard.Foo".into())]);
    assert_eq!(
        manage::load(&mut sc, &PKG, None, &unknown, true)
            .unwrap_err()
            .status(),
        Some(StatusWord::INCORRECT_DATA)
    );
    // Tampered: the hash announced is not the hash of what is loaded.
    let good = echo_load_file(1);
    let hash = manage::load_file_hash(&echo_load_file(2)).unwrap();
    let mut data = vec![PKG.len() as u8];
    data.extend_from_slice(&PKG);
    data.extend_from_slice(&[0, 32]);
    data.extend_from_slice(&hash);
    data.extend_from_slice(&[0, 0]);
    sc.transmit(
        &Command::new(0x80, 0xE6, 0x02, 0)
            .with_data(data)
            .unwrap()
            .with_le(256)
            .unwrap(),
    )
    .unwrap();
    let r = sc
        .transmit(
            &Command::new(0x80, 0xE8, 0x80, 0)
                .with_data(good.clone())
                .unwrap()
                .with_le(256)
                .unwrap(),
        )
        .unwrap();
    assert_eq!(r.sw, StatusWord::INCORRECT_DATA);
    // LOAD without INSTALL [for load], and out-of-order blocks.
    let r = sc
        .transmit(&Command::new(0x80, 0xE8, 0x80, 0).with_data(good).unwrap())
        .unwrap();
    assert_eq!(r.sw, StatusWord::CONDITIONS_NOT_SATISFIED);
    // Installing from an unknown package or module.
    let mut s = spec();
    s.package = vec![0xF0, 9, 9, 9, 9];
    assert_eq!(
        manage::install(&mut sc, &s).unwrap_err().status(),
        Some(StatusWord::REFERENCED_DATA_NOT_FOUND)
    );
    // Nothing of the failed loads remains.
    assert!(
        !gp::get_status(&mut sc, StatusScope::LoadFiles)
            .unwrap()
            .iter()
            .any(|e| e.aid == PKG)
    );
}

#[test]
fn memory_budget_gives_6a84() {
    // Room for the manufacturing data plus about 300 bytes.
    let base = SimConfig::default().manufacture().unwrap().used();
    let cfg = SimConfig {
        memory: base + 300,
        ..SimConfig::default().seeded(1)
    };
    let mut ch = CardChannel::new(SimCard::powered(cfg));
    let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
    let e = manage::load(&mut sc, &PKG, None, &echo_load_file(60), true).unwrap_err();
    assert_eq!(e.status(), Some(StatusWord::NOT_ENOUGH_MEMORY));
    manage::load(&mut sc, &PKG, None, &echo_load_file(1), true).unwrap();
}

#[test]
fn put_key_adds_and_replaces_key_sets() {
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(1)));
    let k = |b: u8, len: usize| AesKey::new(&vec![b; len]).unwrap();
    let new31 = StaticKeys::new(0x31, k(1, 32), k(2, 32), k(3, 32)).unwrap();
    {
        let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
        let dek = sc.dek().unwrap().clone();
        let kcvs = manage::put_key(&mut sc, &dek, &new31, None).unwrap();
        assert_eq!(kcvs[0], 0x31);
        // Adding an existing version, or replacing a missing one, is refused.
        assert_eq!(
            manage::put_key(&mut sc, &dek, &new31, None)
                .unwrap_err()
                .status(),
            Some(StatusWord::INCORRECT_DATA)
        );
        assert_eq!(
            manage::put_key(&mut sc, &dek, &new31, Some(0x77))
                .unwrap_err()
                .status(),
            Some(StatusWord::REFERENCED_DATA_NOT_FOUND)
        );
    }
    // The new AES-256 key set opens a session (asked for by KVN).
    gp::select(&mut ch, &ISD).unwrap();
    let opts = HostOptions {
        kvn: 0x31,
        ..full()
    };
    let mut sc = SecureChannel::open(&mut ch, new31.clone(), opts, Some(&ISD)).unwrap();
    // Replace the test keys (KVN 30) with AES-192 keys under KVN 32, through the KVN 31 session.
    let new32 = StaticKeys::new(0x32, k(4, 24), k(5, 24), k(6, 24)).unwrap();
    let dek = sc.dek().unwrap().clone();
    manage::put_key(&mut sc, &dek, &new32, Some(0x30)).unwrap();
    let info = gp::get_data(&mut sc, 0x00E0).unwrap().unwrap();
    let versions: Vec<u8> = gp::parse_key_info(&info)
        .unwrap()
        .iter()
        .map(|k| k.version)
        .collect();
    assert_eq!(versions, [0x31, 0x31, 0x31, 0x32, 0x32, 0x32]);
    drop(sc);
    // The old test keys no longer exist; the new ones work.
    gp::select(&mut ch, &ISD).unwrap();
    let err = SecureChannel::open(
        &mut ch,
        test_keys(),
        HostOptions {
            kvn: 0x30,
            ..full()
        },
        Some(&ISD),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("6A88"), "{err}");
    SecureChannel::open(
        &mut ch,
        new32,
        HostOptions {
            kvn: 0x32,
            ..full()
        },
        Some(&ISD),
    )
    .unwrap();
}

#[test]
fn supplementary_security_domain_owns_its_applets() {
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(1)));
    let ssd: [u8; 9] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x50, 0x01];
    {
        let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
        let spec = InstallSpec {
            package: SSD_PACKAGE.to_vec(),
            module: SSD_MODULE.to_vec(),
            instance: ssd.to_vec(),
            privileges: vec![0x80, 0x40, 0x00], // Security Domain + Authorized Management
            selectable: true,
            ..InstallSpec::default()
        };
        manage::install(&mut sc, &spec).unwrap();
    }
    // The provider takes the SSD over: its initial keys are replaced by its own.
    let provider = StaticKeys::single(0x30, AesKey::new(&[0x5A; 16]).unwrap());
    {
        let mut sc = open(&mut ch, test_keys(), &ssd).unwrap();
        let dek = sc.dek().unwrap().clone();
        manage::put_key(&mut sc, &dek, &provider, Some(0x30)).unwrap();
    }
    // The issuer's keys no longer open the SSD.
    let err = open(&mut ch, test_keys(), &ssd).err().unwrap();
    assert!(
        err.to_string().contains("challenge") || err.to_string().contains("cryptogram"),
        "{err}"
    );
    {
        // The provider loads and installs into its SSD with its own keys.
        let mut sc = open(&mut ch, provider.clone(), &ssd).unwrap();
        manage::load(&mut sc, &PKG, None, &echo_load_file(1), true).unwrap();
        manage::install(&mut sc, &spec()).unwrap();
        manage::personalize(&mut sc, &APP, &[b"member-42".to_vec()], false).unwrap();
        let mine = gp::get_status(&mut sc, StatusScope::Applications).unwrap();
        assert_eq!(
            mine.iter().map(|e| e.aid.clone()).collect::<Vec<_>>(),
            vec![APP.to_vec()]
        );
        // The SSD cannot touch the issuer's content.
        assert_eq!(
            manage::delete(&mut sc, &ECHO_AID, false)
                .unwrap_err()
                .status(),
            Some(StatusWord::REFERENCED_DATA_NOT_FOUND)
        );
    }
    assert_eq!(read_record(&mut ch, 0).unwrap().data, b"member-42");
    // The ISD sees everything; the SSD cannot be deleted while it has content.
    let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
    let all = gp::get_status(&mut sc, StatusScope::Applications).unwrap();
    assert!(all.iter().any(|e| e.aid == ssd) && all.iter().any(|e| e.aid == APP));
    assert_eq!(
        manage::delete(&mut sc, &ssd, false).unwrap_err().status(),
        Some(StatusWord::CONDITIONS_NOT_SATISFIED)
    );
}

#[test]
fn life_cycles_and_locking() {
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(1)));
    {
        let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
        manage::set_app_status(&mut sc, &ECHO_AID, 0x80).unwrap();
    }
    assert_eq!(
        gp::select(&mut ch, &ECHO_AID).unwrap_err().status(),
        Some(StatusWord::NOT_FOUND)
    );
    {
        let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
        manage::set_app_status(&mut sc, &ECHO_AID, 0x00).unwrap();
        // Card life cycle: SECURED -> CARD_LOCKED; back to SECURED; going backwards is refused.
        manage::set_card_status(&mut sc, 0x7F).unwrap();
    }
    assert_eq!(
        gp::select(&mut ch, &ECHO_AID).unwrap_err().status(),
        Some(StatusWord::NOT_FOUND)
    );
    {
        let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
        assert_eq!(
            gp::get_status(&mut sc, StatusScope::IssuerDomain).unwrap()[0].life_cycle_name(),
            "CARD_LOCKED"
        );
        manage::set_card_status(&mut sc, 0x0F).unwrap();
        assert_eq!(
            manage::set_card_status(&mut sc, 0x07).unwrap_err().status(),
            Some(StatusWord::CONDITIONS_NOT_SATISFIED)
        );
        manage::set_card_status(&mut sc, 0xFF).unwrap();
    }
    // TERMINATED: only GET DATA answers.
    gp::select(&mut ch, &ISD).unwrap();
    assert!(gp::get_data(&mut ch, 0x0066).unwrap().is_some());
    assert_eq!(
        gp::select(&mut ch, &ECHO_AID).unwrap_err().status(),
        Some(StatusWord::NOT_FOUND)
    );
    let err = SecureChannel::open(&mut ch, test_keys(), full(), Some(&ISD));
    assert!(err.is_ok(), "authentication still answers in TERMINATED");
    let mut sc = err.unwrap();
    assert_eq!(
        gp::get_status(&mut sc, StatusScope::Applications)
            .unwrap_err()
            .status(),
        Some(StatusWord::CONDITIONS_NOT_SATISFIED)
    );
}

#[test]
fn card_image_round_trip_is_lossless() {
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(1)));
    {
        let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
        manage::load(&mut sc, &PKG, None, &echo_load_file(3), true).unwrap();
        manage::install(&mut sc, &spec()).unwrap();
        manage::personalize(&mut sc, &APP, &[b"kept".to_vec()], false).unwrap();
    }
    let dir = std::env::temp_dir().join(format!("kagi-img-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("card.img");
    ch.transport().save_image(&path).unwrap();
    let restored = SimCard::from_image(&path, Some(2)).unwrap();
    assert!(restored.store().same_content(ch.transport().store()));
    let mut ch2 = CardChannel::new(restored);
    ch2.reset(ResetKind::Cold).unwrap();
    assert_eq!(read_record(&mut ch2, 0).unwrap().data, b"kept");
    let mut sc = open(&mut ch2, test_keys(), &ISD).unwrap();
    assert!(
        gp::get_status(&mut sc, StatusScope::Applications)
            .unwrap()
            .iter()
            .any(|e| e.aid == APP)
    );
    // A corrupt image is refused with a clear error.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[30] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();
    let err = SimCard::from_image(&path, None).err().unwrap();
    assert!(err.to_string().contains("corrupt"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

use applet_sim::tearing::{RecordingCard, old_or_new};

/// Install + personalisation: load (several blocks), install, three STORE DATA, PUT KEY.
fn install_and_personalise<T: Transport>(ch: &mut CardChannel<T>) -> kagi::Result<()> {
    let mut sc = open(ch, test_keys(), &ISD)?;
    manage::load(&mut sc, &PKG, None, &echo_load_file(30), true)?;
    manage::install(&mut sc, &spec())?;
    let blocks = vec![
        b"holder: test".to_vec(),
        vec![0xAB; 150],
        b"points: 100".to_vec(),
    ];
    manage::personalize(&mut sc, &APP, &blocks, false)?;
    let dek = sc.dek()?.clone();
    let k = StaticKeys::single(0x31, AesKey::new(&[0x77; 16]).unwrap());
    manage::put_key(&mut sc, &dek, &k, None)?;
    Ok(())
}

#[test]
fn tearing_at_every_persistent_write_leaves_old_or_new_state() {
    let config = SimConfig::default().seeded(9);
    // The reference run: the store after every command, and how many writes it takes.
    let mut reference = CardChannel::new(RecordingCard::new(SimCard::powered(config.clone())));
    let writes_before = reference.transport().card.store().writes();
    install_and_personalise(&mut reference).unwrap();
    let total = reference.transport().card.store().writes() - writes_before;
    let snapshots = std::mem::take(&mut reference.transport_mut().snapshots);
    assert!(
        total > 15,
        "the sequence should write persistently many times ({total})"
    );

    // An EXTERNAL AUTHENTICATE cut short counts as a failed attempt (the counter is raised
    // before the check, like a PIN try counter): the one allowed difference.
    const FAIL: &str = "sd/A000000151000000/fail";
    for n in 1..=total {
        let mut card = SimCard::powered(config.clone());
        card.tear_at(n);
        let mut ch = CardChannel::new(RecordingCard::new(card));
        let err = install_and_personalise(&mut ch).expect_err("power was cut");
        assert!(
            matches!(err, kagi::Error::Transport(TransportError::Mute)),
            "n={n}: {err}"
        );
        let answered = ch.transport().answered();
        ch.reset(ResetKind::Cold).unwrap();
        let after = ch.transport().card.store().clone();
        let fails = after.get(FAIL).map(|v| v.to_vec());
        assert!(
            matches!(
                fails.as_deref(),
                None | Some([0, 0, 0, 0]) | Some([0, 0, 0, 1])
            ),
            "n={n}: {fails:?}"
        );
        assert!(
            old_or_new(&after, &snapshots, answered, &[FAIL]),
            "tear at write {n} (command {answered}) left a mixed state"
        );
        // The card still works.
        let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
        gp::get_status(&mut sc, StatusScope::Applications).unwrap();
    }
}

#[test]
fn a_domain_without_authorized_management_cannot_load_or_install() {
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(1)));
    let ssd: [u8; 9] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x50, 0x02];
    {
        let mut sc = open(&mut ch, test_keys(), &ISD).unwrap();
        let spec = InstallSpec {
            package: SSD_PACKAGE.to_vec(),
            module: SSD_MODULE.to_vec(),
            instance: ssd.to_vec(),
            privileges: vec![0x80], // Security Domain only
            selectable: true,
            ..InstallSpec::default()
        };
        manage::install(&mut sc, &spec).unwrap();
        // Card-wide privileges cannot be given away by an application install.
        let mut app = spec.clone();
        app.package = applet_sim::echo::ECHO_PACKAGE.to_vec();
        app.module = ECHO_AID.to_vec();
        app.instance = APP.to_vec();
        app.privileges = vec![0x80];
        assert_eq!(
            manage::install(&mut sc, &app).unwrap_err().status(),
            Some(StatusWord::INCORRECT_DATA)
        );
    }
    let mut sc = open(&mut ch, test_keys(), &ssd).unwrap();
    let e = manage::load(&mut sc, &PKG, None, &echo_load_file(1), true).unwrap_err();
    assert_eq!(e.status(), Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED));
    assert_eq!(
        manage::delete(&mut sc, &ECHO_AID, false)
            .unwrap_err()
            .status(),
        Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
    );
    // Card life cycle belongs to the ISD.
    assert_eq!(
        manage::set_card_status(&mut sc, 0x7F).unwrap_err().status(),
        Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
    );
}
