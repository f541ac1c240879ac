//! Delegated management: a supplementary security domain with the Delegated Management
//! privilege (no Authorized Management) loads, installs and deletes its own content only with
//! tokens signed by the card issuer's token key, which the issuer security domain holds as
//! its public key of version 70. Every accepted command has refused twins (no token, a token
//! by another key). The tokens here are ECDSA P-256 signatures made with RustCrypto directly.

#![cfg(feature = "sim")]

use applet_sim::card::{SSD_MODULE, SSD_PACKAGE};
use applet_sim::{SimCard, SimConfig};
use card_wire::dap::{DapPublicKey, DapSigner};
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

fn sw(r: kagi::Result<()>) -> Option<StatusWord> {
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
    with_session(&mut ch, &SSD, |sc| {
        // LOAD: no token, another key's token: refused; the issuer's: loaded into the SSD.
        assert_eq!(sw(manage::load(sc, &PKG, None, &file, true)), refused);
        assert_eq!(
            sw(manage::load_delegated(sc, &PKG, &file, &intruder)),
            refused
        );
        assert_eq!(sw(manage::load_delegated(sc, &PKG, &file, &issuer)), None);
        let files = gp::get_status(sc, StatusScope::LoadFiles).unwrap();
        assert!(files.iter().any(|e| e.aid == PKG), "{files:?}");
        // INSTALL: the same.
        assert_eq!(sw(manage::install(sc, &app)), refused);
        assert_eq!(sw(manage::install_delegated(sc, &app, &intruder)), refused);
        assert_eq!(sw(manage::install_delegated(sc, &app, &issuer)), None);
        let apps = gp::get_status(sc, StatusScope::Applications).unwrap();
        assert!(apps.iter().any(|e| e.aid == APP), "{apps:?}");
        // DELETE: the same.
        assert_eq!(sw(manage::delete(sc, &PKG, true)), refused);
        assert_eq!(
            sw(manage::delete_delegated(sc, &PKG, true, &intruder)),
            refused
        );
        assert_eq!(sw(manage::delete_delegated(sc, &PKG, true, &issuer)), None);
        assert!(
            gp::get_status(sc, StatusScope::Applications)
                .unwrap()
                .iter()
                .all(|e| e.aid != APP)
        );
    });
    // The ISD (Authorized Management) takes no token.
    with_session(&mut ch, &ISD, |sc| {
        assert_eq!(
            sw(manage::load_delegated(sc, &PKG, &file, &issuer)),
            Some(StatusWord::INCORRECT_DATA)
        );
        assert_eq!(sw(manage::load(sc, &PKG, None, &file, true)), None);
    });
}
