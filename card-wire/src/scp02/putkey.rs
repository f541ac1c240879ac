//! PUT KEY of SCP02 (3DES) key sets: each key 3DES-ECB-encrypted under the session DEK, with
//! its key check value (GP 2.2.1 11.8.2.3, Table 11-70/11-71).

use super::Scp02Error;
use super::crypto::{Des3Key, Tdes};
use super::keys::StaticKeys02;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Key type `80`: DES in CBC/ECB mode (3DES with a 16-byte key).
pub const KEY_TYPE_DES: u8 = 0x80;

/// The key-data block of one 3DES key: `80 10 ‖ 3DES-ECB(session DEK, key) ‖ 03 ‖ KCV`.
pub fn key_block(session_dek: &Des3Key, key: &Des3Key) -> Vec<u8> {
    let mut ct = *key.as_bytes();
    Tdes::new(session_dek).ecb_encrypt(&mut ct);
    let mut out = Vec::with_capacity(22);
    out.extend_from_slice(&[KEY_TYPE_DES, 0x10]);
    out.extend_from_slice(&ct);
    out.push(0x03);
    out.extend_from_slice(&key.kcv());
    ct.zeroize();
    out
}

/// PUT KEY data for a whole key set: `new KVN ‖ ENC block ‖ MAC block ‖ DEK block` (send with
/// P1 = old KVN or 00 to add, P2 = `81`).
pub fn put_key_data(session_dek: &Des3Key, keys: &StaticKeys02) -> Vec<u8> {
    let mut v = vec![keys.kvn];
    for k in [keys.enc(), keys.mac(), keys.dek()] {
        v.extend_from_slice(&key_block(session_dek, k));
    }
    v
}

/// The card's expected answer to PUT KEY: `KVN ‖ KCV(ENC) ‖ KCV(MAC) ‖ KCV(DEK)`.
pub fn put_key_answer(keys: &StaticKeys02) -> Vec<u8> {
    let mut v = vec![keys.kvn];
    for k in [keys.enc(), keys.mac(), keys.dek()] {
        v.extend_from_slice(&k.kcv());
    }
    v
}

/// Card side: decrypts and checks PUT KEY data for a 3DES key set.
pub fn parse_put_key_data(session_dek: &Des3Key, data: &[u8]) -> Result<StaticKeys02, Scp02Error> {
    if data.len() != 1 + 3 * 22 {
        return Err(Scp02Error::PutKeyFormat(
            "expected a KVN and three 3DES key blocks",
        ));
    }
    let kvn = data[0];
    let tdes = Tdes::new(session_dek);
    let mut keys = Vec::with_capacity(3);
    for block in data[1..].chunks_exact(22) {
        if block[0] != KEY_TYPE_DES || block[1] != 0x10 || block[18] != 0x03 {
            return Err(Scp02Error::PutKeyFormat(
                "key block is not 80 10 <16> 03 <KCV>",
            ));
        }
        let mut k = [0u8; 16];
        k.copy_from_slice(&block[2..18]);
        tdes.ecb_decrypt(&mut k);
        let key = Des3Key(k);
        k.zeroize();
        if !bool::from(key.kcv().ct_eq(&block[19..22])) {
            return Err(Scp02Error::KcvMismatch);
        }
        keys.push(key);
    }
    let dek = keys.pop();
    let mac = keys.pop();
    let enc = keys.pop();
    match (enc, mac, dek) {
        (Some(e), Some(m), Some(d)) => Ok(StaticKeys02::new(kvn, e, m, d)),
        _ => Err(Scp02Error::PutKeyFormat("three keys expected")),
    }
}
