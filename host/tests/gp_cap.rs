//! CAP files into the simulator through SCP03 (and SCP02, the `gp-scp02` preset) with the host
//! library: the three real CAPs load
//! (GET STATUS lists package, version and modules), the card checks the load file hash
//! (SHA-1 and SHA-256) and links the imports against the Java Card 3.0.5 API, DELETE with
//! P2 80 removes the package, INSTALL of a CAP applet runs its install method in kagi's Java
//! Card VM (IsoApplet's completes: its crypto engines are native), and the
//! simulator's own class-naming load files keep working beside CAPs. Prints bytes, commands
//! and time per CAP load.

#![cfg(feature = "sim")]

use applet_sim::{SimCard, SimConfig};
use card_wire::gp_load;
use card_wire::scp03::{HostOptions, SecurityLevel, StaticKeys};
use card_wire::sw::StatusWord;
use card_wire::transport::Transport;
use kagi::channel::CardChannel;
use kagi::gp::manage::{self, InstallSpec};
use kagi::gp::{self, StatusScope};
use kagi::gp_cap::{self, CapFile, HashAlg, LoadOptions};
use kagi::secure::SecureChannel;
use std::path::Path;

const ISD: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];

fn cap(rel: &str) -> CapFile {
    CapFile::from_path(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../cap/tests/data")
            .join(rel),
    )
    .unwrap()
}

const EMPTY: &str = "gppro-empty/Empty_0102030405_8d5ac9e2_2.2.1.cap";
const ISO: &str = "isoapplet-v0/isoapplet.cap";
const ISO_KEYIMPORT: &str = "isoapplet-v0/isoapplet-keyimport.cap";

fn session<T: Transport>(ch: &mut CardChannel<T>) -> (SecureChannel<'_, T>, gp::SelectedDomain) {
    let domain = gp::select_domain(ch, Some(&ISD)).unwrap();
    let opts = HostOptions {
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    };
    let sc =
        SecureChannel::open(ch, StaticKeys::default_test_keys(0x30), opts, Some(&ISD)).unwrap();
    (sc, domain)
}

fn opts(block: usize, hash: HashAlg) -> LoadOptions {
    LoadOptions {
        hash,
        descriptor: true,
        sd: None,
        block,
    }
}

fn card() -> CardChannel<SimCard> {
    CardChannel::new(SimCard::powered(SimConfig::default().seeded(7)))
}

