//! Envelope encryption of the per-service credentials: each record is encrypted (AES-256-GCM)
//! with a data key of its own, and the data key is wrapped by a key-encryption key (KEK) that
//! lives in an HSM. The database holds only wrapped data keys and ciphertexts: copied files
//! reveal nothing without the HSM. The additional data binds a record to its row (card,
//! service, version), so a ciphertext moved to another row does not open.
//!
//! [`Envelope`] is the seam. A store only wraps and unwraps 32-byte data keys with its KEKs;
//! sealing, opening and re-wrapping records are the same everywhere (provided methods). The
//! HSM store (`kagi_hsm::HsmEnvelope`, PKCS#11) wraps with `CKM_AES_GCM` inside the token,
//! where the KEKs are non-extractable; a data key is random, exists in host memory only while
//! its record is sealed or opened (zeroized after), and is never stored unwrapped. Re-wrapping
//! a record under a new KEK touches only its data key: the credential itself stays encrypted.
//! Under a KEK that may wrap keys, the HSM store keeps credentials inside the token instead
//! (records of the in-store form, [`FORM_IN_STORE`]: generated, wrapped and used there;
//! [`Envelope::generate`], [`Envelope::use_key`]); records of the data-key form still open.
//! The development store (`broker_server::FileEnvelope`) keeps its KEKs in files, and says so.
//!
//! The trait lives here, apart from the broker server, so a key store can implement it
//! without depending on a server.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use zeroize::Zeroizing;

/// A sealed record as the database keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRecord {
    /// The KEK that wraps the data key.
    pub kek: String,
    /// The wrapped data key.
    pub wrapped_dek: Vec<u8>,
    /// The record's GCM nonce (12 bytes).
    pub nonce: Vec<u8>,
    /// The ciphertext with its tag.
    pub ciphertext: Vec<u8>,
}

/// The form of a record whose credential is wrapped directly under the KEK (by a store
/// that uses credentials only inside itself, [`Envelope::generate`]): its `nonce` is empty
/// (a record of the data-key form always has a 12-byte nonce), `wrapped_dek` is
/// `[FORM_IN_STORE, kind, binding…]` and `ciphertext` is the wrapped credential.
pub const FORM_IN_STORE: u8 = 2;

impl SealedRecord {
    /// The credential's kind if the record is of the in-store form, `None` for a record of
    /// the data-key form (its credential is opened in memory).
    pub fn in_store_kind(&self) -> Option<KeyKind> {
        if !self.nonce.is_empty() {
            return None;
        }
        match self.wrapped_dek.as_slice() {
            [FORM_IN_STORE, k, ..] => KeyKind::from_byte(*k),
            _ => None,
        }
    }
}

/// The kinds of credential a key store generates and uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A 16-byte AES key (CMAC), shared with the service.
    Aes128,
    /// A P-256 private key (ECDSA with SHA-256).
    P256,
    /// An RSA-2048 private key (PKCS#1 v1.5 with SHA-256).
    Rsa2048,
}

impl KeyKind {
    /// The kind's byte in a record of the in-store form.
    pub fn byte(self) -> u8 {
        match self {
            KeyKind::Aes128 => 1,
            KeyKind::P256 => 2,
            KeyKind::Rsa2048 => 3,
        }
    }
    /// The kind a record's byte names.
    pub fn from_byte(b: u8) -> Option<KeyKind> {
        match b {
            1 => Some(KeyKind::Aes128),
            2 => Some(KeyKind::P256),
            3 => Some(KeyKind::Rsa2048),
            _ => None,
        }
    }
}

/// A credential generated inside a key store and sealed there.
pub struct Generated {
    /// The sealed record (in-store form).
    pub record: SealedRecord,
    /// The public key as a DER SubjectPublicKeyInfo (signature kinds).
    pub public_key: Option<Vec<u8>>,
    /// The AES key for the service (it shares it by design; never kept by the broker).
    pub shared: Option<Zeroizing<Vec<u8>>>,
}

