//! The public key of a card's certificate, to check signatures made on the card: the TSM's
//! key proof in an execution receipt, the broker's card login.

use sha2::{Digest, Sha256};

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
    pub fn from_certificate(cert_der: &[u8]) -> Result<CertKey, String> {
        use der::{Decode, Encode};
        let cert =
            x509_cert::Certificate::from_der(cert_der).map_err(|e| format!("certificate: {e}"))?;
        let spki = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| format!("certificate: {e}"))?;
        Self::from_spki(&spki)
    }

    /// The key of a DER SubjectPublicKeyInfo.
    pub fn from_spki(spki: &[u8]) -> Result<CertKey, String> {
        use rsa::pkcs8::DecodePublicKey;
        if let Ok(k) = rsa::PublicKey::from_public_key_der(spki) {
            return Ok(CertKey::Rsa(k));
        }
        p256::ecdsa::VerifyingKey::from_public_key_der(spki)
            .map(CertKey::P256)
            .map_err(|_| "the key is neither RSA nor P-256".into())
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
    pub fn verify(&self, message: &[u8], sig: &[u8]) -> Result<(), String> {
        let bad = || "the card's signature does not verify against the certificate".to_string();
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
