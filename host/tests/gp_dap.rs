//! DAP verification: a supplementary security domain with the DAP Verification privilege
//! takes a DAP public key (PUT KEY) and accepts a load file associated with it only with a
//! DAP block that verifies: ECDSA P-256, RSA PKCS#1 v1.5 with SHA-1 and SHA-256. Every
//! accepted load has refused twins (no block, another key's block, no hash). Signatures are
//! checked against independent implementations: openssl for RSA (PKCS#1 v1.5 is
//! deterministic: byte-equal signatures), RustCrypto's p256 used directly for ECDSA.

#![cfg(feature = "sim")]

use applet_sim::card::{SSD_MODULE, SSD_PACKAGE};
use applet_sim::{SimCard, SimConfig};
use card_wire::dap::{DapPublicKey, DapSigner};
use card_wire::scp03::{HostOptions, SecurityLevel, StaticKeys};
use card_wire::sw::StatusWord;
use kagi::channel::CardChannel;
use kagi::dap::{DapKey, RsaDigest};
use kagi::gp::manage::{self, InstallSpec};
use kagi::gp::{self, StatusScope};
use kagi::gp_cap::{self, CapFile, HashAlg, LoadOptions};
use kagi::secure::SecureChannel;
use std::path::{Path, PathBuf};

const ISD: [u8; 8] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00];
const SSD: [u8; 9] = [0xA0, 0x00, 0x00, 0x01, 0x51, 0x53, 0x50, 0x44, 0x01];
const EMPTY: &str = "gppro-empty/Empty_0102030405_8d5ac9e2_2.2.1.cap";

