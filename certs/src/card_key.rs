//! A card's key agreement certificate (GlobalPlatform's `CERT.SD.ECKA`), checked by whoever
//! seals content to the card against the card manufacturer's CA it trusts: a TSM or relay
//! that hands over a key of its own instead of the card's is caught here, since it cannot
//! get the manufacturer to certify it.

use crate::{CertError, certificate_issued_by};
use der::Decode;
use std::time::SystemTime;
use x509_cert::Certificate;

/// id-ecPublicKey.
const EC_PUBLIC_KEY: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp256r1 (P-256).
const P256: der::oid::ObjectIdentifier =
    der::oid::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// What a verified card key certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardKeyCert {
    /// The card's key agreement public key, SEC1 as in the certificate.
    pub public_key: Vec<u8>,
    /// The certificate's serial number (big-endian, as in the DER).
    pub serial: Vec<u8>,
}

fn refuse(what: String) -> CertError {
    CertError(format!(
        "the card certificate is refused: {what}; register the certificate the card manufacturer issued for this SIM"
    ))
}

/// Checks `card_der` against the manufacturer CA `ca` at `now`: issued and signed by that
/// CA, within its validity, a P-256 key, and its subject's CN is `iccid`.
pub fn check_card_certificate(
    ca: &Certificate,
    card_der: &[u8],
    iccid: &str,
    now: SystemTime,
) -> Result<CardKeyCert, CertError> {
    let cert =
        Certificate::from_der(card_der).map_err(|e| refuse(format!("it does not parse ({e})")))?;
    let tbs = cert.tbs_certificate();
    if !certificate_issued_by(ca, &cert) {
        return Err(refuse(format!(
            "it is not signed by the manufacturer CA {} (issuer {})",
            ca.tbs_certificate().subject(),
            tbs.issuer()
        )));
    }
    let v = tbs.validity();
    if now < v.not_before.to_system_time() || now > v.not_after.to_system_time() {
        return Err(refuse("it is outside its validity period".into()));
    }
    let cn = crate::subject_cn(&cert).unwrap_or_default();
    if cn != iccid {
        return Err(refuse(format!("it is for card {cn}, not for SIM {iccid}")));
    }
    let spki = tbs.subject_public_key_info();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<der::oid::ObjectIdentifier>().ok());
    if spki.algorithm.oid != EC_PUBLIC_KEY || curve != Some(P256) {
        return Err(refuse("its key is not a P-256 key".into()));
    }
    Ok(CardKeyCert {
        public_key: spki.subject_public_key.raw_bytes().to_vec(),
        serial: tbs.serial_number().as_bytes().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;
    use std::time::Duration;

    fn card_cert(
        ca: &test_pki::TestCa,
        iccid: &str,
        from: SystemTime,
        until: SystemTime,
    ) -> Vec<u8> {
        let key = p256::SecretKey::from_slice(&[0x24; 32]).unwrap();
        ca.issue_card_key(&key.public_key(), iccid, 0x0102, from, until)
            .unwrap()
            .to_der()
            .unwrap()
    }

    #[test]
    fn only_the_manufacturers_certificate_for_this_sim_passes() {
        let maker = test_pki::TestCa::new("card manufacturer").unwrap();
        let rogue = test_pki::TestCa::new("card manufacturer").unwrap();
        let now = SystemTime::now();
        let (from, until) = (
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        );
        let iccid = "8981100000000000019";
        let good = card_cert(&maker, iccid, from, until);
        let c = check_card_certificate(maker.certificate(), &good, iccid, now).unwrap();
        // The key is the P-256 point the certificate carries (SEC1 uncompressed), the serial
        // the DER integer's bytes.
        let expected = p256::SecretKey::from_slice(&[0x24; 32])
            .unwrap()
            .public_key();
        assert_eq!(
            p256::PublicKey::from_sec1_bytes(&c.public_key).unwrap(),
            expected
        );
        assert_eq!(c.serial, vec![0x01, 0x02]);
        // The same subject and name from another CA (same DN): its signature does not verify.
        let forged = card_cert(&rogue, iccid, from, until);
        let e = check_card_certificate(maker.certificate(), &forged, iccid, now).unwrap_err();
        assert!(e.0.contains("not signed by the manufacturer CA"), "{e}");
        // Another SIM's certificate.
        let e = check_card_certificate(maker.certificate(), &good, "8981100000000000027", now)
            .unwrap_err();
        assert!(e.0.contains("not for SIM 8981100000000000027"), "{e}");
        // Out of its validity.
        let old = card_cert(
            &maker,
            iccid,
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        );
        let e = check_card_certificate(maker.certificate(), &old, iccid, now).unwrap_err();
        assert!(e.0.contains("validity"), "{e}");
        // Not a certificate at all.
        let e = check_card_certificate(maker.certificate(), b"\x30\x03\x02\x01\x01", iccid, now)
            .unwrap_err();
        assert!(e.0.contains("does not parse"), "{e}");
    }
}
