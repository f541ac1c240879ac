//! Master keys in a PKCS#11 HSM (through `cryptoki`): the production master key set lives in
//! the token as three non-extractable AES keys (`LABEL-enc`, `LABEL-mac`, `LABEL-dek`), and
//! per-card keys are diversified inside the HSM with `CKM_AES_CMAC` over the `kdf3` input. The
//! master keys never leave the HSM; a card's diversified keys exist in host memory only while
//! a station needs them (to wrap them for PUT KEY and to open sessions), in zeroizing buffers.
//!
//! DAP signing keys live in the token too ([`dap::HsmDapKey`]), and SCP02 3DES masters with
//! EMV/VISA2 diversification in the HSM ([`scp02::HsmMaster02`]).
//!
//! The tests use SoftHSM2 (see `scripts/softhsm-init.sh`).

use card_wire::scp03::keys::KeyPurpose;
use card_wire::scp03::{AesKey, CardKeys, Scp03Error, StaticKeys, kdf3_context};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use zeroize::Zeroizing;

pub mod dap;
mod inside;
pub mod scp02;
pub mod testing;

/// The HSM refused, is not reachable, or does not hold the keys asked for; the message names
/// the module, token or key label to check.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The PKCS#11 module or token failed or refused.
    #[error("HSM: {0}")]
    Hsm(String),
}

