//! SCP02 3DES master keys in the HSM, for personalising SCP02 cards: the master key set lives
//! in the token as three non-extractable double-length DES keys (`LABEL-enc`, `LABEL-mac`,
//! `LABEL-dek`) usable only to encrypt, and EMV CPS 1.1 or VISA2 per-card keys are derived
//! inside the HSM — `CKM_DES3_ECB` encryption of the scheme's 16 diversification bytes
//! ([`card_wire::scp02::keys::emv_data`], [`visa2_data`]) under the master.
//!
//! [`visa2_data`]: card_wire::scp02::keys::visa2_data

use super::{Error, Result, SessionPool, hsm, session};
use card_wire::scp02::keys::{KeyPurpose02, emv_data, visa2_data};
use card_wire::scp02::{Des3Key, StaticKeys02};
use card_wire::scp03::Diversification;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectHandle};
use zeroize::Zeroizing;

/// Puts an SCP02 master key set into the token as non-extractable, sensitive DES2 keys
/// usable only for encryption. Refuses if keys with these labels exist already.
pub fn import_master_des(config: &super::HsmConfig, pin: &str, keys: &StaticKeys02) -> Result<()> {
    super::import_key_set(
        config,
        pin,
        KeyType::DES2,
        &[
            Attribute::Encrypt(true),
            Attribute::Decrypt(false),
            Attribute::Sign(false),
        ],
        [
            keys.enc().as_bytes(),
            keys.mac().as_bytes(),
            keys.dek().as_bytes(),
        ],
    )
}

/// An SCP02 master key set held in an HSM.
pub struct HsmMaster02 {
    pool: SessionPool,
    keys: [ObjectHandle; 3],
    kvn: u8,
}

impl HsmMaster02 {
    /// Logs in and finds the key set (non-extractable DES2 keys); `kvn` is the version the
    /// diversified keys get.
    pub fn open(config: &super::HsmConfig, pin: &str, kvn: u8) -> Result<HsmMaster02> {
        let (ctx, slot, session) = session(&config.module, &config.token, pin, false)?;
        let keys =
            super::master_keys(
                &session,
                config,
                AttributeType::KeyType,
                "",
                |label, a| match a {
                    Attribute::KeyType(t) if *t != KeyType::DES2 && *t != KeyType::DES3 => {
                        Err(Error::Hsm(format!(
                            "the key '{label}' is {t}, not a 3DES key: SCP02 masters are DES2 keys"
                        )))
                    }
                    _ => Ok(()),
                },
            )?;
        Ok(HsmMaster02 {
            pool: SessionPool::new(ctx, slot, session),
            keys,
            kvn,
        })
    }

    /// The card's keys for its KDD with `scheme` (`emv` or `visa2`), derived in the HSM.
    pub fn diversify(&self, scheme: Diversification, kdd: &[u8; 10]) -> Result<StaticKeys02> {
        let data: fn(&[u8; 10], KeyPurpose02) -> [u8; 16] = match scheme {
            Diversification::Emv => emv_data,
            Diversification::Visa2 => visa2_data,
            other => {
                return Err(Error::Hsm(format!(
                    "diversification {other:?} is not a 3DES scheme: SCP02 masters in the HSM take emv or visa2"
                )));
            }
        };
        let purposes = [KeyPurpose02::Enc, KeyPurpose02::Mac, KeyPurpose02::Dek];
        self.pool.with_session(|session| {
            let mut out = Vec::with_capacity(3);
            for (handle, purpose) in self.keys.iter().zip(purposes) {
                let derived = Zeroizing::new(
                    session
                        .encrypt(&Mechanism::Des3Ecb, *handle, &data(kdd, purpose))
                        .map_err(|e| hsm("C_Encrypt (DES3-ECB)", e))?,
                );
                out.push(Des3Key::new(&derived).map_err(|e| hsm("derived key", e))?);
            }
            let mut it = out.into_iter();
            match (it.next(), it.next(), it.next()) {
                (Some(enc), Some(mac), Some(dek)) => Ok(StaticKeys02::new(self.kvn, enc, mac, dek)),
                _ => Err(Error::Hsm("three derived keys expected".into())),
            }
        })
    }
}

/// An SCP02 master in the HSM with its diversification scheme: the card key source a
/// personalisation run uses (each card's keys derived inside the HSM from its KDD). The
/// 16-byte 3DES keys travel as [`StaticKeys`] (the form SCP03 and SCP02 sessions both take).
///
/// [`StaticKeys`]: card_wire::scp03::StaticKeys
pub struct HsmSource02 {
    /// The master key set.
    pub master: HsmMaster02,
    /// `emv` or `visa2`.
    pub scheme: Diversification,
}

impl card_wire::scp03::CardKeys for HsmSource02 {
    fn for_card(
        &self,
        kdd: &[u8; 10],
    ) -> std::result::Result<card_wire::scp03::StaticKeys, card_wire::scp03::Scp03Error> {
        use card_wire::scp03::{AesKey, Scp03Error, StaticKeys};
        let fail = |e: String| Scp03Error::KeySource(e);
        let k = self
            .master
            .diversify(self.scheme, kdd)
            .map_err(|e| fail(e.to_string()))?;
        let key = |d: &Des3Key| AesKey::new(d.as_bytes()).map_err(|e| fail(e.to_string()));
        StaticKeys::new(k.kvn, key(k.enc())?, key(k.mac())?, key(k.dek())?)
            .map_err(|e| fail(e.to_string()))
    }
}
