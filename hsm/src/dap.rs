//! DAP signing with a private key that stays in the HSM: RSA (`CKM_SHA256_RSA_PKCS` or
//! `CKM_SHA1_RSA_PKCS`) or ECDSA P-256 (`CKM_ECDSA` over the SHA-256 computed here — SoftHSM2
//! has no `CKM_ECDSA_SHA256` — whose output is already `r ‖ s`).
//! The key pair is found by label: the private key signs, the public key object gives what
//! the verifying security domain needs.

use super::{Error, Result, hsm, session};
use card_wire::dap::{DapPublicKey, DapSigner};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use std::path::Path;

/// A DAP key pair in a PKCS#11 token.
pub struct HsmDapKey {
    session: Session,
    private: ObjectHandle,
    public: DapPublicKey,
    mechanism: Mechanism<'static>,
}

fn one(session: &Session, class: ObjectClass, label: &str) -> Result<ObjectHandle> {
    let found = session
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(|e| hsm("C_FindObjects", e))?;
    match found.as_slice() {
        [h] => Ok(*h),
        [] => Err(Error::Hsm(format!(
            "no {class} labelled '{label}' in the token: create the DAP key pair there (e.g. \
             pkcs11-tool --keypairgen --key-type EC:prime256v1 --label {label})"
        ))),
        _ => Err(Error::Hsm(format!(
            "{} objects of class {class} are labelled '{label}': give the DAP key a unique label",
            found.len()
        ))),
    }
}

fn attribute(session: &Session, h: ObjectHandle, t: AttributeType) -> Result<Vec<u8>> {
    let attrs = session
        .get_attributes(h, &[t])
        .map_err(|e| hsm("C_GetAttributeValue", e))?;
    attrs
        .into_iter()
        .find_map(|a| match a {
            Attribute::Modulus(v) | Attribute::PublicExponent(v) | Attribute::EcPoint(v) => Some(v),
            _ => None,
        })
        .ok_or_else(|| Error::Hsm(format!("the public key has no {t}")))
}

impl HsmDapKey {
    /// Opens the key pair labelled `label` in token `token` of `module`. `sha1`: RSA
    /// signatures with SHA-1 instead of SHA-256 (ignored for P-256).
    pub fn open(module: &Path, token: &str, pin: &str, label: &str, sha1: bool) -> Result<Self> {
        let (_, _, session) = session(module, token, pin, false)?;
        let private = one(&session, ObjectClass::PRIVATE_KEY, label)?;
        let public_h = one(&session, ObjectClass::PUBLIC_KEY, label)?;
        let key_type = session
            .get_attributes(public_h, &[AttributeType::KeyType])
            .map_err(|e| hsm("C_GetAttributeValue", e))?
            .into_iter()
            .find_map(|a| match a {
                Attribute::KeyType(k) => Some(k),
                _ => None,
            });
        let (public, mechanism) = match key_type {
            Some(KeyType::RSA) => (
                DapPublicKey::Rsa {
                    n: attribute(&session, public_h, AttributeType::Modulus)?,
                    e: attribute(&session, public_h, AttributeType::PublicExponent)?,
                },
                if sha1 {
                    Mechanism::Sha1RsaPkcs
                } else {
                    Mechanism::Sha256RsaPkcs
                },
            ),
            Some(KeyType::EC) => {
                // CKA_EC_POINT is the DER OCTET STRING around the uncompressed point.
                let der = attribute(&session, public_h, AttributeType::EcPoint)?;
                let point = match der.as_slice() {
                    [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest.to_vec(),
                    raw if raw.len() == 65 && raw[0] == 0x04 => raw.to_vec(),
                    _ => {
                        return Err(Error::Hsm(format!(
                            "the EC key '{label}' is not an uncompressed P-256 point \
                             (DAP supports P-256)"
                        )));
                    }
                };
                (DapPublicKey::P256(point), Mechanism::Ecdsa)
            }
            other => {
                return Err(Error::Hsm(format!(
                    "the key '{label}' has type {other:?}: a DAP key is RSA or EC P-256"
                )));
            }
        };
        Ok(HsmDapKey {
            session,
            private,
            public,
            mechanism,
        })
    }
}

impl DapSigner for HsmDapKey {
    fn sign(&self, dtbs: &[u8]) -> core::result::Result<Vec<u8>, String> {
        let digest;
        let data = if matches!(self.mechanism, Mechanism::Ecdsa) {
            use sha2::Digest;
            digest = sha2::Sha256::digest(dtbs);
            digest.as_slice()
        } else {
            dtbs
        };
        self.session
            .sign(&self.mechanism, self.private, data)
            .map_err(|e| format!("HSM DAP signature (C_Sign): {e}"))
    }

    fn public_key(&self) -> core::result::Result<DapPublicKey, String> {
        Ok(self.public.clone())
    }
}
