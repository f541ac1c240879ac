//! Static key sets, key diversification and session keys.

use super::crypto::{AesKey, CmacKey, DerivationConstant, KeyError, kdf_counter_cmac, scp03_kdf};

/// A static SCP03 key set: K-ENC, K-MAC and K-DEK of one length, with their key version
/// number. All keys are zeroized on drop.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct StaticKeys {
    /// Key version number (KVN).
    pub kvn: u8,
    enc: AesKey,
    mac: AesKey,
    dek: AesKey,
}

/// The GlobalPlatform default test key `40 41 … 4F`, published in every GP tool. Use it only
/// for development cards and simulators.
pub const DEFAULT_TEST_KEY: [u8; 16] = [
    0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A, 0x4B, 0x4C, 0x4D, 0x4E, 0x4F,
];

impl StaticKeys {
    /// A key set from three keys of the same length.
    pub fn new(kvn: u8, enc: AesKey, mac: AesKey, dek: AesKey) -> Result<Self, KeyError> {
        if enc.len() != mac.len() || mac.len() != dek.len() {
            return Err(KeyError::MixedLengths);
        }
        Ok(StaticKeys { kvn, enc, mac, dek })
    }

    /// The same key as ENC, MAC and DEK.
    pub fn single(kvn: u8, key: AesKey) -> Self {
        StaticKeys {
            kvn,
            enc: key.clone(),
            mac: key.clone(),
            dek: key,
        }
    }

    /// The GP default test key set (`40..4F` three times), for simulators and development
    /// cards only.
    pub fn default_test_keys(kvn: u8) -> Self {
        // 16 bytes is always a valid AES length.
        Self::single(
            kvn,
            AesKey::new(&DEFAULT_TEST_KEY).unwrap_or_else(|_| unreachable!()),
        )
    }

    /// K-ENC.
    pub fn enc(&self) -> &AesKey {
        &self.enc
    }
    /// K-MAC.
    pub fn mac(&self) -> &AesKey {
        &self.mac
    }
    /// K-DEK.
    pub fn dek(&self) -> &AesKey {
        &self.dek
    }
    /// Key length in bytes.
    pub fn key_len(&self) -> usize {
        self.enc.len()
    }

    /// Derives per-card keys from these master keys with `scheme` and the card's key
    /// diversification data (INITIALIZE UPDATE response bytes 0–9).
    pub fn diversify(&self, scheme: Diversification, kdd: &[u8; 10]) -> StaticKeys {
        match scheme {
            Diversification::None => self.clone(),
            Diversification::Kdf3 => StaticKeys {
                kvn: self.kvn,
                enc: kdf3(&self.enc, KeyPurpose::Enc, kdd),
                mac: kdf3(&self.mac, KeyPurpose::Mac, kdd),
                dek: kdf3(&self.dek, KeyPurpose::Dek, kdd),
            },
            // EMV CPS 1.1 and VISA2 are 3DES (SCP02) schemes; no public definition exists for
            // AES keys. The SCP03 handshake refuses them before diversifying
            // (`Scp03Error::UnsupportedDiversification`), so this arm is never taken there.
            Diversification::Emv | Diversification::Visa2 => self.clone(),
        }
    }
}

/// How static keys are derived from master keys for each card.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Diversification {
    /// The keys are used as they are.
    #[default]
    None,
    /// GlobalPlatformPro's `kdf3` template (AES-CMAC counter KDF over the KDD; not a GP
    /// standard, but what many SCP03 cards ship with).
    Kdf3,
    /// EMV CPS 1.1 (3DES-ECB of `KDD[4..10] ‖ F0 ‖ k ‖ KDD[4..10] ‖ 0F ‖ k`), for SCP02 keys.
    Emv,
    /// VISA2 (3DES-ECB of `KDD[0..2] ‖ KDD[4..8] ‖ F0 ‖ k ‖ …`), for SCP02 keys.
    Visa2,
}

impl Diversification {
    /// The name used on the command line and in reports.
    pub const fn name(self) -> &'static str {
        match self {
            Diversification::None => "none",
            Diversification::Kdf3 => "kdf3",
            Diversification::Emv => "emv",
            Diversification::Visa2 => "visa2",
        }
    }
}

impl core::str::FromStr for Diversification {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Diversification::None),
            "kdf3" => Ok(Diversification::Kdf3),
            "emv" => Ok(Diversification::Emv),
            "visa2" => Ok(Diversification::Visa2),
            other => Err(format!(
                "unknown diversification '{other}': use none, kdf3 (SCP03), emv or visa2 (SCP02)"
            )),
        }
    }
}

