//! The TSM's sealing of its own state (the access code and device ticket of an operation,
//! under the TSM's state key, labelled with the operation id) — the symmetric layer that was
//! `content` before content protection moved to per-card ECDH ([`crate::content`]). Kept
//! byte for byte so that operations already stored still open; never used for anything a card
//! opens.
//!
//! `seal(K, label, m)` = `ct ‖ MAC`, where `ct` = AES-CBC(K-enc, IV 0, pad80(m)) and `MAC` =
//! the first 8 bytes of CMAC(K-mac, label ‖ ct); K-enc and K-mac are derived from K with the
//! SP 800-108 counter KDF (CMAC) and the labels "kagi content enc" / "kagi content mac". Every
//! label is a fresh operation id, so no two sealed values share a key and label.

use crate::scp03::crypto::{Aes, AesKey, CmacKey, kdf_counter_cmac, pad80, unpad80};
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

/// Seals `plaintext` under `key` for `label`.
pub fn seal(key: &AesKey, label: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let enc = derive(key, b"kagi content enc");
    let mac = derive(key, b"kagi content mac");
    let mut ct = pad80(plaintext);
    Aes::new(&enc).cbc_encrypt(&[0; 16], &mut ct);
    let tag = CmacKey::new(&mac).mac(&[label, &ct]);
    ct.extend_from_slice(&tag[..8]);
    ct
}

/// Opens a sealed value, checking its MAC first.
pub fn open(key: &AesKey, label: &[u8], sealed: &[u8]) -> Result<Vec<u8>, StateSealError> {
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

    proptest! {
        #[test]
        fn seal_open_and_tamper(m in prop::collection::vec(any::<u8>(), 0..300), i in any::<prop::sample::Index>()) {
            let k = AesKey::new(&[9; 16]).unwrap();
            let s = seal(&k, b"0017", &m);
            prop_assert_eq!(open(&k, b"0017", &s).unwrap(), m);
            prop_assert_eq!(open(&k, b"001A", &s), Err(StateSealError::BadMac));
            let mut t = s.clone();
            let n = i.index(t.len());
            t[n] ^= 1;
            prop_assert!(open(&k, b"0017", &t).is_err());
            prop_assert!(open(&AesKey::new(&[8; 16]).unwrap(), b"0017", &s).is_err());
            // Any truncation is refused: a length that cannot be ct ‖ tag is malformed; one
            // that can (cut by a multiple of 16) takes its tag from the ciphertext and fails
            // the MAC.
            let cut = &s[..n];
            let expected = if cut.len() < 24 || !(cut.len() - 8).is_multiple_of(16) {
                StateSealError::Malformed
            } else {
                StateSealError::BadMac
            };
            prop_assert_eq!(open(&k, b"0017", cut), Err(expected));
        }
    }
}