#[test]
fn three_real_caps_load_and_are_listed() {
    let mut ch = card();
    let (mut sc, domain) = session(&mut ch);
    // The simulator announces 9F65 = 1024; the in-process transport carries extended length;
    // SCP03 S8 with C-DEC takes the MAC and padding off: 1024 - 8 = 1016 → 1008 - 1.
    assert_eq!(domain.max_command_data, Some(1024));
    let overhead = sc.load_overhead();
    let block = gp_load::block_size(domain.max_command_data, true, overhead);
    assert_eq!(block, 1007);
    for (rel, hash) in [(EMPTY, HashAlg::Sha1), (ISO, HashAlg::Sha256)] {
        let c = cap(rel);
        let t = std::time::Instant::now();
        let stats = gp_cap::load(&mut sc, &c, &opts(block, hash)).unwrap();
        let n = c.load_file(true).len();
        assert_eq!(stats.load_file_bytes, n);
        assert_eq!(stats.commands, 1 + n.div_ceil(block));
        eprintln!(
            "MEASURE in-process {rel}: load file {n} bytes, {} commands, {} APDU bytes, {:?}",
            stats.commands,
            stats.apdu_bytes,
            t.elapsed()
        );
    }
    let pkgs = gp::get_status(&mut sc, StatusScope::LoadFilesAndModules).unwrap();
    let find = |aid: &str| {
        pkgs.iter()
            .find(|e| hex::encode_upper(&e.aid) == aid)
            .unwrap_or_else(|| panic!("{aid} not listed: {pkgs:?}"))
    };
    // AIDs and versions from the CAPs' README and Header bytes (see cap/tests/data/README.md).
    let iso = find("F276A288BCFBA69D34F310");
    assert_eq!(iso.life_cycle_name(), "LOADED");
    assert_eq!(iso.version.as_deref(), Some(&[1u8, 0][..]));
    assert_eq!(
        iso.modules,
        [hex::decode("F276A288BCFBA69D34F31001").unwrap()]
    );
    let empty = find("0102030405");
    assert_eq!(empty.modules, [hex::decode("0102030405060708").unwrap()]);
    // The key-import build has the same package AID: refused (6985) while the first is on
    // the card, as for simulator load files.
    let e = gp_cap::load(&mut sc, &cap(ISO_KEYIMPORT), &opts(block, HashAlg::Sha256)).unwrap_err();
    assert_eq!(e.status(), Some(StatusWord::CONDITIONS_NOT_SATISFIED));
    // DELETE P2 80 removes the package; the key-import build then loads in short blocks.
    manage::delete(
        &mut sc,
        &hex::decode("F276A288BCFBA69D34F310").unwrap(),
        true,
    )
    .unwrap();
    let short = gp_load::block_size(domain.max_command_data, false, overhead);
    assert_eq!(short, 239);
    let stats = gp_cap::load(&mut sc, &cap(ISO_KEYIMPORT), &opts(short, HashAlg::None)).unwrap();
    assert_eq!(stats.commands, 1 + stats.load_file_bytes.div_ceil(239));
    eprintln!(
        "MEASURE in-process {ISO_KEYIMPORT} short APDUs: load file {} bytes, {} commands, {} APDU bytes",
        stats.load_file_bytes, stats.commands, stats.apdu_bytes
    );
    let legacy = gp::get_status(&mut sc, StatusScope::LoadFiles).unwrap();
    assert!(
        legacy
            .iter()
            .any(|e| hex::encode_upper(&e.aid) == "F276A288BCFBA69D34F310")
    );
}

#[test]
fn the_card_checks_hash_and_imports() {
    let mut ch = card();
    let (mut sc, _) = session(&mut ch);
    let c = cap(EMPTY);
    let block = c.load_file_data_block(true);
    // A wrong SHA-256 hash: INSTALL [for load] accepted, the last LOAD refused with 6A80.
    let mut wrong = HashAlg::Sha256.digest(&block);
    wrong[0] ^= 1;
    manage_load_raw(&mut sc, c.package_aid(), &wrong, &c.load_file(true))
        .map(|_| ())
        .unwrap_err_status(StatusWord::INCORRECT_DATA);
    // A wrong SHA-1 hash, likewise.
    let mut wrong1 = HashAlg::Sha1.digest(&block);
    wrong1[19] ^= 0x80;
    manage_load_raw(&mut sc, c.package_aid(), &wrong1, &c.load_file(true))
        .map(|_| ())
        .unwrap_err_status(StatusWord::INCORRECT_DATA);
    // Nothing was recorded.
    assert!(
        !gp::get_status(&mut sc, StatusScope::LoadFiles)
            .unwrap()
            .iter()
            .any(|e| e.aid == c.package_aid())
    );
    // Imports: javacard.framework 1.7 (the card has 1.6) and an unknown package → 6438.
    for (at_minor, patch) in [(true, 7u8), (false, 0)] {
        let mut b = block.clone();
        let import = find(&b, &hex::decode("07A0000000620101").unwrap());
        if at_minor {
            b[import - 2] = patch; // package_info: minor, major, AID length, AID
        } else {
            b[import + 7] = 0x77; // last AID byte: A0000000620177
        }
        let lf = kagi_cap::wrap_c4(&b);
        manage_load_raw(&mut sc, c.package_aid(), &[], &lf)
            .map(|_| ())
            .unwrap_err_status(gp_cap::SW_IMPORT_NOT_FOUND);
    }
    // The untouched file loads.
    gp_cap::load(&mut sc, &c, &opts(200, HashAlg::Sha256)).unwrap();
}