/// A use of a credential inside the key store: the message is the service's challenge.
#[derive(Debug, Clone, Copy)]
pub enum KeyUse<'a> {
    /// AES-CMAC of the message.
    Cmac(&'a [u8]),
    /// ECDSA P-256 over SHA-256 of the message (r ‖ s, 64 bytes).
    EcdsaSha256(&'a [u8]),
    /// RSASSA-PKCS1-v1_5 with SHA-256 of the message.
    RsaSha256(&'a [u8]),
}

/// Why a record could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key store: {0}")]
pub struct EnvelopeError(pub String);

/// Where the key-encryption keys are and what can be done with them.
pub trait Envelope: Send + Sync {
    /// The KEKs this store holds.
    fn keks(&self) -> Vec<String>;
    /// Wraps a data key with the KEK `kek` (the KEK's id is bound into the wrapping, so a
    /// wrapped key relabelled with another KEK does not unwrap).
    fn wrap_dek(&self, kek: &str, dek: &[u8]) -> Result<Vec<u8>, EnvelopeError>;
    /// Unwraps a data key wrapped by [`Envelope::wrap_dek`].
    fn unwrap_dek(&self, kek: &str, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError>;
    /// What the store is, for logs (never key material).
    fn describe(&self) -> String;
    /// Looks for KEKs added since the store was opened (a KEK made for a rotation while the
    /// broker runs). Stores also do this themselves when asked for a KEK they do not know.
    fn refresh(&self) -> Result<(), EnvelopeError> {
        Ok(())
    }

    /// Generates a credential of `kind` inside the store and seals it under `kek` bound to
    /// `aad`, or `None` if this store (or this KEK) does not keep credentials inside: the
    /// caller then generates it itself and [`Envelope::seal`]s it.
    fn generate(
        &self,
        _kek: &str,
        _aad: &[u8],
        _kind: KeyKind,
    ) -> Result<Option<Generated>, EnvelopeError> {
        Ok(None)
    }

    /// Uses a record's credential inside the store, or `None` if the record is not of the
    /// in-store form (the caller then opens it and uses it itself).
    fn use_key(
        &self,
        _aad: &[u8],
        _record: &SealedRecord,
        _use: KeyUse<'_>,
    ) -> Result<Option<Vec<u8>>, EnvelopeError> {
        Ok(None)
    }

    /// Whether records of the in-store form can be moved under the KEK `kek` (it may wrap
    /// and unwrap keys). Stores without that form have no such records: `true`.
    fn holds_inside(&self, _kek: &str) -> Result<bool, EnvelopeError> {
        Ok(true)
    }

    /// Whether a KEK rotation to `kek` converts records of the data-key form to the in-store
    /// form ([`Envelope::convert_row`]). Stores without that form: `false`.
    fn converts_to(&self, _kek: &str) -> Result<bool, EnvelopeError> {
        Ok(false)
    }

    /// Converts the record of the row `aad`, of the data-key form, to the in-store form
    /// under the KEK `to`: its credential (of `kind`) is taken into the store and from then
    /// on used only there. `None` if this store (or `to`) does not keep credentials inside,
    /// or the record is already of the in-store form.
    fn convert_row(
        &self,
        _aad: &[u8],
        _record: &SealedRecord,
        _to: &str,
        _kind: KeyKind,
    ) -> Result<Option<SealedRecord>, EnvelopeError> {
        Ok(None)
    }

    /// The AES key shared with a service (asked for again at a repeated enrolment).
    fn shared_secret(
        &self,
        aad: &[u8],
        record: &SealedRecord,
    ) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        self.open(aad, record)
    }

    /// Checks that a record opens (its plaintext, if it comes into memory, is dropped at once).
    fn check(&self, aad: &[u8], record: &SealedRecord) -> Result<(), EnvelopeError> {
        self.open(aad, record).map(drop)
    }

    /// Re-wraps the record of the row `aad` under the KEK `to` (a store whose records are
    /// bound to their rows under the KEK needs the row).
    fn rewrap_row(
        &self,
        _aad: &[u8],
        record: &SealedRecord,
        to: &str,
    ) -> Result<SealedRecord, EnvelopeError> {
        self.rewrap(record, to)
    }

    /// Seals `plaintext` under a new data key wrapped by the KEK `kek`.
    fn seal(&self, kek: &str, aad: &[u8], plaintext: &[u8]) -> Result<SealedRecord, EnvelopeError> {
        let dek = random::<32>()?;
        let (nonce, ciphertext) = gcm_seal(dek.as_ref(), aad, plaintext)?;
        Ok(SealedRecord {
            kek: kek.into(),
            wrapped_dek: self.wrap_dek(kek, dek.as_ref())?,
            nonce,
            ciphertext,
        })
    }

    /// Opens a record (its plaintext exists in memory only as long as the caller keeps it).
    fn open(&self, aad: &[u8], record: &SealedRecord) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        if record.in_store_kind().is_some() {
            return Err(e(
                "this record's credential is kept inside the HSM: it is used there, never opened (open the broker with its HSM key store)",
            ));
        }
        let dek = self.unwrap_dek(&record.kek, &record.wrapped_dek)?;
        gcm_open(&dek, aad, &record.nonce, &record.ciphertext)
    }

    /// Re-wraps a record's data key under the KEK `to`; the ciphertext stays as it is.
    fn rewrap(&self, record: &SealedRecord, to: &str) -> Result<SealedRecord, EnvelopeError> {
        let dek = self.unwrap_dek(&record.kek, &record.wrapped_dek)?;
        Ok(SealedRecord {
            kek: to.into(),
            wrapped_dek: self.wrap_dek(to, &dek)?,
            nonce: record.nonce.clone(),
            ciphertext: record.ciphertext.clone(),
        })
    }
}

fn e(what: &str) -> EnvelopeError {
    EnvelopeError(what.into())
}

/// Random bytes.
pub fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, EnvelopeError> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::fill(b.as_mut()).map_err(|x| EnvelopeError(x.to_string()))?;
    Ok(b)
}

