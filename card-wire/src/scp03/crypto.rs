//! The SCP03 primitives over RustCrypto: AES (128/192/256) block and CBC operations, AES-CMAC,
//! the SP 800-108 counter-mode KDF in GlobalPlatform's layout, ISO 9797-1 method 2 padding and
//! key check values.

use aes::{Aes128, Aes192, Aes256};
use cbc::cipher::{
    BlockCipherDecrypt, BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, InnerIvInit,
    KeyInit,
};
use cmac::{Cmac, Mac};
use core::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Why bytes are not a usable key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// AES keys are 16, 24 or 32 bytes.
    #[error("an AES key must be 16, 24 or 32 bytes, got {0}")]
    Length(usize),
    /// The keys of one key set must have the same length.
    #[error("the ENC, MAC and DEK keys of a key set must have the same length")]
    MixedLengths,
    /// Text that is not hexadecimal.
    #[error("key text is not hexadecimal: {0}")]
    Hex(String),
}

/// An AES key of 128, 192 or 256 bits, zeroized on drop. `Debug` never shows key bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AesKey {
    bytes: [u8; 32],
    len: u8,
}

impl AesKey {
    /// A key from 16, 24 or 32 bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, KeyError> {
        if !matches!(bytes.len(), 16 | 24 | 32) {
            return Err(KeyError::Length(bytes.len()));
        }
        let mut k = AesKey {
            bytes: [0; 32],
            len: bytes.len() as u8,
        };
        k.bytes[..bytes.len()].copy_from_slice(bytes);
        Ok(k)
    }

    /// A key from hexadecimal text (spaces allowed). The intermediate buffer is zeroized.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let mut clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let decoded = hex::decode(&clean);
        clean.zeroize();
        let mut bytes = decoded.map_err(|e| KeyError::Hex(e.to_string()))?;
        let key = AesKey::new(&bytes);
        bytes.zeroize();
        key
    }

    /// The key bytes. Handle with care: never log them.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Key length in bytes (16, 24 or 32).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Always false: an AES key is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Key check value: the first 3 bytes of AES-ECB(key, 16 × `01`) (GP Amendment D 7.2.2).
    pub fn kcv(&self) -> [u8; 3] {
        let mut block = [0x01u8; 16];
        Aes::new(self).encrypt_block(&mut block);
        [block[0], block[1], block[2]]
    }
}

impl PartialEq for AesKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        self.len == other.len && bool::from(self.as_bytes().ct_eq(other.as_bytes()))
    }
}

impl Eq for AesKey {}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AesKey(AES-{}, <redacted>)", self.len as usize * 8)
    }
}

/// An expanded AES key of any size. The RustCrypto types zeroize their schedules on drop.
#[derive(Clone)]
pub enum Aes {
    /// AES-128.
    A128(Aes128),
    /// AES-192.
    A192(Aes192),
    /// AES-256.
    A256(Aes256),
}

macro_rules! each {
    ($self:expr, $c:ident => $body:expr) => {
        match $self {
            Aes::A128($c) => $body,
            Aes::A192($c) => $body,
            Aes::A256($c) => $body,
        }
    };
}

fn blocks(data: &mut [u8]) -> &mut [cbc::cipher::Block<Aes128>] {
    let (chunks, rest) = data.as_chunks_mut::<16>();
    debug_assert!(rest.is_empty());
    cbc::cipher::Block::<Aes128>::cast_slice_from_core_mut(chunks)
}

impl Aes {
    /// Expands a key.
    pub fn new(key: &AesKey) -> Self {
        let k = key.as_bytes();
        // Lengths were checked when the AesKey was made.
        match k.len() {
            16 => Aes::A128(Aes128::new(k.try_into().unwrap_or(&[0; 16]).into())),
            24 => Aes::A192(Aes192::new(k.try_into().unwrap_or(&[0; 24]).into())),
            _ => Aes::A256(Aes256::new(k.try_into().unwrap_or(&[0; 32]).into())),
        }
    }

    /// AES-ECB encryption of one block in place.
    pub fn encrypt_block(&self, block: &mut [u8; 16]) {
        each!(self, c => c.encrypt_block(block.into()))
    }

    /// AES-ECB decryption of one block in place.
    pub fn decrypt_block(&self, block: &mut [u8; 16]) {
        each!(self, c => c.decrypt_block(block.into()))
    }

    /// AES-CBC encryption in place; `data.len()` must be a multiple of 16 (no padding added).
    pub fn cbc_encrypt(&self, iv: &[u8; 16], data: &mut [u8]) {
        each!(self, c => cbc::Encryptor::inner_iv_init(c, iv.into()).encrypt_blocks(blocks(data)))
    }

    /// AES-CBC decryption in place; `data.len()` must be a multiple of 16.
    pub fn cbc_decrypt(&self, iv: &[u8; 16], data: &mut [u8]) {
        each!(self, c => cbc::Decryptor::inner_iv_init(c, iv.into()).decrypt_blocks(blocks(data)))
    }
}

/// An AES-CMAC key ready for use (the key schedule and subkeys computed once).
#[derive(Clone)]
pub enum CmacKey {
    /// AES-128.
    A128(Cmac<Aes128>),
    /// AES-192.
    A192(Cmac<Aes192>),
    /// AES-256.
    A256(Cmac<Aes256>),
}

