//! SCP02 static key sets, EMV CPS 1.1 / VISA2 diversification and session keys.

use super::crypto::{Des3Key, DesKeyError, Tdes};
use crate::scp03::{Diversification, StaticKeys};
use zeroize::Zeroize;

/// A static SCP02 key set: K-ENC, K-MAC and K-DEK (two-key 3DES) with their key version
/// number. Zeroized on drop.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StaticKeys02 {
    /// Key version number (KVN).
    pub kvn: u8,
    enc: Des3Key,
    mac: Des3Key,
    dek: Des3Key,
}

impl StaticKeys02 {
    /// A key set from three keys.
    pub fn new(kvn: u8, enc: Des3Key, mac: Des3Key, dek: Des3Key) -> Self {
        StaticKeys02 { kvn, enc, mac, dek }
    }

    /// The same key as ENC, MAC and DEK.
    pub fn single(kvn: u8, key: Des3Key) -> Self {
        Self::new(kvn, key.clone(), key.clone(), key)
    }

    /// The GP default test key set (`40..4F` three times), for simulators and development
    /// cards only.
    pub fn default_test_keys(kvn: u8) -> Self {
        Self::single(kvn, Des3Key(crate::scp03::keys::DEFAULT_TEST_KEY))
    }

    /// The same key bytes read as 3DES keys: a key file or `--key` value holds bytes, and
    /// whether they are AES or 3DES keys is decided by the protocol the card answers with.
    pub fn from_scp03(keys: &StaticKeys) -> Result<Self, DesKeyError> {
        Ok(StaticKeys02 {
            kvn: keys.kvn,
            enc: Des3Key::new(keys.enc().as_bytes())?,
            mac: Des3Key::new(keys.mac().as_bytes())?,
            dek: Des3Key::new(keys.dek().as_bytes())?,
        })
    }

    /// K-ENC.
    pub fn enc(&self) -> &Des3Key {
        &self.enc
    }
    /// K-MAC.
    pub fn mac(&self) -> &Des3Key {
        &self.mac
    }
    /// K-DEK.
    pub fn dek(&self) -> &Des3Key {
        &self.dek
    }

    /// Derives per-card keys from these master keys with `scheme` and the card's key
    /// diversification data (INITIALIZE UPDATE response bytes 0–9). `kdf3` is an AES scheme
    /// and is refused.
    pub fn diversify(
        &self,
        scheme: Diversification,
        kdd: &[u8; 10],
    ) -> Result<StaticKeys02, super::Scp02Error> {
        let f = match scheme {
            Diversification::None => return Ok(self.clone()),
            Diversification::Emv => emv_data,
            Diversification::Visa2 => visa2_data,
            other => return Err(super::Scp02Error::UnsupportedDiversification(other)),
        };
        Ok(StaticKeys02 {
            kvn: self.kvn,
            enc: derive(&self.enc, &f(kdd, KeyPurpose02::Enc)),
            mac: derive(&self.mac, &f(kdd, KeyPurpose02::Mac)),
            dek: derive(&self.dek, &f(kdd, KeyPurpose02::Dek)),
        })
    }
}

/// Which key of a set a derivation is for (the `$k` byte of the EMV and VISA2 templates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KeyPurpose02 {
    /// K-ENC.
    Enc = 1,
    /// K-MAC.
    Mac = 2,
    /// K-DEK.
    Dek = 3,
}

/// EMV CPS 1.1 diversification data: `KDD[4..10] ‖ F0 ‖ k ‖ KDD[4..10] ‖ 0F ‖ k`, the
/// 16 bytes 3DES-ECB-encrypted under the master key (usable by an HSM holding the master).
pub fn emv_data(kdd: &[u8; 10], purpose: KeyPurpose02) -> [u8; 16] {
    let mut d = [0u8; 16];
    d[..6].copy_from_slice(&kdd[4..10]);
    d[6] = 0xF0;
    d[7] = purpose as u8;
    d[8..14].copy_from_slice(&kdd[4..10]);
    d[14] = 0x0F;
    d[15] = purpose as u8;
    d
}

/// VISA2 diversification data: `KDD[0..2] ‖ KDD[4..8] ‖ F0 ‖ k ‖ KDD[0..2] ‖ KDD[4..8] ‖ 0F ‖ k`.
pub fn visa2_data(kdd: &[u8; 10], purpose: KeyPurpose02) -> [u8; 16] {
    let mut d = [0u8; 16];
    for half in 0..2 {
        let o = half * 8;
        d[o..o + 2].copy_from_slice(&kdd[0..2]);
        d[o + 2..o + 6].copy_from_slice(&kdd[4..8]);
        d[o + 6] = if half == 0 { 0xF0 } else { 0x0F };
        d[o + 7] = purpose as u8;
    }
    d
}

fn derive(master: &Des3Key, data: &[u8; 16]) -> Des3Key {
    let mut d = *data;
    Tdes::new(master).ecb_encrypt(&mut d);
    let k = Des3Key(d);
    d.zeroize();
    k
}

/// SCP02 session keys, derived from the static keys and the 2-byte sequence counter.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionKeys02 {
    /// S-ENC (cryptograms, C-DEC).
    pub s_enc: Des3Key,
    /// C-MAC session key.
    pub c_mac: Des3Key,
    /// R-MAC session key (from K-MAC).
    pub r_mac: Des3Key,
    /// Session DEK (PUT KEY, sensitive STORE DATA).
    pub dek: Des3Key,
}

impl SessionKeys02 {
    /// `key = 3DES-CBC(K, IV 0, constant ‖ seq ‖ 00×12)` with constants S-ENC `0182`,
    /// C-MAC `0101`, R-MAC `0102`, DEK `0181` (GP 2.2.1 E.4.1).
    pub fn derive(keys: &StaticKeys02, seq: [u8; 2]) -> SessionKeys02 {
        let one = |k: &Des3Key, c: [u8; 2]| {
            let mut d = [0u8; 16];
            d[..2].copy_from_slice(&c);
            d[2..4].copy_from_slice(&seq);
            Tdes::new(k).cbc_encrypt(&[0; 8], &mut d);
            let key = Des3Key(d);
            d.zeroize();
            key
        };
        SessionKeys02 {
            s_enc: one(&keys.enc, [0x01, 0x82]),
            c_mac: one(&keys.mac, [0x01, 0x01]),
            r_mac: one(&keys.mac, [0x01, 0x02]),
            dek: one(&keys.dek, [0x01, 0x81]),
        }
    }
}
