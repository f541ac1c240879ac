//! DAP signing on the host (GP Card Specification §9.2.1): a DAP key from a PEM file (RSA or
//! P-256; PKCS#8, PKCS#1 or SEC1), the public key a security domain needs, and the DAP
//! blocks of a load. PKCS#11 keys implement the same [`DapSigner`] in `kagi-hsm`. Keys from
//! PEM files (`DapKey`, `public_key_from_pem`) need the `dap-keys` feature.

use crate::error::{Error, Result};
pub use card_wire::dap::{DapPublicKey, DapSigner};
#[cfg(feature = "dap-keys")]
use std::path::Path;

/// The digest of an RSA DAP signature (PKCS#1 v1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RsaDigest {
    /// SHA-1 (older cards).
    Sha1,
    /// SHA-256.
    #[default]
    Sha256,
}

impl std::str::FromStr for RsaDigest {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" | "sha-1" => Ok(RsaDigest::Sha1),
            "sha256" | "sha-256" => Ok(RsaDigest::Sha256),
            other => Err(format!(
                "DAP digest '{other}': use sha1 or sha256 (RSA keys; P-256 always uses SHA-256)"
            )),
        }
    }
}

/// A DAP private key held in memory.
#[cfg(feature = "dap-keys")]
pub enum DapKey {
    /// RSA, PKCS#1 v1.5 with `digest`.
    Rsa {
        /// The key.
        key: Box<rsa::PrivateKey>,
        /// The signature's digest.
        digest: RsaDigest,
    },
    /// ECDSA P-256 with SHA-256.
    P256(p256::ecdsa::SigningKey),
}

#[cfg(feature = "dap-keys")]
impl DapKey {
    /// A key from PEM text: PKCS#8 (`PRIVATE KEY`, RSA or P-256), PKCS#1 (`RSA PRIVATE
    /// KEY`) or SEC1 (`EC PRIVATE KEY`).
    pub fn from_pem(pem: &str, digest: RsaDigest) -> Result<DapKey> {
        use p256::pkcs8::DecodePrivateKey;
        use rsa::pkcs1::DecodeRsaPrivateKey;
        if let Ok(k) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(DapKey::P256(k));
        }
        if let Ok(k) = p256::SecretKey::from_sec1_pem(pem) {
            return Ok(DapKey::P256(k.into()));
        }
        let rsa = rsa::PrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::PrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| {
                Error::Keys(
                    "the DAP key is neither an RSA nor a P-256 private key in PEM (PKCS#8, PKCS#1 \
                     or SEC1): convert it with `openssl pkcs8 -topk8 -nocrypt`"
                        .into(),
                )
            })?;
        Ok(DapKey::Rsa {
            key: Box::new(rsa),
            digest,
        })
    }

    /// A key from a PEM file; warns on stderr when others can read it.
    pub fn from_file(path: &Path, digest: RsaDigest) -> Result<DapKey> {
        let text = crate::keys::read_secret_file(path, "DAP key file")?;
        DapKey::from_pem(&text, digest)
    }
}

#[cfg(feature = "dap-keys")]
impl DapSigner for DapKey {
    fn sign(&self, dtbs: &[u8]) -> std::result::Result<Vec<u8>, String> {
        use rsa::signature::{SignatureEncoding, Signer};
        match self {
            DapKey::Rsa { key, digest } => {
                let k = (**key).clone();
                let sig = match digest {
                    RsaDigest::Sha1 => rsa::pkcs1v15::SigningKey::<sha1::Sha1>::new(k)
                        .try_sign(dtbs)
                        .map(|s| s.to_vec()),
                    RsaDigest::Sha256 => rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(k)
                        .try_sign(dtbs)
                        .map(|s| s.to_vec()),
                };
                sig.map_err(|e| format!("RSA DAP signature: {e}"))
            }
            DapKey::P256(k) => {
                let sig: p256::ecdsa::Signature = k
                    .try_sign(dtbs)
                    .map_err(|e| format!("ECDSA DAP signature: {e}"))?;
                Ok(sig.to_bytes().to_vec())
            }
        }
    }

    fn public_key(&self) -> std::result::Result<DapPublicKey, String> {
        use rsa::traits::PublicKeyParts;
        Ok(match self {
            DapKey::Rsa { key, .. } => DapPublicKey::Rsa {
                n: key.n_bytes().to_vec(),
                e: key.e_bytes().to_vec(),
            },
            DapKey::P256(k) => {
                DapPublicKey::P256(k.verifying_key().to_sec1_point(false).as_bytes().to_vec())
            }
        })
    }
}

/// A DAP public key from PEM: a SubjectPublicKeyInfo (`PUBLIC KEY`, RSA or P-256), or a
/// private key (its public half).
#[cfg(feature = "dap-keys")]
pub fn public_key_from_pem(pem: &str) -> Result<DapPublicKey> {
    use p256::pkcs8::DecodePublicKey;
    if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Ok(DapPublicKey::P256(
            k.to_sec1_point(false).as_bytes().to_vec(),
        ));
    }
    if let Ok(k) = rsa::PublicKey::from_public_key_pem(pem) {
        use rsa::traits::PublicKeyParts;
        return Ok(DapPublicKey::Rsa {
            n: k.n_bytes().to_vec(),
            e: k.e_bytes().to_vec(),
        });
    }
    DapKey::from_pem(pem, RsaDigest::Sha256)?
        .public_key()
        .map_err(Error::Keys)
}

/// The DAP block of `sd` for a load file whose data block hash is `hash`.
pub fn dap_block(sd: &[u8], signer: &dyn DapSigner, hash: &[u8]) -> Result<Vec<u8>> {
    if hash.is_empty() {
        return Err(Error::Keys(
            "a DAP signs the load file data block hash: load with --hash sha256 or sha1, not none"
                .into(),
        ));
    }
    let sig = signer.sign(hash).map_err(Error::Keys)?;
    Ok(card_wire::dap::dap_block(sd, &sig))
}
