//! The public key of a card's certificate, to check signatures made on the card: the TSM's
//! key proof in an execution receipt, the broker's card login.

use sha2::{Digest, Sha256};

/// Why a card certificate's key could not be had, or a card signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertKeyError {
    /// The bytes are not a DER X.509 certificate (or SubjectPublicKeyInfo).
    #[error("not a DER X.509 certificate: {0}")]
    Certificate(der::Error),
    /// A key of another type.
    #[error("the key is neither RSA nor P-256 (a card certificate carries one of them)")]
    UnsupportedKey,
    /// The signature is malformed or does not verify.
    #[error("the card's signature does not verify against the certificate")]
    BadSignature,
}

/// The public key of a card certificate, to check the card's signatures with: RSA-2048 (the
/// JPKI card) or P-256 (SIM profiles).
#[derive(Debug, Clone)]
pub enum CertKey {
    /// RSA, PKCS#1 v1.5 with SHA-256.
    Rsa(rsa::PublicKey),
    /// ECDSA P-256 with SHA-256.
    P256(p256::ecdsa::VerifyingKey),
}

impl CertKey {
    /// The key of a DER certificate.
    pub fn from_certificate(cert_der: &[u8]) -> Result<CertKey, CertKeyError> {
        use der::{Decode, Encode};
        let cert = x509_cert::Certificate::from_der(cert_der).map_err(CertKeyError::Certificate)?;
        let spki = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(CertKeyError::Certificate)?;
        Self::from_spki(&spki)
    }

    /// The key of a DER SubjectPublicKeyInfo.
    pub fn from_spki(spki: &[u8]) -> Result<CertKey, CertKeyError> {
        use rsa::pkcs8::DecodePublicKey;
        if let Ok(k) = rsa::PublicKey::from_public_key_der(spki) {
            return Ok(CertKey::Rsa(k));
        }
        p256::ecdsa::VerifyingKey::from_public_key_der(spki)
            .map(CertKey::P256)
            .map_err(|_| CertKeyError::UnsupportedKey)
    }

    /// What to hand the card's sign command for `message`: the SHA-256 DigestInfo (RSA) or
    /// the SHA-256 hash (P-256).
    pub fn to_be_signed(&self, message: &[u8]) -> Vec<u8> {
        match self {
            CertKey::Rsa(_) => card_wire::jpki::sha256_digest_info(message),
            CertKey::P256(_) => Sha256::digest(message).to_vec(),
        }
    }

    /// Checks the card's signature over `message`.
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), CertKeyError> {
        let bad = || CertKeyError::BadSignature;
        match self {
            CertKey::Rsa(k) => {
                use rsa::signature::Verifier;
                let s = rsa::pkcs1v15::Signature::try_from(sig).map_err(|_| bad())?;
                rsa::pkcs1v15::VerifyingKey::<Sha256>::new(k.clone())
                    .verify(message, &s)
                    .map_err(|_| bad())
            }
            CertKey::P256(k) => {
                use p256::ecdsa::signature::Verifier;
                let s = p256::ecdsa::Signature::from_slice(sig).map_err(|_| bad())?;
                k.verify(message, &s).map_err(|_| bad())
            }
        }
    }
}
