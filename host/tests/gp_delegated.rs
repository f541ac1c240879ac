//! Delegated management: a supplementary security domain with the Delegated Management
//! privilege (no Authorized Management) loads, installs and deletes its own content only with
//! tokens signed by the card issuer's token key, which the issuer security domain holds as
//! its public key of version 70. Every accepted command has refused twins (no token, a token
//! by another key). The tokens here are ECDSA P-256 signatures made with RustCrypto directly.

#![cfg(feature = "sim")]

use applet_sim::card::{SSD_MODULE, SSD_PACKAGE};
use applet_sim::{SimCard, SimConfig};
use card_wire::dap::{DapPublicKey, DapSigner};
use card_wire::scp03::crypto::AesKey;
use card_wire::scp03::{HostOptions, SecurityLevel, StaticKeys};
use card_wire::sw::StatusWord;
use kagi::channel::{ApduChannel, CardChannel};
use kagi::gp::manage::{self, InstallSpec};
use kagi::gp::{self, StatusScope};
use kagi::secure::SecureChannel;

const ISD: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];
const SSD: [u8; 9] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x44, 0x02];
const PKG: [u8; 6] = [0xF0, 0x01, 0x02, 0x03, 0x04, 0x05];
const MODULE: [u8; 7] = [0xF0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x01];
const APP: [u8; 7] = [0xF0, 0x01, 0x02, 0x03, 0x04, 0x05, 0xA1];
const RECEIPT_KEY: [u8; 16] = [0x71; 16];
/// The simulator's default KDD: its card unique data.
const KDD: [u8; 10] = [0x00, 0x00, 0x4B, 0x41, 0x47, 0x49, 0x00, 0x00, 0x00, 0x01];

/// The receipt of a confirmation, recomputed here with RustCrypto's CMAC directly over the
/// validation data of the `globalplatform` library (kaoh/globalplatform, crypto.c,
/// validate_load_receipt: 02 ‖ counter ‖ L ‖ card unique data ‖ L ‖ AID ‖ L ‖ AID).
fn expected_confirmation(counter: u16, aids: &[&[u8]]) -> Vec<u8> {
    use cmac::{Cmac, Mac};
    let mut data = vec![0x02];
    data.extend_from_slice(&counter.to_be_bytes());
    data.push(KDD.len() as u8);
    data.extend_from_slice(&KDD);
    for a in aids {
        data.push(a.len() as u8);
        data.extend_from_slice(a);
    }
    let mut m = <Cmac<aes::Aes128> as cmac::digest::KeyInit>::new_from_slice(&RECEIPT_KEY).unwrap();
    m.update(&data);
    let mut out = vec![16];
    out.extend_from_slice(&m.finalize().into_bytes());
    out.extend_from_slice(&[2, (counter >> 8) as u8, counter as u8, KDD.len() as u8]);
    out.extend_from_slice(&KDD);
    out
}

fn check_receipts((load, install, delete): (Vec<u8>, Vec<u8>, Vec<u8>)) {
    use card_wire::dm::{Confirmed, verify_receipt};
    // Counters 1, 2, 3: one receipt per delegated command.
    assert_eq!(load, expected_confirmation(1, &[&PKG, &SSD]));
    assert_eq!(install, expected_confirmation(2, &[&PKG, &APP]));
    assert_eq!(delete, expected_confirmation(3, &[&PKG]));
    let key = AesKey::new(&RECEIPT_KEY).unwrap();
    let c = verify_receipt(
        &install,
        &key,
        &Confirmed::Install {
            elf: &PKG,
            app: &APP,
        },
    )
    .unwrap();
    assert_eq!((c.counter, c.card_unique_data.as_slice()), (2, &KDD[..]));
    verify_receipt(
        &load,
        &key,
        &Confirmed::Load {
            elf: &PKG,
            sd: &SSD,
        },
    )
    .unwrap();
    verify_receipt(&delete, &key, &Confirmed::Delete { aid: &PKG }).unwrap();
    // Refused: another key, another AID, another command's AIDs, a plain 00. (A load and an
    // install receipt over the same two AIDs are the same bytes: the format names no command.)
    let other = AesKey::new(&[0x72; 16]).unwrap();
    assert!(verify_receipt(&delete, &other, &Confirmed::Delete { aid: &PKG }).is_err());
    assert!(verify_receipt(&delete, &key, &Confirmed::Delete { aid: &APP }).is_err());
    assert!(
        verify_receipt(
            &load,
            &key,
            &Confirmed::Install {
                elf: &PKG,
                app: &APP
            }
        )
        .is_err()
    );
    assert!(verify_receipt(&[0x00], &key, &Confirmed::Delete { aid: &PKG }).is_err());
}

struct RawP256(p256::ecdsa::SigningKey);

impl DapSigner for RawP256 {
    fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        use p256::ecdsa::signature::Signer;
        let s: p256::ecdsa::Signature = self.0.sign(data);
        Ok(s.to_bytes().to_vec())
    }
    fn public_key(&self) -> Result<DapPublicKey, String> {
        Ok(DapPublicKey::P256(
            self.0
                .verifying_key()
                .to_sec1_point(false)
                .as_bytes()
                .to_vec(),
        ))
    }
}

