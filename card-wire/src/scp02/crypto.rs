//! The SCP02 primitives over RustCrypto `des`: two-key triple DES (ECB and CBC), the full
//! triple-DES MAC (ISO/IEC 9797-1 algorithm 1 with 3DES), the "retail" MAC (algorithm 3: single
//! DES chaining, triple DES on the last block), ISO/IEC 9797-1 method 2 padding to 8 bytes and
//! key check values.

use cbc::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use core::fmt;
use des::{Des, TdesEde2};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Why bytes are not a usable SCP02 key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DesKeyError {
    /// SCP02 keys are two-key triple DES keys of 16 bytes.
    #[error(
        "an SCP02 (3DES) key must be 16 bytes, got {0}; AES keys of 24 or 32 bytes are SCP03 keys"
    )]
    Length(usize),
    /// Text that is not hexadecimal.
    #[error("key text is not hexadecimal: {0}")]
    Hex(String),
}

/// A two-key triple-DES key (K1 ‖ K2, 16 bytes), zeroized on drop. `Debug` never shows it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Des3Key(pub(crate) [u8; 16]);

impl Des3Key {
    /// A key from 16 bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, DesKeyError> {
        let arr: [u8; 16] = bytes
            .try_into()
            .map_err(|_| DesKeyError::Length(bytes.len()))?;
        Ok(Des3Key(arr))
    }

    /// A key from hexadecimal text (spaces allowed).
    pub fn from_hex(text: &str) -> Result<Self, DesKeyError> {
        let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let mut bytes = hex::decode(&clean).map_err(|e| DesKeyError::Hex(e.to_string()))?;
        let k = Self::new(&bytes);
        bytes.zeroize();
        k
    }

    /// The key bytes (for encryption under a DEK only; never log them).
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The key check value: the first 3 bytes of 3DES-ECB of eight zero bytes.
    pub fn kcv(&self) -> [u8; 3] {
        let mut b = [0u8; 8];
        Tdes::new(self).encrypt_block(&mut b);
        [b[0], b[1], b[2]]
    }
}

impl PartialEq for Des3Key {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }
}
impl Eq for Des3Key {}

impl fmt::Debug for Des3Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Des3Key(<redacted>)")
    }
}

/// An expanded two-key triple-DES key (the schedule zeroizes itself on drop).
#[derive(Clone)]
pub struct Tdes(TdesEde2);

impl Tdes {
    /// Expands a key.
    pub fn new(key: &Des3Key) -> Self {
        Tdes(TdesEde2::new(key.as_bytes().into()))
    }

    /// 3DES-ECB encryption of one block in place.
    pub fn encrypt_block(&self, block: &mut [u8; 8]) {
        self.0.encrypt_block(block.into());
    }

    /// 3DES-ECB decryption of one block in place.
    pub fn decrypt_block(&self, block: &mut [u8; 8]) {
        self.0.decrypt_block(block.into());
    }

    /// 3DES-ECB encryption in place; the length must be a multiple of 8 (no padding added).
    pub fn ecb_encrypt(&self, data: &mut [u8]) {
        for b in data.as_chunks_mut::<8>().0 {
            self.encrypt_block(b);
        }
    }

    /// 3DES-ECB decryption in place; the length must be a multiple of 8.
    pub fn ecb_decrypt(&self, data: &mut [u8]) {
        for b in data.as_chunks_mut::<8>().0 {
            self.decrypt_block(b);
        }
    }

    /// 3DES-CBC encryption in place; the length must be a multiple of 8.
    pub fn cbc_encrypt(&self, iv: &[u8; 8], data: &mut [u8]) {
        let mut prev = *iv;
        for b in data.as_chunks_mut::<8>().0 {
            xor(b, &prev);
            self.encrypt_block(b);
            prev = *b;
        }
    }