fn cap() -> CapFile {
    CapFile::from_path(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../cap/tests/data")
            .join(EMPTY),
    )
    .unwrap()
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

fn opts(hash: HashAlg) -> LoadOptions {
    LoadOptions {
        hash,
        descriptor: true,
        sd: Some(SSD.to_vec()),
        block: 239,
    }
}

/// A card with an SSD that has `privileges`, its DAP key (if any) put with PUT KEY.
fn card_with_ssd(privileges: [u8; 3], key: Option<(u8, &DapPublicKey)>) -> CardChannel<SimCard> {
    let mut ch = CardChannel::new(SimCard::powered(SimConfig::default().seeded(5)));
    with_session(&mut ch, &ISD, |sc| {
        let spec = InstallSpec {
            package: SSD_PACKAGE.to_vec(),
            module: SSD_MODULE.to_vec(),
            instance: SSD.to_vec(),
            privileges: privileges.to_vec(),
            selectable: true,
            ..InstallSpec::default()
        };
        manage::install(sc, &spec).unwrap();
    });
    if let Some((kvn, key)) = key {
        with_session(&mut ch, &SSD, |sc| {
            manage::put_dap_key(sc, kvn, None, key).unwrap()
        });
    }
    ch
}

fn load(
    ch: &mut CardChannel<SimCard>,
    hash: HashAlg,
    dap: &[(Vec<u8>, &dyn DapSigner)],
) -> Option<StatusWord> {
    with_session(ch, &ISD, |sc| {
        gp_cap::load_with_dap(sc, &cap(), &opts(hash), dap)
            .err()
            .map(|e| e.status().unwrap_or_else(|| panic!("{e}")))
    })
}

fn loaded(ch: &mut CardChannel<SimCard>) -> bool {
    with_session(ch, &ISD, |sc| {
        gp::get_status(sc, StatusScope::LoadFiles)
            .unwrap()
            .iter()
            .any(|e| e.aid == cap().package_aid())
    })
}

/// An ECDSA P-256 signer built on RustCrypto directly, not on kagi's `DapKey`.
struct RawP256(p256::ecdsa::SigningKey);

impl DapSigner for RawP256 {
    fn sign(&self, dtbs: &[u8]) -> Result<Vec<u8>, String> {
        use p256::ecdsa::signature::Signer;
        let s: p256::ecdsa::Signature = self.0.sign(dtbs);
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

fn p256_key(seed: u8) -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap()
}

#[test]
fn ecdsa_p256_dap_accepted_and_refused() {
    let good = RawP256(p256_key(0x11));
    let other = RawP256(p256_key(0x22));
    let mut ch = card_with_ssd([0xC0, 0, 0], Some((0x73, &good.public_key().unwrap())));
    // The key information template lists the DAP key: id 01, KVN 73, type B0, 65 bytes.
    let keys = with_session(&mut ch, &SSD, |sc| {
        gp::parse_key_info(&gp::get_data(sc, 0x00E0).unwrap().unwrap()).unwrap()
    });
    assert!(
        keys.iter()
            .any(|k| (k.id, k.version, k.key_type, k.length) == (0x01, 0x73, 0xB0, 65)),
        "{keys:?}"
    );
    // Refused: no DAP block, a block signed by another key, a good block without a hash.
    let sd = SSD.to_vec();
    let sw = Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
    assert_eq!(load(&mut ch, HashAlg::Sha256, &[]), sw);
    assert_eq!(load(&mut ch, HashAlg::Sha256, &[(sd.clone(), &other)]), sw);
    assert!(!loaded(&mut ch));
    let e = with_session(&mut ch, &ISD, |sc| {
        gp_cap::load_with_dap(sc, &cap(), &opts(HashAlg::None), &[(sd.clone(), &good)]).unwrap_err()
    });
    assert!(e.to_string().contains("hash"), "{e}");
    // Accepted: the independent signer, then kagi's own key (same scalar).
    assert_eq!(load(&mut ch, HashAlg::Sha256, &[(sd.clone(), &good)]), None);
    assert!(loaded(&mut ch));
    with_session(&mut ch, &ISD, |sc| {
        manage::delete(sc, cap().package_aid(), true).unwrap()
    });
    let kagi_key = DapKey::P256(p256_key(0x11));
    assert_eq!(
        load(&mut ch, HashAlg::Sha1, &[(sd.clone(), &kagi_key)]),
        None
    );
    assert!(loaded(&mut ch));
    // kagi's signature verifies with RustCrypto directly over the load file data block hash.
    let hash = cap().hash(HashAlg::Sha256, true);
    let sig = kagi_key.sign(&hash).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
    use p256::ecdsa::signature::Verifier;
    p256_key(0x11).verifying_key().verify(&hash, &sig).unwrap();
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kagi-dap-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn openssl(args: &[&str]) {
    let o = std::process::Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed for the RSA DAP test");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn rsa_dap_matches_openssl_and_the_card_checks_it() {
    let d = tmp("rsa");
    let pem = d.join("dap.pem");
    let other_pem = d.join("other.pem");
    for p in [&pem, &other_pem] {
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p.to_str().unwrap(),
        ]);
    }
    let hash = cap().hash(HashAlg::Sha256, true);
    let dtbs = d.join("dtbs.bin");
    std::fs::write(&dtbs, &hash).unwrap();
    // PKCS#1 v1.5 is deterministic: kagi's signature equals openssl's, byte for byte.
    for (digest, flag) in [(RsaDigest::Sha1, "-sha1"), (RsaDigest::Sha256, "-sha256")] {
        let out = d.join(format!("sig{flag}"));
        openssl(&[
            "dgst",
            flag,
            "-sign",
            pem.to_str().unwrap(),
            "-out",
            out.to_str().unwrap(),
            dtbs.to_str().unwrap(),
        ]);
        let key = DapKey::from_file(&pem, digest).unwrap();
        assert_eq!(
            key.sign(&hash).unwrap(),
            std::fs::read(&out).unwrap(),
            "{flag}"
        );
    }
    let good = DapKey::from_file(&pem, RsaDigest::Sha256).unwrap();
    let sha1 = DapKey::from_file(&pem, RsaDigest::Sha1).unwrap();
    let other = DapKey::from_file(&other_pem, RsaDigest::Sha256).unwrap();
    // A 2048-bit modulus: PUT KEY travels in an extended APDU.
    let mut ch = card_with_ssd([0xC0, 0, 0], Some((0x74, &good.public_key().unwrap())));
    // GET DATA E0 lists it in the extended format (a 256-byte modulus needs two length
    // bytes): id 01, KVN 74, type A1, 256.
    let keys = with_session(&mut ch, &SSD, |sc| {
        gp::parse_key_info(&gp::get_data(sc, 0x00E0).unwrap().unwrap()).unwrap()
    });
    assert!(
        keys.iter()
            .any(|k| (k.id, k.version, k.key_type, k.length) == (0x01, 0x74, 0xA1, 256)),
        "{keys:?}"
    );
    let sd = SSD.to_vec();
    let sw = Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED);
    assert_eq!(load(&mut ch, HashAlg::Sha256, &[]), sw);
    assert_eq!(load(&mut ch, HashAlg::Sha256, &[(sd.clone(), &other)]), sw);
    assert!(!loaded(&mut ch));
    // The signature's digest must be the load file hash's: SHA-1 over a SHA-256 hash and
    // SHA-256 over a SHA-1 hash are refused (GlobalPlatformPro's DAPSigner signs with the
    // hash's algorithm).
    assert_eq!(load(&mut ch, HashAlg::Sha256, &[(sd.clone(), &sha1)]), sw);
    assert_eq!(load(&mut ch, HashAlg::Sha1, &[(sd.clone(), &good)]), sw);
    assert!(!loaded(&mut ch));
    for (hash, signer) in [(HashAlg::Sha256, &good), (HashAlg::Sha1, &sha1)] {
        assert_eq!(load(&mut ch, hash, &[(sd.clone(), signer)]), None);
        assert!(loaded(&mut ch));
        with_session(&mut ch, &ISD, |sc| {
            manage::delete(sc, cap().package_aid(), true).unwrap()
        });
    }
    // DELETE KEY of the DAP key (version 74, id 01): then no DAP verifies.
    with_session(&mut ch, &SSD, |sc| {
        manage::delete_key(sc, 0x74, Some(0x01)).unwrap()
    });
    assert_eq!(load(&mut ch, HashAlg::Sha256, &[(sd, &good)]), sw);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn without_the_privilege_no_dap_is_needed_and_mandated_dap_binds_every_load() {
    // An SSD without DAP Verification: a load into it needs no block.
    let mut ch = card_with_ssd([0x80, 0, 0], None);
    assert_eq!(load(&mut ch, HashAlg::Sha256, &[]), None);
    // Mandated DAP Verification (C1): even a load into the ISD needs the SSD's block.
    let good = RawP256(p256_key(0x33));
    let mut ch = card_with_ssd([0xC1, 0, 0], Some((0x73, &good.public_key().unwrap())));
    let to_isd = |ch: &mut CardChannel<SimCard>, dap: &[(Vec<u8>, &dyn DapSigner)]| {
        with_session(ch, &ISD, |sc| {
            let o = LoadOptions {
                sd: None,
                ..opts(HashAlg::Sha256)
            };
            gp_cap::load_with_dap(sc, &cap(), &o, dap)
                .err()
                .and_then(|e| e.status())
        })
    };
    assert_eq!(
        to_isd(&mut ch, &[]),
        Some(StatusWord::SECURITY_STATUS_NOT_SATISFIED)
    );
    assert_eq!(to_isd(&mut ch, &[(SSD.to_vec(), &good)]), None);
}

#[test]
fn dap_public_keys_from_pem() {
    // The public half of a P-256 key, from its PKCS#8 PEM and from the SPKI PEM.
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let k = p256_key(0x44);
    let private = k.to_pkcs8_pem(LineEnding::LF).unwrap();
    let public = k.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
    let expected = DapPublicKey::P256(k.verifying_key().to_sec1_point(false).as_bytes().to_vec());
    assert_eq!(kagi::dap::public_key_from_pem(&private).unwrap(), expected);
    assert_eq!(kagi::dap::public_key_from_pem(&public).unwrap(), expected);
    assert!(kagi::dap::public_key_from_pem("-----BEGIN NOTHING-----").is_err());
    assert!(DapKey::from_pem("not a key", RsaDigest::Sha256).is_err());
}