fn key(seed: u8) -> RawP256 {
    RawP256(p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap())
}

fn with_session<R>(
    ch: &mut CardChannel<SimCard>,
    sd: &[u8],
    f: impl FnOnce(&mut SecureChannel<'_, SimCard>) -> R,
) -> R {
    gp::select(ch, sd).unwrap();
    let opts = HostOptions {
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    };
    let mut sc =
        SecureChannel::open(ch, StaticKeys::default_test_keys(0x30), opts, Some(sd)).unwrap();
    f(&mut sc)
}

fn sw<T>(r: kagi::Result<T>) -> Option<StatusWord> {
    r.err().map(|e| e.status().unwrap_or_else(|| panic!("{e}")))
}

/// The issuer's token key (public, version 70) and the receipt key (key set 71) in the ISD,
/// and the SSD with Security Domain + `privileges0` (`A0`: Delegated Management).
fn setup(ch: &mut CardChannel<SimCard>, issuer: &RawP256, privileges0: u8) {
    with_session(ch, &ISD, |sc| {
        manage::put_dap_key(
            sc,
            card_wire::dm::TOKEN_KVN,
            None,
            &issuer.public_key().unwrap(),
        )
        .unwrap();
        // The receipt key: key 01 of the ISD's key set 71.
        let dek = sc.dek().unwrap().clone();
        let set = StaticKeys::single(
            card_wire::dm::RECEIPT_KVN,
            AesKey::new(&RECEIPT_KEY).unwrap(),
        );
        manage::put_key(sc, &dek, &set, None).unwrap();
        let ssd = InstallSpec {
            package: SSD_PACKAGE.to_vec(),
            module: SSD_MODULE.to_vec(),
            instance: SSD.to_vec(),
            privileges: vec![privileges0, 0x00, 0x00],
            selectable: true,
            ..InstallSpec::default()
        };
        manage::install(sc, &ssd).unwrap();
    });
}

#[test]
fn delegated_management_needs_the_issuers_token() {
    let issuer = key(0x51);
    let intruder = key(0x52);
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(3)));
    setup(&mut ch, &issuer, 0xA0); // Security Domain + Delegated Management
    let refused = Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
    let file = manage::sim_load_file(&PKG, &[(MODULE.to_vec(), "kagi.echo".into())]);
    let app = InstallSpec {
        package: PKG.to_vec(),
        module: MODULE.to_vec(),
        instance: APP.to_vec(),
        selectable: true,
        ..InstallSpec::default()
    };
    let receipts = with_session(&mut ch, &SSD, |sc| {
        // LOAD: no token, another key's token: refused; the issuer's: loaded into the SSD.
        assert_eq!(sw(manage::load(sc, &PKG, None, &file, true)), refused);
        assert_eq!(
            sw(manage::load_delegated(sc, &PKG, &file, &intruder)),
            refused
        );
        let load = manage::load_delegated(sc, &PKG, &file, &issuer).unwrap();
        let files = gp::get_status(sc, StatusScope::LoadFiles).unwrap();
        assert!(files.iter().any(|e| e.aid == PKG), "{files:?}");
        // INSTALL: the same.
        assert_eq!(sw(manage::install(sc, &app)), refused);
        assert_eq!(sw(manage::install_delegated(sc, &app, &intruder)), refused);
        let install = manage::install_delegated(sc, &app, &issuer).unwrap();
        let apps = gp::get_status(sc, StatusScope::Applications).unwrap();
        assert!(apps.iter().any(|e| e.aid == APP), "{apps:?}");
        // DELETE: the same.
        assert_eq!(sw(manage::delete(sc, &PKG, true)), refused);
        assert_eq!(
            sw(manage::delete_delegated(sc, &PKG, true, &intruder)),
            refused
        );
        let delete = manage::delete_delegated(sc, &PKG, true, &issuer).unwrap();
        assert!(
            gp::get_status(sc, StatusScope::Applications)
                .unwrap()
                .iter()
                .all(|e| e.aid != APP)
        );
        (load, install, delete)
    });
    check_receipts(receipts);
    // The ISD (Authorized Management) takes no token.
    with_session(&mut ch, &ISD, |sc| {
        assert_eq!(
            sw(manage::load_delegated(sc, &PKG, &file, &issuer)),
            Some(StatusWord::INCORRECT_DATA)
        );
        assert_eq!(sw(manage::load(sc, &PKG, None, &file, true)), None);
    });
}

fn echo_file() -> Vec<u8> {
    manage::sim_load_file(&PKG, &[(MODULE.to_vec(), "kagi.echo".into())])
}

fn echo_app() -> InstallSpec {
    InstallSpec {
        package: PKG.to_vec(),
        module: MODULE.to_vec(),
        instance: APP.to_vec(),
        selectable: true,
        ..InstallSpec::default()
    }
}

