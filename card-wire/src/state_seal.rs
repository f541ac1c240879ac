//! The TSM's sealing of its own state (the access code and device ticket of an operation,
//! under the TSM's state key, labelled with the operation id). Never used for anything a card
//! opens (that is [`crate::content`]).
//!
//! **Form 2** (what [`seal`] writes): `02 ‖ N ‖ AES-256-GCM(K-aead, N, m, AAD)`, where K-aead
//! is derived from the state key with the SP 800-108 counter KDF (CMAC, label "kagi state
//! aead"), the 12-byte nonce `N` is synthetic — the first 12 bytes of CMAC(K-nonce, label ‖ m)
//! with K-nonce derived likewise ("kagi state nonce"), so no randomness is needed and only the
//! same label and message give the same nonce — and AAD = "kagi state 2" ‖ label binds the
//! operation. The 16-byte tag is checked whole.
//!
//! **Form 1** (read only, for operations stored before): `ct ‖ MAC`, `ct` = AES-CBC(K-enc,
//! IV 0, pad80(m)), `MAC` = the first 8 bytes of CMAC(K-mac, label ‖ ct) with K-enc/K-mac from
//! the labels "kagi content enc" / "kagi content mac" — one CBC key for every operation and a
//! zero IV, which is why it is no longer written. [`open`] takes both.

use crate::scp03::crypto::{Aes, AesKey, CmacKey, kdf_counter_cmac, unpad80};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Why a sealed value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateSealError {
    /// Too short, wrong length, bad padding.
    #[error("sealed content is malformed")]
    Malformed,
    /// The MAC does not verify: altered, or sealed with another key or label.
    #[error("sealed content does not verify: altered, or sealed with another key")]
    BadMac,
}

fn derive(key: &AesKey, label: &[u8]) -> AesKey {
    let mut v = kdf_counter_cmac(&mut CmacKey::new(key), label, &[], key.len());
    let k = AesKey::new(&v).unwrap_or_else(|_| unreachable!());
    v.zeroize();
    k
}

/// The first byte of a form-2 sealed value.
const FORM_2: u8 = 0x02;
const NONCE: usize = 12;
const TAG: usize = 16;

fn aead_key(key: &AesKey) -> Aes256Gcm {
    let mut v = kdf_counter_cmac(&mut CmacKey::new(key), b"kagi state aead", &[], 32);
    let mut k = [0u8; 32];
    k.copy_from_slice(&v[..32]);
    v.zeroize();
    let c = Aes256Gcm::new(&Key::<Aes256Gcm>::from(k));
    k.zeroize();
    c
}

fn aad(label: &[u8]) -> Vec<u8> {
    [b"kagi state 2".as_slice(), label].concat()
}

