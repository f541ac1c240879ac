//! Protecting key material sent to the card (PUT KEY, STORE DATA of keys): encryption under
//! the static K-DEK and key check values.

use super::Scp03Error;
use super::crypto::{Aes, AesKey};
use zeroize::Zeroize;

/// AES-CBC under the DEK with a zero IV over data that is a multiple of 16 bytes, returned as
/// `len(ct) ‖ ct` (the length-prefixed form of PUT KEY).
pub fn dek_encrypt(dek: &AesKey, plaintext: &[u8]) -> Result<Vec<u8>, Scp03Error> {
    if plaintext.is_empty() || !plaintext.len().is_multiple_of(16) || plaintext.len() > 255 {
        return Err(Scp03Error::DekBlockLength(plaintext.len()));
    }
    let mut ct = plaintext.to_vec();
    Aes::new(dek).cbc_encrypt(&[0; 16], &mut ct);
    let mut out = Vec::with_capacity(ct.len() + 1);
    out.push(ct.len() as u8);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The card side of [`dek_encrypt`]: decrypts `ct` (without the length prefix).
pub fn dek_decrypt(dek: &AesKey, ciphertext: &[u8]) -> Result<Vec<u8>, Scp03Error> {
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err(Scp03Error::DekBlockLength(ciphertext.len()));
    }
    let mut pt = ciphertext.to_vec();
    Aes::new(dek).cbc_decrypt(&[0; 16], &mut pt);
    Ok(pt)
}

/// The key-data block for one AES key in PUT KEY (Amendment D Table 7-10):
/// `88 ‖ (1 + len(ct)) ‖ key length ‖ ct ‖ 03 ‖ KCV`, where the key is padded to a multiple of
/// 16 with `pad` bytes (AES-192 needs 8) before encryption.
pub fn put_key_block(dek: &AesKey, key: &AesKey, pad: &[u8]) -> Result<Vec<u8>, Scp03Error> {
    let mut plain = key.as_bytes().to_vec();
    let need = (16 - plain.len() % 16) % 16;
    if pad.len() < need {
        plain.zeroize();
        return Err(Scp03Error::DekBlockLength(key.len()));
    }
    plain.extend_from_slice(&pad[..need]);
    let enc = dek_encrypt(dek, &plain);
    plain.zeroize();
    let enc = enc?;
    let mut out = vec![0x88, enc.len() as u8, key.len() as u8];
    out.extend_from_slice(&enc[1..]);
    out.push(0x03);
    out.extend_from_slice(&key.kcv());
    Ok(out)
}