/// Which key of a set a derivation is for (`kdf3` purpose byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KeyPurpose {
    /// K-ENC.
    Enc = 1,
    /// K-MAC.
    Mac = 2,
    /// K-DEK.
    Dek = 3,
}

/// What follows the counter byte in each `kdf3` CMAC input: `00 00 00 ‖ p ‖ 00 ‖ KDD`. For
/// callers that compute the CMAC elsewhere (an HSM holding the master key).
pub fn kdf3_context(purpose: KeyPurpose, kdd: &[u8; 10]) -> [u8; 15] {
    let mut after = [0u8; 15];
    after[3] = purpose as u8;
    after[5..].copy_from_slice(kdd);
    after
}

/// Where a card's static keys come from once its key diversification data (KDD) is known:
/// diversified from master keys held elsewhere, typically in an HSM.
pub trait CardKeys: Send + Sync {
    /// The static keys of the card with this KDD.
    fn for_card(&self, kdd: &[u8; 10]) -> Result<StaticKeys, super::Scp03Error>;
}

/// Master keys held in memory (a development key store), diversified per card with
/// `scheme`; the card's keys carry `kvn`.
#[derive(Debug, Clone)]
pub struct DiversifiedMaster {
    /// The master key set.
    pub master: StaticKeys,
    /// How each card's keys are derived.
    pub scheme: Diversification,
    /// The key version the card's keys have.
    pub kvn: u8,
}

impl CardKeys for DiversifiedMaster {
    /// `kdf3` on AES keys; EMV CPS 1.1 and VISA2 on the master read as 3DES keys (SCP02
    /// cards; [`crate::scp02::StaticKeys02::diversify`]), never the master itself.
    fn for_card(&self, kdd: &[u8; 10]) -> Result<StaticKeys, super::Scp03Error> {
        let mut k = match self.scheme {
            Diversification::Emv | Diversification::Visa2 => {
                let fail = |e: String| super::Scp03Error::KeySource(e);
                let des = crate::scp02::StaticKeys02::from_scp03(&self.master)
                    .map_err(|e| fail(format!("3DES master keys: {e}")))?;
                let d = des
                    .diversify(self.scheme, kdd)
                    .map_err(|e| fail(e.to_string()))?;
                let aes = |k: &crate::scp02::Des3Key| {
                    AesKey::new(k.as_bytes()).map_err(|e| fail(e.to_string()))
                };
                StaticKeys::new(self.kvn, aes(d.enc())?, aes(d.mac())?, aes(d.dek())?)
                    .map_err(|e| fail(e.to_string()))?
            }
            _ => self.master.diversify(self.scheme, kdd),
        };
        k.kvn = self.kvn;
        Ok(k)
    }
}

/// `kdf3`: the first `len(master)` bytes of `CMAC(master, i ‖ 00 00 00 ‖ p ‖ 00 ‖ KDD)` for
/// i = 1, 2, …
pub fn kdf3(master: &AesKey, purpose: KeyPurpose, kdd: &[u8; 10]) -> AesKey {
    let after = kdf3_context(purpose, kdd);
    let mut out = kdf_counter_cmac(&mut CmacKey::new(master), &[], &after, master.len());
    let key = AesKey::new(&out).unwrap_or_else(|_| unreachable!());
    zeroize::Zeroize::zeroize(&mut out);
    key
}

/// SCP03 session keys, derived from the static keys and `host challenge ‖ card challenge`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SessionKeys {
    /// S-ENC.
    pub s_enc: AesKey,
    /// S-MAC.
    pub s_mac: AesKey,
    /// S-RMAC (from K-MAC).
    pub s_rmac: AesKey,
}

impl SessionKeys {
    /// `S-ENC = KDF(K-ENC, 04, ctx)`, `S-MAC = KDF(K-MAC, 06, ctx)`, `S-RMAC = KDF(K-MAC, 07, ctx)`.
    pub fn derive(keys: &StaticKeys, context: &[u8]) -> SessionKeys {
        let len = keys.key_len();
        let derive = |k: &AesKey, c| {
            let mut v = scp03_kdf(&mut CmacKey::new(k), c, context, len);
            let key = AesKey::new(&v).unwrap_or_else(|_| unreachable!());
            zeroize::Zeroize::zeroize(&mut v);
            key
        };
        SessionKeys {
            s_enc: derive(keys.enc(), DerivationConstant::SEnc),
            s_mac: derive(keys.mac(), DerivationConstant::SMac),
            s_rmac: derive(keys.mac(), DerivationConstant::SRmac),
        }
    }
}