#[test]
fn a_token_for_other_data_or_a_domain_without_delegated_management_is_refused() {
    let issuer = key(0x51);
    let refused = Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(4)));
    setup(&mut ch, &issuer, 0xA0);
    with_session(&mut ch, &SSD, |sc| {
        // The issuer's token over another INSTALL (another instance AID) on this command.
        let file = echo_file();
        manage::load_delegated(sc, &PKG, &file, &issuer).unwrap();
        let mut other = echo_app();
        other.instance[6] = 0xA2;
        let signed_for_other =
            manage::with_token(card_wire::gp::install(&other).unwrap(), &issuer).unwrap();
        let token = signed_for_other.data().last_chunk::<64>().unwrap().to_vec();
        let cmd = card_wire::dm::with_token(&card_wire::gp::install(&echo_app()).unwrap(), &token)
            .unwrap();
        let r = ApduChannel::transmit(sc, &cmd).unwrap();
        assert_eq!(r.sw, StatusWord::SECURITY_STATUS_NOT_SATISFIED);
        // A DELETE token for the package used on the instance.
        let del_pkg =
            manage::with_token(card_wire::gp::delete(&PKG, true).unwrap(), &issuer).unwrap();
        let token = del_pkg.data().last_chunk::<64>().unwrap().to_vec();
        let cmd = card_wire::dm::with_token(&card_wire::gp::delete(&APP, false).unwrap(), &token)
            .unwrap();
        assert_eq!(
            ApduChannel::transmit(sc, &cmd).unwrap().sw,
            StatusWord::SECURITY_STATUS_NOT_SATISFIED
        );
        assert_eq!(
            sw(manage::install_delegated(sc, &echo_app(), &issuer)),
            None
        );
    });
    // An SSD with Security Domain only: no token makes it load.
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(5)));
    setup(&mut ch, &issuer, 0x80);
    with_session(&mut ch, &SSD, |sc| {
        assert_eq!(
            sw(manage::load_delegated(sc, &PKG, &echo_file(), &issuer)),
            refused
        );
        assert!(
            gp::get_status(sc, StatusScope::LoadFiles)
                .unwrap()
                .iter()
                .all(|e| e.aid != PKG)
        );
    });
}

use applet_sim::tearing::{RecordingCard, old_or_new};
use card_wire::transport::{ResetKind, Transport, TransportError};

/// Delegated load, install, instance delete and package delete, each with its receipt.
fn delegated_sequence<T: Transport>(
    ch: &mut CardChannel<T>,
    issuer: &RawP256,
) -> kagi::Result<Vec<Vec<u8>>> {
    gp::select(ch, &SSD)?;
    let opts = HostOptions {
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    };
    let mut sc = SecureChannel::open(ch, StaticKeys::default_test_keys(0x30), opts, Some(&SSD))?;
    Ok(vec![
        manage::load_delegated(&mut sc, &PKG, &echo_file(), issuer)?,
        manage::install_delegated(&mut sc, &echo_app(), issuer)?,
        manage::delete_delegated(&mut sc, &APP, false, issuer)?,
        manage::delete_delegated(&mut sc, &PKG, true, issuer)?,
    ])
}

#[test]
fn tearing_never_separates_a_delegated_change_from_its_receipt_counter() {
    // The confirmation counter must move in the same transaction as the load, install or
    // delete it confirms: a power cut at any persistent write leaves the memory of just
    // before or just after the torn command, never content without its counter step.
    let issuer = key(0x51);
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(6)));
    setup(&mut ch, &issuer, 0xA0);
    let base = ch.transport().store().clone();
    let card = || {
        let mut c = SimCard::from_store(base.clone(), Some(6), false);
        c.power_on();
        c
    };
    let mut reference = CardChannel::new(RecordingCard::new(card()));
    let before = reference.transport().card.store().writes();
    let receipts = delegated_sequence(&mut reference, &issuer).unwrap();
    // Counters 1..4 in the receipts: the reference run is a real delegated run.
    let counters: Vec<u8> = receipts.iter().map(|r| r[19]).collect();
    assert_eq!(counters, [1, 2, 3, 4]);
    let total = reference.transport().card.store().writes() - before;
    let snapshots = std::mem::take(&mut reference.transport_mut().snapshots);
    let fail = format!("sd/{}/fail", hex::encode_upper(SSD));
    for n in 1..=total {
        let mut c = card();
        c.tear_at(n);
        let mut ch = CardChannel::new(RecordingCard::new(c));
        let err = delegated_sequence(&mut ch, &issuer).expect_err("power was cut");
        assert!(
            matches!(err, kagi::Error::Transport(TransportError::Mute)),
            "n={n}: {err}"
        );
        let answered = ch.transport().answered();
        ch.reset(ResetKind::Cold).unwrap();
        let after = ch.transport().card.store().clone();
        assert!(
            old_or_new(&after, &snapshots, answered, &[&fail]),
            "tear at write {n} (command {answered}): content and confirmation counter {:?} \
             disagree",
            after.get("card/confirmation_counter")
        );
    }
}