/// AES-256-GCM encryption with a random 12-byte nonce: (nonce, ciphertext ‖ tag).
pub fn gcm_seal(
    key: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), EnvelopeError> {
    let key = Key::<Aes256Gcm>::try_from(key).map_err(|_| e("a data key is not 32 bytes"))?;
    let cipher = Aes256Gcm::new(&key);
    let n = random::<12>()?;
    let nonce = Nonce::try_from(&n[..]).map_err(|_| e("nonce"))?;
    let ct = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| e("encryption failed"))?;
    Ok((n.to_vec(), ct))
}

/// The inverse of [`gcm_seal`]; a wrong key, nonce, AAD or ciphertext is refused.
pub fn gcm_open(
    key: &[u8],
    aad: &[u8],
    nonce: &[u8],
    ct: &[u8],
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let (Ok(key), Ok(nonce)) = (Key::<Aes256Gcm>::try_from(key), Nonce::try_from(nonce)) else {
        return Err(e("malformed record"));
    };
    let cipher = Aes256Gcm::new(&key);
    cipher
        .decrypt(&nonce, Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| e("the record does not open: altered, moved, or another key"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A store that wraps data keys with a fixed software key (enough to reach `open`).
    struct Soft;
    impl Envelope for Soft {
        fn keks(&self) -> Vec<String> {
            vec!["k".into()]
        }
        fn wrap_dek(&self, kek: &str, dek: &[u8]) -> Result<Vec<u8>, EnvelopeError> {
            let (n, ct) = gcm_seal(&[7u8; 32], kek.as_bytes(), dek)?;
            Ok([n, ct].concat())
        }
        fn unwrap_dek(&self, kek: &str, w: &[u8]) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
            if w.len() < 12 {
                return Err(e("malformed wrapped key"));
            }
            gcm_open(&[7u8; 32], kek.as_bytes(), &w[..12], &w[12..])
        }
        fn describe(&self) -> String {
            "test".into()
        }
    }

    #[test]
    fn the_two_record_forms_are_told_apart() {
        let old = Soft.seal("k", b"row", b"secret").unwrap();
        assert_eq!(old.in_store_kind(), None);
        assert_eq!(Soft.open(b"row", &old).unwrap().as_slice(), b"secret");
        // Form 2, kind 2 (P-256): never opened in memory, with a message saying why.
        let inside = SealedRecord {
            kek: "k".into(),
            wrapped_dek: [&[2u8, 2][..], &[0u8; 28]].concat(),
            nonce: Vec::new(),
            ciphertext: vec![0; 40],
        };
        assert_eq!(inside.in_store_kind(), Some(KeyKind::P256));
        let err = Soft.open(b"row", &inside).unwrap_err();
        assert!(err.to_string().contains("inside the HSM"), "{err}");
        // A default store does not use or generate inside: the caller falls back.
        assert_eq!(
            Soft.use_key(b"row", &inside, KeyUse::Cmac(b"c")).unwrap(),
            None
        );
        assert!(
            Soft.generate("k", b"row", KeyKind::Aes128)
                .unwrap()
                .is_none()
        );
        // An unknown kind byte is not the in-store form.
        let mut unknown = inside.clone();
        unknown.wrapped_dek[1] = 9;
        assert_eq!(unknown.in_store_kind(), None);
    }

    proptest! {
        /// Any stored bytes: the form is read without a panic, and opening fails cleanly.
        #[test]
        fn any_record_bytes_are_refused_cleanly(
            wrapped in proptest::collection::vec(any::<u8>(), 0..64),
            nonce in proptest::collection::vec(any::<u8>(), 0..16),
            ct in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let r = SealedRecord { kek: "k".into(), wrapped_dek: wrapped, nonce, ciphertext: ct };
            let kind = r.in_store_kind();
            prop_assert!(kind.is_none() || r.nonce.is_empty());
            prop_assert!(Soft.open(b"row", &r).is_err());
        }
    }
}