    /// 3DES-CBC decryption in place; the length must be a multiple of 8.
    pub fn cbc_decrypt(&self, iv: &[u8; 8], data: &mut [u8]) {
        let mut prev = *iv;
        for b in data.as_chunks_mut::<8>().0 {
            let ct = *b;
            self.decrypt_block(b);
            xor(b, &prev);
            prev = ct;
        }
    }
}

fn xor(a: &mut [u8; 8], b: &[u8; 8]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// Single-DES ECB encryption of one block under the first half (K1) of `key`: how SCP02
/// encrypts the C-MAC chaining value when `i` asks for ICV encryption.
pub fn des_encrypt_k1(key: &Des3Key, block: &mut [u8; 8]) {
    let k1: &[u8; 8] = key.as_bytes()[..8].try_into().unwrap_or(&[0; 8]);
    Des::new(k1.into()).encrypt_block(block.into());
}

/// ISO/IEC 9797-1 padding method 2 to a multiple of 8 (always adds 1 to 8 bytes).
pub fn pad80(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 8);
    v.extend_from_slice(data);
    v.push(0x80);
    while v.len() % 8 != 0 {
        v.push(0);
    }
    v
}

/// Removes ISO/IEC 9797-1 method 2 padding of an 8-byte-block string; `None` when malformed.
pub fn unpad80(data: &[u8]) -> Option<&[u8]> {
    if data.is_empty() || !data.len().is_multiple_of(8) {
        return None;
    }
    let pos = data.iter().rposition(|b| *b != 0)?;
    if data[pos] != 0x80 || data.len() - pos > 8 {
        return None;
    }
    Some(&data[..pos])
}

/// The full triple-DES MAC (ISO/IEC 9797-1 MAC algorithm 1 with 3DES, method 2 padding, zero
/// IV): SCP02's card and host cryptograms.
pub fn full_mac(key: &Des3Key, data: &[u8]) -> [u8; 8] {
    let mut buf = pad80(data);
    Tdes::new(key).cbc_encrypt(&[0; 8], &mut buf);
    let n = buf.len();
    let mut out = [0u8; 8];
    out.copy_from_slice(&buf[n - 8..]);
    buf.zeroize();
    out
}

/// The retail MAC (ISO/IEC 9797-1 MAC algorithm 3, method 2 padding): single-DES CBC under
/// K1 from `icv`, then the last block decrypted under K2 and encrypted under K1 again. SCP02's
/// C-MAC and R-MAC.
pub fn retail_mac(key: &Des3Key, icv: &[u8; 8], data: &[u8]) -> [u8; 8] {
    let k = key.as_bytes();
    let k1: &[u8; 8] = k[..8].try_into().unwrap_or(&[0; 8]);
    let k2: &[u8; 8] = k[8..].try_into().unwrap_or(&[0; 8]);
    let d1 = Des::new(k1.into());
    let d2 = Des::new(k2.into());
    let buf = pad80(data);
    let mut h = *icv;
    for b in buf.as_chunks::<8>().0 {
        xor(&mut h, b);
        d1.encrypt_block((&mut h).into());
    }
    d2.decrypt_block((&mut h).into());
    d1.encrypt_block((&mut h).into());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_roundtrip_and_rejects() {
        for n in 0..20 {
            let d: Vec<u8> = (0..n as u8).collect();
            let p = pad80(&d);
            assert!(p.len().is_multiple_of(8) && p.len() > d.len());
            assert_eq!(unpad80(&p), Some(&d[..]));
        }
        assert_eq!(unpad80(&[0; 8]), None);
        assert_eq!(unpad80(&[1, 2, 3]), None);
        assert_eq!(
            unpad80(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
    }

    #[test]
    fn key_lengths_are_checked() {
        assert_eq!(Des3Key::new(&[0; 24]), Err(DesKeyError::Length(24)));
        assert!(Des3Key::from_hex("zz").is_err());
        assert!(!format!("{:?}", Des3Key::new(&[7; 16]).unwrap()).contains("07"));
    }
}