#[test]
fn cap_applets_install_through_the_vm_and_select() {
    let mut ch = card();
    let conf = CapFile::from_path(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../jcvm/tests/jc/conf.cap"),
    )
    .unwrap();
    let app = conf.applets()[0].aid.clone();
    {
        let (mut sc, _) = session(&mut ch);
        let t = std::time::Instant::now();
        for c in [cap(EMPTY), conf.clone()] {
            gp_cap::load(&mut sc, &c, &opts(239, HashAlg::Sha1)).unwrap();
            let spec = InstallSpec {
                package: c.package_aid().to_vec(),
                module: c.applets()[0].aid.clone(),
                instance: c.applets()[0].aid.clone(),
                privileges: vec![0, 0, 0],
                selectable: true,
                ..InstallSpec::default()
            };
            gp_cap::install(&mut sc, &spec).unwrap();
        }
        eprintln!(
            "MEASURE load+install of gppro-empty and conf over SCP03: {:?}",
            t.elapsed()
        );
        let apps = gp::get_status(&mut sc, StatusScope::Applications).unwrap();
        for a in [cap(EMPTY).applets()[0].aid.clone(), app.clone()] {
            assert!(apps.iter().any(|e| e.aid == a), "{a:02X?} listed");
        }
    }
    // kagi's conformance applet selects (90 00) and echoes (INS 11).
    gp::select(&mut ch, &app).unwrap();
    use kagi::channel::ApduChannel;
    let cmd = card_wire::apdu::Command::new(0x80, 0x11, 0, 0)
        .with_data(b"ABC".to_vec())
        .unwrap();
    let r = ch.transmit(&cmd).unwrap();
    assert_eq!((r.data, r.sw), (b"ABC".to_vec(), StatusWord::SUCCESS));
    // GlobalPlatformPro's empty applet throws CryptoException 0x6666 from process, SELECT
    // included: 6F00, as on a card.
    let e = gp::select(&mut ch, &cap(EMPTY).applets()[0].aid).unwrap_err();
    assert_eq!(e.status(), Some(StatusWord(0x6F00)), "{e}");
}

#[test]
fn isoapplet_installs_in_the_vm_and_sim_load_files_still_do() {
    let mut ch = card();
    let (mut sc, _) = session(&mut ch);
    let c = cap(ISO);
    gp_cap::load(&mut sc, &c, &opts(239, HashAlg::Sha256)).unwrap();
    let spec = InstallSpec {
        package: c.package_aid().to_vec(),
        module: c.applets()[0].aid.clone(),
        instance: c.applets()[0].aid.clone(),
        privileges: vec![0, 0, 0],
        selectable: true,
        ..InstallSpec::default()
    };
    // Its install method builds its crypto engines in the Java Card VM and completes.
    gp_cap::install(&mut sc, &spec).unwrap();
    // A simulator load file beside it: loads, installs, the package lists without a version.
    let pkg = hex::decode("F001020304").unwrap();
    let module = hex::decode("F00102030401").unwrap();
    let lf = manage::sim_load_file(&pkg, &[(module.clone(), "kagi.echo".into())]);
    manage::load(&mut sc, &pkg, None, &lf, true).unwrap();
    manage::install(
        &mut sc,
        &InstallSpec {
            package: pkg.clone(),
            module: module.clone(),
            instance: module.clone(),
            selectable: true,
            ..InstallSpec::default()
        },
    )
    .unwrap();
    let pkgs = gp::get_status(&mut sc, StatusScope::LoadFilesAndModules).unwrap();
    let e = pkgs.iter().find(|e| e.aid == pkg).unwrap();
    assert_eq!((e.version.clone(), e.modules.clone()), (None, vec![module]));
    // DELETE of the CAP package with P2 80 leaves the other.
    manage::delete(&mut sc, c.package_aid(), true).unwrap();
    let left: Vec<_> = gp::get_status(&mut sc, StatusScope::LoadFiles)
        .unwrap()
        .into_iter()
        .map(|e| e.aid)
        .collect();
    assert!(left.contains(&pkg) && !left.contains(&c.package_aid().to_vec()));
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle present")
}

