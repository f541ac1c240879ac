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
use kagi::channel::CardChannel;
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

#[test]
fn delegated_management_needs_the_issuers_token() {
    let issuer = key(0x51);
    let intruder = key(0x52);
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(3)));
    with_session(&mut ch, &ISD, |sc| {
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
            privileges: vec![0xA0, 0x00, 0x00], // Security Domain + Delegated Management
            selectable: true,
            ..InstallSpec::default()
        };
        manage::install(sc, &ssd).unwrap();
    });
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
