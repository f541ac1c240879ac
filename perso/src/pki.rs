//! The X.509 pieces the host needs beyond reading a certificate: PEM or DER files, checking
//! an RSA signature against an issuer, and PKCS#10 certification requests signed by a key
//! that never leaves a card (the request is built here, the card signs its hash), for an
//! external CA reached through a file exchange.

use crate::error::{Error, Result};
use der::{Decode, Encode};
use x509_cert::name::Name;
use x509_cert::request::{CertReq, CertReqInfo, Version};
use x509_cert::spki::{AlgorithmIdentifier, SubjectPublicKeyInfo};

/// The PEM label of a PKCS#10 request.
pub const CSR_LABEL: &str = "CERTIFICATE REQUEST";

/// DER from a file that holds DER, or PEM with `label`.
pub fn pem_or_der(bytes: &[u8], label: &str) -> Result<Vec<u8>> {
    kagi_certs::pem_or_der(bytes, label).map_err(|e| Error::Certificate(e.0))
}

pub use kagi_certs::{SHA256_RSA, certificate_issued_by, rsa_signed};

/// PEM text of `der` under `label`.
pub fn to_pem(der: &[u8], label: &str) -> Result<String> {
    der::pem::encode_string(label, der::pem::LineEnding::LF, der)
        .map_err(|e| Error::Certificate(format!("PEM: {e}")))
}

/// Builds a PKCS#10 request for the key `spki` (DER) with `subject`; `sign` gets the DER of
/// the CertificationRequestInfo and returns its sha256WithRSAEncryption signature (on a card:
/// PKCS#1 v1.5 over the SHA-256 DigestInfo). The request is checked before it is returned, so
/// a card that signed with another key is caught here.
pub fn build_csr(
    subject: &Name,
    spki: &[u8],
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>>,
) -> Result<Vec<u8>> {
    let e = |x: der::Error| Error::Certificate(format!("certification request: {x}"));
    let info = CertReqInfo {
        version: Version::V1,
        subject: subject.clone(),
        public_key: SubjectPublicKeyInfo::from_der(spki).map_err(e)?,
        attributes: Default::default(),
    };
    let tbs = info.to_der().map_err(e)?;
    let sig = sign(&tbs)?;
    let req = CertReq {
        info,
        algorithm: AlgorithmIdentifier {
            oid: SHA256_RSA,
            parameters: Some(der::asn1::Null.into()),
        },
        signature: der::asn1::BitString::from_bytes(&sig).map_err(e)?,
    };
    let der = req.to_der().map_err(e)?;
    verify_csr(&der)?;
    Ok(der)
}

/// Parses a PKCS#10 request and checks its signature with its own key (proof that whoever
/// made it holds the private key).
pub fn verify_csr(der: &[u8]) -> Result<CertReq> {
    let e = |m: String| Error::Certificate(format!("certification request: {m}"));
    let req = CertReq::from_der(der).map_err(|x| e(x.to_string()))?;
    let tbs = req.info.to_der().map_err(|x| e(x.to_string()))?;
    let spki = req.info.public_key.to_der().map_err(|x| e(x.to_string()))?;
    if !rsa_signed(&spki, &tbs, &req.algorithm.oid, req.signature.raw_bytes()) {
        return Err(e(
            "its signature does not verify with its own key (only sha256WithRSAEncryption is accepted)"
                .into(),
        ));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rsa::pkcs8::EncodePublicKey;
    use rsa::signature::{SignatureEncoding, Signer};
    use std::str::FromStr;

    fn key() -> rsa::PrivateKey {
        test_pki::generate_rsa_key().unwrap()
    }

    #[test]
    fn csr_round_trip_and_tampering() {
        let k = key();
        let spki = k.to_public_key().to_public_key_der().unwrap();
        let subject = Name::from_str("CN=KAGIR1,C=JP").unwrap();
        let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(k.clone());
        let der = build_csr(&subject, spki.as_bytes(), |tbs| {
            Ok(signer.sign(tbs).to_vec())
        })
        .unwrap();
        let req = verify_csr(&der).unwrap();
        assert_eq!(req.info.subject, subject);
        // openssl-compatible PEM framing.
        let pem = to_pem(&der, CSR_LABEL).unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert_eq!(pem_or_der(pem.as_bytes(), CSR_LABEL).unwrap(), der);
        // A signature by another key is refused when building and when reading.
        let other = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key());
        assert!(
            build_csr(&subject, spki.as_bytes(), |tbs| Ok(other
                .sign(tbs)
                .to_vec()))
            .is_err()
        );
        let mut bad = der.clone();
        let n = bad.len();
        bad[n - 5] ^= 1;
        assert!(verify_csr(&bad).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = verify_csr(&bytes);
            let _ = pem_or_der(&bytes, CSR_LABEL);
        }
    }
}