/// Seals `plaintext` under `key` for `label` (form 2).
pub fn seal(key: &AesKey, label: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let tag = CmacKey::new(&derive(key, b"kagi state nonce")).mac(&[label, plaintext]);
    let mut nonce = [0u8; NONCE];
    nonce.copy_from_slice(&tag[..NONCE]);
    let aad = aad(label);
    // AES-GCM fails only for inputs beyond 2^36 bytes.
    let ct = aead_key(key)
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(1 + NONCE + ct.len());
    out.push(FORM_2);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens a sealed value of either form, checking its tag first.
pub fn open(key: &AesKey, label: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StateSealError> {
    if let [FORM_2, rest @ ..] = sealed
        && rest.len() >= NONCE + TAG
    {
        let (nonce, ct) = rest.split_at(NONCE);
        let mut n = [0u8; NONCE];
        n.copy_from_slice(nonce);
        let aad = aad(label);
        if let Ok(m) = aead_key(key).decrypt(&Nonce::from(n), Payload { msg: ct, aad: &aad }) {
            return Ok(m);
        }
        // A form-1 value may start with 02 too (one in 256): it is tried below.
        if sealed.len() < 24 || !(sealed.len() - 8).is_multiple_of(16) {
            return Err(StateSealError::BadMac);
        }
    }
    open_form_1(key, label, sealed)
}

/// Seals in form 1 (for the tests of stored operations only).
#[cfg(test)]
fn seal_form_1(key: &AesKey, label: &[u8], plaintext: &[u8]) -> Vec<u8> {
    use crate::scp03::crypto::pad80;
    let enc = derive(key, b"kagi content enc");
    let mac = derive(key, b"kagi content mac");
    let mut ct = pad80(plaintext);
    Aes::new(&enc).cbc_encrypt(&[0; 16], &mut ct);
    let tag = CmacKey::new(&mac).mac(&[label, &ct]);
    ct.extend_from_slice(&tag[..8]);
    ct
}

/// Opens a form-1 value, checking its MAC first.
fn open_form_1(key: &AesKey, label: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StateSealError> {
    if sealed.len() < 24 || !(sealed.len() - 8).is_multiple_of(16) {
        return Err(StateSealError::Malformed);
    }
    let (ct, tag) = sealed.split_at(sealed.len() - 8);
    let mac = derive(key, b"kagi content mac");
    let expected = CmacKey::new(&mac).mac(&[label, ct]);
    if !bool::from(expected[..8].ct_eq(tag)) {
        return Err(StateSealError::BadMac);
    }
    let enc = derive(key, b"kagi content enc");
    let mut buf = ct.to_vec();
    Aes::new(&enc).cbc_decrypt(&[0; 16], &mut buf);
    let out = unpad80(&buf)
        .map(|p| p.to_vec())
        .ok_or(StateSealError::Malformed);
    buf.zeroize();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> AesKey {
        AesKey::new(&[b; 16]).unwrap()
    }

    /// A form-1 value as the TSM stored it before form 2 (key 09…09, label "0017", message
    /// "code=1234;ticket=abcd"), written by the form-1 code as it was committed.
    const FORM_1: &str =
        "50AA95C78D9B258F3164AD993617A07B8FA4681664ADCAE9D4FE19E90939FB6E0718B55D117ADD8F";

    #[test]
    fn a_stored_form_1_value_still_opens() {
        let v = hex::decode(FORM_1).unwrap();
        assert_eq!(
            open(&key(9), b"0017", &v).unwrap(),
            b"code=1234;ticket=abcd".to_vec()
        );
        assert_eq!(open(&key(9), b"0018", &v), Err(StateSealError::BadMac));
    }

    #[test]
    fn form_2_is_aead_with_a_synthetic_nonce() {
        let m = b"code=1234;ticket=abcd";
        let a = seal(&key(9), b"0017", m);
        assert_eq!(a[0], 0x02);
        assert_eq!(a.len(), 1 + 12 + m.len() + 16);
        // The same label and message: the same bytes; another label: other bytes.
        assert_eq!(seal(&key(9), b"0017", m), a);
        let b = seal(&key(9), b"0018", m);
        assert_ne!(a[1..13], b[1..13]);
        assert_ne!(a[13..], b[13..]);
        // Not the form-1 bytes, and no CBC block of the message in clear or repeated.
        assert_ne!(a, seal_form_1(&key(9), b"0017", m));
    }

    proptest! {
        #[test]
        fn seal_open_and_tamper(m in prop::collection::vec(any::<u8>(), 0..300), i in any::<prop::sample::Index>()) {
            let k = key(9);
            let s = seal(&k, b"0017", &m);
            prop_assert_eq!(open(&k, b"0017", &s).unwrap(), m.clone());
            prop_assert_eq!(open(&k, b"001A", &s), Err(StateSealError::BadMac));
            let mut t = s.clone();
            let n = i.index(t.len());
            t[n] ^= 1;
            prop_assert!(open(&k, b"0017", &t).is_err());
            prop_assert!(open(&key(8), b"0017", &s).is_err());
            prop_assert!(open(&k, b"0017", &s[..n]).is_err());
        }

        #[test]
        fn form_1_values_open_and_refuse_tampering(m in prop::collection::vec(any::<u8>(), 0..300), i in any::<prop::sample::Index>()) {
            let k = key(9);
            let s = seal_form_1(&k, b"0017", &m);
            prop_assert_eq!(open(&k, b"0017", &s).unwrap(), m);
            prop_assert_eq!(open(&k, b"001A", &s), Err(StateSealError::BadMac));
            let mut t = s.clone();
            let n = i.index(t.len());
            t[n] ^= 1;
            prop_assert!(open(&k, b"0017", &t).is_err());
            prop_assert!(open(&k, b"0017", &s[..n]).is_err());
        }

        #[test]
        fn any_bytes_open_or_refuse(b in prop::collection::vec(any::<u8>(), 0..120)) {
            prop_assert!(open(&key(9), b"0017", &b).is_err());
        }
    }
}