/// INSTALL [for load] with `hash`, then LOAD of `lf` in 200-byte blocks.
fn manage_load_raw<T: Transport>(
    sc: &mut SecureChannel<'_, T>,
    package: &[u8],
    hash: &[u8],
    lf: &[u8],
) -> kagi::Result<()> {
    use kagi::channel::ApduChannel;
    let r = sc.transmit(&card_wire::gp::install_for_load(package, &[], hash)?)?;
    kagi::error::expect_success("INSTALL [for load]", r)?;
    for c in gp_load::load_commands(lf, 200)? {
        kagi::error::expect_success("LOAD", sc.transmit(&c)?)?;
    }
    Ok(())
}

trait StatusOf {
    fn unwrap_err_status(self, sw: StatusWord);
}

impl StatusOf for kagi::Result<()> {
    fn unwrap_err_status(self, sw: StatusWord) {
        match self {
            Ok(()) => panic!("expected {sw}, got success"),
            Err(e) => assert_eq!(e.status(), Some(sw), "{e}"),
        }
    }
}

#[test]
fn caps_load_and_install_through_scp02_into_the_gp_scp02_preset() {
    // The done-when: IsoApplet and GlobalPlatformPro's empty applet load through
    // SCP02 (i=55, C-MAC + C-DEC) into the `gp-scp02` simulator, GET STATUS lists each
    // package with its module, and the empty applet installs.
    let mut ch = CardChannel::new(SimCard::powered(
        SimConfig::preset("gp-scp02").unwrap().seeded(7),
    ));
    let domain = gp::select_domain(&mut ch, None).unwrap();
    assert_eq!(domain.recognition.as_ref().unwrap().scp, Some((0x02, 0x55)));
    let keys = StaticKeys::default_test_keys(applet_sim::card::SCP02_KVN);
    let level = HostOptions {
        level: SecurityLevel::CMAC_CDEC,
        ..HostOptions::default()
    };
    let scp = kagi::secure::ScpOptions::from_recognition(
        kagi::secure::ScpChoice::Auto,
        domain.recognition.as_ref().unwrap().scp,
    );
    let mut sc = SecureChannel::open_scp(&mut ch, keys, level, Some(&domain.aid), scp).unwrap();
    assert_eq!(sc.scp(), 0x02);
    let block = gp_load::block_size(domain.max_command_data, false, sc.load_overhead());
    for (rel, hash) in [(ISO, HashAlg::Sha256), (EMPTY, HashAlg::Sha1)] {
        let c = cap(rel);
        let t = std::time::Instant::now();
        let stats = gp_cap::load(&mut sc, &c, &opts(block, hash)).unwrap();
        assert_eq!(stats.commands, 1 + stats.load_file_bytes.div_ceil(block));
        eprintln!(
            "MEASURE in-process SCP02 {rel}: load file {} bytes, block {block}, {} commands, \
             {} APDU bytes, {:?}",
            stats.load_file_bytes,
            stats.commands,
            stats.apdu_bytes,
            t.elapsed()
        );
    }
    let pkgs = gp::get_status(&mut sc, StatusScope::LoadFilesAndModules).unwrap();
    // Package and module AIDs from cap/tests/data/README.md.
    for (pkg, module) in [
        ("F276A288BCFBA69D34F310", "F276A288BCFBA69D34F31001"),
        ("0102030405", "0102030405060708"),
    ] {
        let e = pkgs
            .iter()
            .find(|e| hex::encode_upper(&e.aid) == pkg)
            .unwrap_or_else(|| panic!("{pkg} not listed: {pkgs:?}"));
        assert_eq!(e.modules, [hex::decode(module).unwrap()], "{pkg}");
    }
    let empty = cap(EMPTY);
    let spec = InstallSpec {
        package: empty.package_aid().to_vec(),
        module: empty.applets()[0].aid.clone(),
        instance: empty.applets()[0].aid.clone(),
        privileges: vec![0, 0, 0],
        selectable: true,
        ..InstallSpec::default()
    };
    gp_cap::install(&mut sc, &spec).unwrap();
    let apps = gp::get_status(&mut sc, StatusScope::Applications).unwrap();
    assert!(apps.iter().any(|e| e.aid == spec.instance), "{apps:?}");
}