impl CmacKey {
    /// Prepares a CMAC key.
    pub fn new(key: &AesKey) -> Self {
        match Aes::new(key) {
            Aes::A128(c) => CmacKey::A128(cmac::digest::InnerInit::inner_init(c)),
            Aes::A192(c) => CmacKey::A192(cmac::digest::InnerInit::inner_init(c)),
            Aes::A256(c) => CmacKey::A256(cmac::digest::InnerInit::inner_init(c)),
        }
    }

    /// CMAC over the concatenation of `parts`. The state is reset afterwards, so the key
    /// schedule is reused without copying it.
    pub fn mac(&mut self, parts: &[&[u8]]) -> [u8; 16] {
        macro_rules! run {
            ($m:expr) => {{
                for p in parts {
                    $m.update(p);
                }
                $m.finalize_reset().into_bytes().into()
            }};
        }
        match self {
            CmacKey::A128(m) => run!(m),
            CmacKey::A192(m) => run!(m),
            CmacKey::A256(m) => run!(m),
        }
    }
}

/// AES-CMAC (RFC 4493 / SP 800-38B) of `message` under `key`.
pub fn cmac(key: &AesKey, message: &[u8]) -> [u8; 16] {
    CmacKey::new(key).mac(&[message])
}

/// NIST SP 800-108 counter-mode KDF with AES-CMAC and an 8-bit counter between two fixed parts:
/// the first `out_len` bytes of `CMAC(K, before ‖ i ‖ after)` for i = 1, 2, …
pub fn kdf_counter_cmac(key: &mut CmacKey, before: &[u8], after: &[u8], out_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(out_len + 16);
    let mut i: u8 = 1;
    while out.len() < out_len {
        out.extend_from_slice(&key.mac(&[before, &[i], after]));
        i = i.wrapping_add(1);
    }
    out.truncate(out_len);
    out
}

/// SCP03 derivation constants (Amendment D 4.1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DerivationConstant {
    /// Card cryptogram.
    CardCryptogram = 0x00,
    /// Host cryptogram.
    HostCryptogram = 0x01,
    /// Pseudo-random card challenge.
    CardChallenge = 0x02,
    /// S-ENC.
    SEnc = 0x04,
    /// S-MAC.
    SMac = 0x06,
    /// S-RMAC.
    SRmac = 0x07,
}

/// The SCP03 KDF: `KDF(K, c, ctx, L)` = first L/8 bytes of
/// `CMAC(K, 00×11 ‖ c ‖ 00 ‖ L(2 bytes) ‖ i ‖ ctx)`, `out_len` in bytes.
pub fn scp03_kdf(
    key: &mut CmacKey,
    constant: DerivationConstant,
    context: &[u8],
    out_len: usize,
) -> Vec<u8> {
    let bits = (out_len * 8) as u16;
    let mut before = [0u8; 15];
    before[11] = constant as u8;
    before[13..15].copy_from_slice(&bits.to_be_bytes());
    kdf_counter_cmac(key, &before, context, out_len)
}

/// ISO/IEC 9797-1 padding method 2 to a multiple of 16 (always adds 1 to 16 bytes).
pub fn pad80(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 16);
    v.extend_from_slice(data);
    v.push(0x80);
    while v.len() % 16 != 0 {
        v.push(0);
    }
    v
}

/// Removes ISO/IEC 9797-1 method 2 padding; `None` when the padding is malformed.
pub fn unpad80(data: &[u8]) -> Option<&[u8]> {
    if data.is_empty() || !data.len().is_multiple_of(16) {
        return None;
    }
    let pos = data.iter().rposition(|b| *b != 0)?;
    if data[pos] != 0x80 || data.len() - pos > 16 {
        return None;
    }
    Some(&data[..pos])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn rfc4493_example() {
        // RFC 4493 §4, Example 2 (16-byte message).
        let k = AesKey::from_hex("2b7e151628aed2a6abf7158809cf4f3c").unwrap();
        assert_eq!(
            cmac(&k, &h("6bc1bee22e409f96e93d7e117393172a")).to_vec(),
            h("070a16b46b4d4144f79bdd9dd04a287c")
        );
    }

    #[test]
    fn padding() {
        assert_eq!(pad80(&[]).len(), 16);
        assert_eq!(pad80(&[0; 16]).len(), 32);
        assert_eq!(unpad80(&pad80(&[1, 2, 0])), Some(&[1u8, 2, 0][..]));
        assert_eq!(unpad80(&[0u8; 16]), None);
        assert_eq!(unpad80(&[0x80u8; 15]), None);
        let mut long = vec![0x80];
        long.extend_from_slice(&[0; 31]);
        assert_eq!(unpad80(&long), None);
    }

    #[test]
    fn key_debug_redacts() {
        let k = AesKey::new(&[0x42; 16]).unwrap();
        let s = format!("{k:?}");
        assert!(!s.contains("42"), "{s}");
        assert!(AesKey::new(&[0; 15]).is_err());
        assert!(AesKey::from_hex("zz").is_err());
    }

    #[test]
    fn cbc_round_trip() {
        let k = AesKey::new(&[7; 24]).unwrap();
        let aes = Aes::new(&k);
        let mut data = pad80(b"hello kagi, this is longer than one block");
        let orig = data.clone();
        aes.cbc_encrypt(&[3; 16], &mut data);
        assert_ne!(data, orig);
        aes.cbc_decrypt(&[3; 16], &mut data);
        assert_eq!(data, orig);
    }
}