/// The HSM store's result type.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Where the master keys are: the PKCS#11 module, the token and the key label.
#[derive(Debug, Clone)]
pub struct HsmConfig {
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`, a vendor's library).
    pub module: std::path::PathBuf,
    /// The token's label.
    pub token: String,
    /// The key set's label: objects `LABEL-enc`, `LABEL-mac`, `LABEL-dek`.
    pub key: String,
}

fn hsm(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Hsm(format!("{what}: {e}"))
}

/// The module's context, initialised once per process (PKCS#11 allows one `C_Initialize`)
/// and shared by every key set and session opened through it.
fn context(module: &Path) -> Result<Pkcs11> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| Error::Hsm("PKCS#11 context lock poisoned".into()))?;
    if let Some(ctx) = contexts.get(module) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(module).map_err(|e| hsm(&module.display().to_string(), e))?;
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| hsm("C_Initialize", e))?;
    contexts.insert(module.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// Opens a logged-in session on the token labelled `token`.
fn session(module: &Path, token: &str, pin: &str, rw: bool) -> Result<(Pkcs11, Slot, Session)> {
    let ctx = context(module)?;
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| hsm("C_GetSlotList", e))?;
    let mut labels = Vec::new();
    let mut found = None;
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| hsm("C_GetTokenInfo", e))?;
        let label = info.label().trim().to_string();
        if label == token {
            found = Some(slot);
            break;
        }
        labels.push(label);
    }
    let slot = found.ok_or_else(|| {
        Error::Hsm(format!(
            "no token labelled '{token}' (tokens: {})",
            if labels.is_empty() {
                "none".into()
            } else {
                labels.join(", ")
            }
        ))
    })?;
    let session = if rw {
        ctx.open_rw_session(slot)
    } else {
        ctx.open_ro_session(slot)
    }
    .map_err(|e| hsm("C_OpenSession", e))?;
    match session.login(UserType::User, Some(&AuthPin::new(pin.into()))) {
        // Logins are per token and application: a second key set's session shares the first's.
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => return Err(hsm("C_Login (check the user PIN)", e)),
    }
    Ok((ctx, slot, session))
}

const PARTS: [(&str, KeyPurpose); 3] = [
    ("enc", KeyPurpose::Enc),
    ("mac", KeyPurpose::Mac),
    ("dek", KeyPurpose::Dek),
];

/// Puts a master key set into the token as non-extractable, sensitive AES keys usable only
/// for CMAC (sign). Refuses if keys with these labels exist already.
pub fn import_master(config: &HsmConfig, pin: &str, keys: &StaticKeys) -> Result<()> {
    import_key_set(
        config,
        pin,
        KeyType::AES,
        &[
            Attribute::Sign(true),
            Attribute::Verify(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
        ],
        [
            keys.enc().as_bytes(),
            keys.mac().as_bytes(),
            keys.dek().as_bytes(),
        ],
    )
}

/// Creates a master key set's three keys (LABEL-enc, -mac, -dek) as non-extractable,
/// sensitive token objects of `key_type` allowed only `usage`. Every label is checked first:
/// if one is taken, nothing is created.
pub(crate) fn import_key_set(
    config: &HsmConfig,
    pin: &str,
    key_type: KeyType,
    usage: &[Attribute],
    values: [&[u8]; 3],
) -> Result<()> {
    let (_ctx, _slot, session) = session(&config.module, &config.token, pin, true)?;
    let labels = PARTS.map(|(part, _)| format!("{}-{part}", config.key));
    for label in &labels {
        let existing = session
            .find_objects(&[Attribute::Label(label.clone().into_bytes())])
            .map_err(|e| hsm("C_FindObjects", e))?;
        if !existing.is_empty() {
            return Err(Error::Hsm(format!(
                "the token already holds a key labelled '{label}': choose another label"
            )));
        }
    }
    for (label, value) in labels.into_iter().zip(values) {
        let mut template = vec![
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(key_type),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Label(label.into_bytes()),
            Attribute::Value(value.to_vec()),
        ];
        template.extend_from_slice(usage);
        session
            .create_object(&template)
            .map_err(|e| hsm("C_CreateObject", e))?;
    }
    Ok(())
}

/// Idle logged-in sessions on one token: each user takes one, so concurrent users do not
/// wait on each other (PKCS#11 sessions are not to be shared between threads).
struct SessionPool {
    sessions: Mutex<Vec<Session>>,
    slot: Slot,
    ctx: Pkcs11,
}

impl SessionPool {
    fn new(ctx: Pkcs11, slot: Slot, first: Session) -> SessionPool {
        SessionPool {
            sessions: Mutex::new(vec![first]),
            slot,
            ctx,
        }
    }

    /// Runs `f` on an idle session (a new one, already logged in with the token, if all are
    /// busy), and puts the session back.
    fn with_session<R>(&self, f: impl FnOnce(&Session) -> Result<R>) -> Result<R> {
        let idle = self
            .sessions
            .lock()
            .map_err(|_| Error::Hsm("HSM session lock poisoned".into()))?
            .pop();
        let session = match idle {
            Some(s) => s,
            None => self
                .ctx
                .open_ro_session(self.slot)
                .map_err(|e| hsm("C_OpenSession", e))?,
        };
        let result = f(&session);
        if let Ok(mut pool) = self.sessions.lock() {
            pool.push(session);
        }
        result
    }
}

/// The three master keys (`LABEL-enc`, `-mac`, `-dek` after [`PARTS`]) of `config` in the
/// session's token: each found exactly once (`missing_hint` ends the error otherwise) and not
/// extractable; `check` sees each key's `attribute` (with its label) and may refuse it.
pub(crate) fn master_keys(
    session: &Session,
    config: &HsmConfig,
    attribute: AttributeType,
    missing_hint: &str,
    mut check: impl FnMut(&str, &Attribute) -> Result<()>,
) -> Result<[ObjectHandle; 3]> {
    let mut keys = Vec::new();
    for (part, _) in PARTS {
        let label = format!("{}-{part}", config.key);
        let found = session
            .find_objects(&[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::Label(label.clone().into_bytes()),
            ])
            .map_err(|e| hsm("C_FindObjects", e))?;
        let [handle] = found.as_slice() else {
            return Err(Error::Hsm(format!(
                "expected one key labelled '{label}' in token '{}', found {}{missing_hint}",
                config.token,
                found.len()
            )));
        };
        let attrs = session
            .get_attributes(*handle, &[attribute, AttributeType::Extractable])
            .map_err(|e| hsm("C_GetAttributeValue", e))?;
        for a in &attrs {
            if let Attribute::Extractable(true) = a {
                return Err(Error::Hsm(format!(
                    "the key '{label}' is extractable: master keys must not leave the HSM; re-create it with CKA_EXTRACTABLE false"
                )));
            }
            check(&label, a)?;
        }
        keys.push(*handle);
    }
    keys.try_into()
        .map_err(|_| Error::Hsm("three master keys expected".into()))
}

/// A production master key set held in an HSM.
pub struct HsmMaster {
    pool: SessionPool,
    keys: [ObjectHandle; 3],
    len: usize,
    kvn: u8,
}

impl HsmMaster {
    /// Logs in and finds the key set; `kvn` is the version the diversified keys get.
    pub fn open(config: &HsmConfig, pin: &str, kvn: u8) -> Result<HsmMaster> {
        let (ctx, slot, session) = session(&config.module, &config.token, pin, false)?;
        let mut len = 0;
        let keys = master_keys(
            &session,
            config,
            AttributeType::ValueLen,
            ": import the master keys with `kagi perso hsm-import --hsm-key LABEL`",
            |_, a| {
                if let Attribute::ValueLen(l) = a {
                    len = u64::from(*l) as usize;
                }
                Ok(())
            },
        )?;
        Ok(HsmMaster {
            pool: SessionPool::new(ctx, slot, session),
            keys,
            len,
            kvn,
        })
    }

    /// `kdf3` diversification for the card with this KDD, with the CMACs computed in the HSM.
    pub fn diversify_kdf3(&self, kdd: &[u8; 10]) -> Result<StaticKeys> {
        self.pool.with_session(|session| self.kdf3_in(session, kdd))
    }

    fn kdf3_in(&self, session: &Session, kdd: &[u8; 10]) -> Result<StaticKeys> {
        let mut out = Vec::with_capacity(3);
        for (handle, (_, purpose)) in self.keys.iter().zip(PARTS) {
            let after = kdf3_context(purpose, kdd);
            let mut bytes = Zeroizing::new(Vec::with_capacity(self.len + 16));
            let mut i: u8 = 1;
            while bytes.len() < self.len {
                let mut msg = vec![i];
                msg.extend_from_slice(&after);
                let mac = Zeroizing::new(
                    session
                        .sign(&Mechanism::AesCMac, *handle, &msg)
                        .map_err(|e| hsm("C_Sign (AES-CMAC)", e))?,
                );
                bytes.extend_from_slice(&mac);
                i = i.wrapping_add(1);
            }
            bytes.truncate(self.len);
            out.push(AesKey::new(&bytes).map_err(|e| hsm("derived key", e))?);
        }
        let dek = out.pop();
        let mac = out.pop();
        let enc = out.pop();
        match (enc, mac, dek) {
            (Some(enc), Some(mac), Some(dek)) => {
                StaticKeys::new(self.kvn, enc, mac, dek).map_err(|e| hsm("derived keys", e))
            }
            _ => Err(Error::Hsm("three derived keys expected".into())),
        }
    }
}

impl CardKeys for HsmMaster {
    fn for_card(&self, kdd: &[u8; 10]) -> std::result::Result<StaticKeys, Scp03Error> {
        self.diversify_kdf3(kdd)
            .map_err(|e| Scp03Error::KeySource(e.to_string()))
    }
}

/// The label prefix of the broker's key-encryption keys in the token.
pub const KEK_PREFIX: &str = "broker-kek-";

/// Makes a new broker key-encryption key inside the token: AES-256, generated there
/// (`CKM_AES_KEY_GEN`), sensitive and non-extractable, usable only to encrypt and decrypt
/// (data keys, the binding of records to their rows) and to wrap and unwrap (credentials
/// used only inside the token). Refuses if the label exists.
pub fn create_kek(config: &HsmConfig, pin: &str, id: &str) -> Result<()> {
    let (_ctx, _slot, session) = session(&config.module, &config.token, pin, true)?;
    let label = format!("{KEK_PREFIX}{id}");
    let existing = session
        .find_objects(&[Attribute::Label(label.clone().into_bytes())])
        .map_err(|e| hsm("C_FindObjects", e))?;
    if !existing.is_empty() {
        return Err(Error::Hsm(format!(
            "the token already holds a key labelled '{label}': choose another KEK id"
        )));
    }
    session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Sign(false),
                Attribute::Wrap(true),
                Attribute::Unwrap(true),
                Attribute::Label(label.into_bytes()),
            ],
        )
        .map_err(|e| hsm("C_GenerateKey (AES-256)", e))?;
    Ok(())
}

/// The broker's key store in a PKCS#11 token: its KEKs are the token's
/// `broker-kek-ID` keys ([`create_kek`]). Sessions are pooled like [`HsmMaster`]'s, so
/// concurrent requests do not queue on one.
///
/// Under a KEK that may wrap and unwrap (every KEK [`create_kek`] makes now), credentials
/// are generated in the token, wrapped directly under the KEK and used only inside the
/// token (see the `inside` module: `C_UnwrapKey` into a sensitive, non-extractable session
/// object for each use, destroyed after): the broker never holds their plaintext. Under an
/// older KEK (encrypt/decrypt only), records keep the data-key form: the data key is
/// unwrapped with `CKM_AES_GCM` (random 96-bit IV, the KEK id as additional data) and the
/// credential opened in the broker's memory. Records of that form stay usable, and a KEK
/// rotation to a wrapping KEK converts them to the in-HSM form (opened once more, taken
/// into the token and wrapped there: `Envelope::convert_row`).
pub struct HsmEnvelope {
    pool: SessionPool,
    keks: std::sync::RwLock<std::collections::BTreeMap<String, (ObjectHandle, bool)>>,
    token: String,
}

use broker_protocol::envelope::EnvelopeError;

/// The `broker-kek-*` keys a session sees, with whether each may wrap and unwrap; refuses
/// extractable ones.
type Keks = std::collections::BTreeMap<String, (ObjectHandle, bool)>;

fn find_keks(session: &Session) -> Result<Keks> {
    let found = session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .map_err(|e| hsm("C_FindObjects", e))?;
    let mut keks = std::collections::BTreeMap::new();
    for handle in found {
        let attrs = session
            .get_attributes(
                handle,
                &[
                    AttributeType::Label,
                    AttributeType::Extractable,
                    AttributeType::Wrap,
                    AttributeType::Unwrap,
                ],
            )
            .map_err(|e| hsm("C_GetAttributeValue", e))?;
        let mut label = None;
        let mut extractable = false;
        let (mut wrap, mut unwrap) = (false, false);
        for a in attrs {
            match a {
                Attribute::Label(l) => label = Some(String::from_utf8_lossy(&l).into_owned()),
                Attribute::Extractable(x) => extractable = x,
                Attribute::Wrap(x) => wrap = x,
                Attribute::Unwrap(x) => unwrap = x,
                _ => {}
            }
        }
        let Some(id) = label.as_deref().and_then(|l| l.strip_prefix(KEK_PREFIX)) else {
            continue;
        };
        if extractable {
            return Err(Error::Hsm(format!(
                "the KEK '{KEK_PREFIX}{id}' is extractable: KEKs must not leave the HSM; make a new one with `kagi broker new-kek`"
            )));
        }
        keks.insert(id.to_string(), (handle, wrap && unwrap));
    }
    Ok(keks)
}

impl HsmEnvelope {
    /// Logs in and finds every `broker-kek-*` key; refuses extractable ones.
    pub fn open(config: &HsmConfig, pin: &str) -> Result<HsmEnvelope> {
        let (ctx, slot, session) = session(&config.module, &config.token, pin, false)?;
        let keks = find_keks(&session)?;
        if keks.is_empty() {
            return Err(Error::Hsm(format!(
                "token '{}' holds no broker KEK ({KEK_PREFIX}ID): make one with `kagi broker new-kek --hsm-module …`",
                config.token
            )));
        }
        Ok(HsmEnvelope {
            pool: SessionPool::new(ctx, slot, session),
            keks: std::sync::RwLock::new(keks),
            token: config.token.clone(),
        })
    }

    fn kek(&self, id: &str) -> std::result::Result<ObjectHandle, EnvelopeError> {
        self.kek_and_mode(id).map(|(h, _)| h)
    }

    /// A KEK's handle and whether it keeps credentials inside (may wrap and unwrap).
    fn kek_and_mode(&self, id: &str) -> std::result::Result<(ObjectHandle, bool), EnvelopeError> {
        let find = || {
            self.keks
                .read()
                .map(|k| k.get(id).copied())
                .map_err(|_| EnvelopeError("key store lock poisoned".into()))
        };
        if let Some(h) = find()? {
            return Ok(h);
        }
        broker_protocol::envelope::Envelope::refresh(self)?;
        find()?.ok_or_else(|| {
            EnvelopeError(format!(
                "token '{}' holds no KEK '{KEK_PREFIX}{id}'",
                self.token
            ))
        })
    }
}

fn env_err(e: Error) -> EnvelopeError {
    EnvelopeError(e.to_string())
}

impl HsmEnvelope {
    /// Seals a credential whose value the caller knows into a record of the in-HSM form
    /// under `kek` (an AES key or a P-256 private scalar): a migration from another store,
    /// and the tests that must know a credential's value. Prefer
    /// [`Envelope::generate`](broker_protocol::envelope::Envelope::generate).
    pub fn import_credential(
        &self,
        kek: &str,
        aad: &[u8],
        kind: broker_protocol::envelope::KeyKind,
        value: &[u8],
    ) -> std::result::Result<broker_protocol::envelope::SealedRecord, EnvelopeError> {
        let (h, inside) = self.kek_and_mode(kek)?;
        if !inside {
            return Err(EnvelopeError(format!(
                "the KEK '{KEK_PREFIX}{kek}' may not wrap keys: make a new KEK with `kagi broker new-kek`"
            )));
        }
        self.pool
            .with_session(|s| inside::import(s, kek, h, aad, kind, value))
            .map_err(env_err)
    }
}

impl broker_protocol::envelope::Envelope for HsmEnvelope {
    fn generate(
        &self,
        kek: &str,
        aad: &[u8],
        kind: broker_protocol::envelope::KeyKind,
    ) -> std::result::Result<Option<broker_protocol::envelope::Generated>, EnvelopeError> {
        let (h, inside) = self.kek_and_mode(kek)?;
        if !inside {
            return Ok(None);
        }
        let (record, public_key, shared) = self
            .pool
            .with_session(|s| inside::generate(s, kek, h, aad, kind))
            .map_err(env_err)?;
        Ok(Some(broker_protocol::envelope::Generated {
            record,
            public_key,
            shared,
        }))
    }

    fn use_key(
        &self,
        aad: &[u8],
        record: &broker_protocol::envelope::SealedRecord,
        u: broker_protocol::envelope::KeyUse<'_>,
    ) -> std::result::Result<Option<Vec<u8>>, EnvelopeError> {
        if record.in_store_kind().is_none() {
            return Ok(None);
        }
        let h = self.kek(&record.kek)?;
        self.pool
            .with_session(|s| inside::use_key(s, h, aad, record, u))
            .map(Some)
            .map_err(env_err)
    }

    fn holds_inside(&self, kek: &str) -> std::result::Result<bool, EnvelopeError> {
        self.kek_and_mode(kek).map(|(_, inside)| inside)
    }

    fn converts_to(&self, kek: &str) -> std::result::Result<bool, EnvelopeError> {
        self.kek_and_mode(kek).map(|(_, inside)| inside)
    }

    fn convert_row(
        &self,
        aad: &[u8],
        record: &broker_protocol::envelope::SealedRecord,
        to: &str,
        kind: broker_protocol::envelope::KeyKind,
    ) -> std::result::Result<Option<broker_protocol::envelope::SealedRecord>, EnvelopeError> {
        if record.in_store_kind().is_some() {
            return Ok(None);
        }
        let (h, inside) = self.kek_and_mode(to)?;
        if !inside {
            return Ok(None);
        }
        // The data-key form can only be opened in memory (its data key is unwrapped with
        // CKM_AES_GCM, which C_UnwrapKey does not take): opened once more here, taken into
        // the token at once and zeroized; from then on the credential is used only inside.
        let plain = self.open(aad, record)?;
        self.pool
            .with_session(|s| inside::import(s, to, h, aad, kind, &plain))
            .map(Some)
            .map_err(env_err)
    }

    fn shared_secret(
        &self,
        aad: &[u8],
        record: &broker_protocol::envelope::SealedRecord,
    ) -> std::result::Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        if record.in_store_kind().is_none() {
            return self.open(aad, record);
        }
        Err(EnvelopeError(
            "the service's AES key was given once, at enrolment, and stays inside the HSM since: rotate the service key to give the service a new one".into(),
        ))
    }

    fn check(
        &self,
        aad: &[u8],
        record: &broker_protocol::envelope::SealedRecord,
    ) -> std::result::Result<(), EnvelopeError> {
        if record.in_store_kind().is_none() {
            return self.open(aad, record).map(drop);
        }
        let h = self.kek(&record.kek)?;
        self.pool
            .with_session(|s| inside::check(s, h, aad, record))
            .map_err(env_err)
    }

    fn rewrap_row(
        &self,
        aad: &[u8],
        record: &broker_protocol::envelope::SealedRecord,
        to: &str,
    ) -> std::result::Result<broker_protocol::envelope::SealedRecord, EnvelopeError> {
        if record.in_store_kind().is_none() {
            return self.rewrap(record, to);
        }
        let from = self.kek(&record.kek)?;
        let (h, inside) = self.kek_and_mode(to)?;
        if !inside {
            return Err(EnvelopeError(format!(
                "the KEK '{KEK_PREFIX}{to}' may not wrap keys: a record kept inside the HSM cannot move under it"
            )));
        }
        self.pool
            .with_session(|s| inside::rewrap(s, from, to, h, aad, record))
            .map_err(env_err)
    }

    fn keks(&self) -> Vec<String> {
        self.keks
            .read()
            .map(|k| k.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn refresh(&self) -> std::result::Result<(), EnvelopeError> {
        let fresh = self
            .pool
            .with_session(find_keks)
            .map_err(|e| EnvelopeError(e.to_string()))?;
        *self
            .keks
            .write()
            .map_err(|_| EnvelopeError("key store lock poisoned".into()))? = fresh;
        Ok(())
    }

    fn wrap_dek(&self, kek: &str, dek: &[u8]) -> std::result::Result<Vec<u8>, EnvelopeError> {
        use cryptoki::mechanism::aead::GcmParams;
        let handle = self.kek(kek)?;
        let mut iv = [0u8; 12];
        getrandom::fill(&mut iv).map_err(|e| EnvelopeError(e.to_string()))?;
        let mut iv_param = iv;
        let ct = self
            .pool
            .with_session(|s| {
                let params = GcmParams::new(&mut iv_param, kek.as_bytes(), 128.into())
                    .map_err(|e| hsm("GCM parameters", e))?;
                s.encrypt(&Mechanism::AesGcm(params), handle, dek)
                    .map_err(|e| hsm("C_Encrypt (AES-GCM)", e))
            })
            .map_err(|e| EnvelopeError(e.to_string()))?;
        Ok([iv.as_slice(), &ct].concat())
    }

    fn unwrap_dek(
        &self,
        kek: &str,
        wrapped: &[u8],
    ) -> std::result::Result<Zeroizing<Vec<u8>>, EnvelopeError> {
        use cryptoki::mechanism::aead::GcmParams;
        let handle = self.kek(kek)?;
        if wrapped.len() < 12 + 16 {
            return Err(EnvelopeError("malformed wrapped key".into()));
        }
        let (iv, ct) = wrapped.split_at(12);
        let mut iv =
            <[u8; 12]>::try_from(iv).map_err(|_| EnvelopeError("malformed wrapped key".into()))?;
        self.pool
            .with_session(|s| {
                let params = GcmParams::new(&mut iv, kek.as_bytes(), 128.into())
                    .map_err(|e| hsm("GCM parameters", e))?;
                s.decrypt(&Mechanism::AesGcm(params), handle, ct)
                    .map(Zeroizing::new)
                    .map_err(|_| {
                        Error::Hsm(
                        "the wrapped key does not open under this KEK (altered, or another KEK)"
                            .into(),
                    )
                    })
            })
            .map_err(|e| EnvelopeError(e.to_string()))
    }

    fn describe(&self) -> String {
        format!(
            "PKCS#11 token '{}' ({} KEKs)",
            self.token,
            self.keks().len()
        )
    }
}
