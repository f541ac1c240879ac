//! The JSON schema of `vectors/FORMAT.md`, strictly: unknown kinds and fields are errors.

use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer};

/// Bytes written as an even-length hex string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hex(pub Vec<u8>);

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(&s)
            .map(Hex)
            .map_err(|e| de::Error::custom(format!("'{s}' is not even-length hex: {e}")))
    }
}

/// One byte written as a 2-digit hex string (`"33"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Byte(pub u8);

impl<'de> Deserialize<'de> for Byte {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Hex(v) = Hex::deserialize(d)?;
        match v.as_slice() {
            [b] => Ok(Byte(*b)),
            _ => Err(de::Error::custom("expected one byte as two hex digits")),
        }
    }
}

/// `cmac`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cmac {
    pub key: Hex,
    pub message: Hex,
    pub mac: Hex,
}

/// `kdf-ctr-cmac`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfCtrCmac {
    pub key: Hex,
    pub before_counter: Hex,
    pub after_counter: Hex,
    pub output_bits: usize,
    pub output: Hex,
}

/// `kcv`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kcv {
    pub key: Hex,
    pub kcv: Hex,
}

/// `kdf3-diversify`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kdf3 {
    pub master: Hex,
    pub kdd: Hex,
    pub enc: Option<Hex>,
    pub mac: Option<Hex>,
    pub dek: Option<Hex>,
    pub kcv_enc: Option<Hex>,
    pub kcv_mac: Option<Hex>,
    pub kcv_dek: Option<Hex>,
}

/// `scp03-session-keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionKeysVector {
    pub enc: Hex,
    pub mac: Hex,
    pub host_challenge: Hex,
    pub card_challenge: Hex,
    pub s_enc: Hex,
    pub s_mac: Hex,
    pub s_rmac: Hex,
}

/// `dek-encrypt`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DekEncrypt {
    pub dek: Hex,
    pub plaintext: Hex,
    pub ciphertext_with_length_prefix: Hex,
}

/// One step of `scp03-wrap`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrapStep {
    pub plain: Hex,
    pub wrapped: Hex,
}

/// `scp03-wrap`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wrap {
    pub s_enc: Hex,
    pub s_mac: Hex,
    pub level: Byte,
    pub chaining_value: Hex,
    pub counter_start: u64,
    pub steps: Vec<WrapStep>,
    #[serde(default)]
    pub s16: bool,
}

/// The key set of a session vector.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionKeySet {
    pub kvn: Byte,
    pub enc: Hex,
    pub mac: Hex,
    pub dek: Hex,
    pub master: Option<Hex>,
    pub diversification: Option<String>,
}

/// INITIALIZE UPDATE of a session vector.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitUpdate {
    pub command: Hex,
    pub response: Hex,
    pub sw: Hex,
}

/// EXTERNAL AUTHENTICATE of a session vector.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuth {
    pub command: Hex,
    pub derived: bool,
}

/// One command after EXTERNAL AUTHENTICATE.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCommand {
    pub plain: Hex,
    pub wrapped: Hex,
    pub response_plain: Option<Hex>,
    pub response_wrapped: Option<Hex>,
    pub sw: Option<Hex>,
}

/// Expected values of a session vector.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionExpect {
    pub card_challenge: Hex,
    pub card_cryptogram: Hex,
    pub host_cryptogram: Hex,
    pub s_enc: Hex,
    pub s_mac: Hex,
    pub s_rmac: Hex,
}

/// `scp03-session`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub name: String,
    pub keys: SessionKeySet,
    pub sd_aid: Option<Hex>,
    pub security_level: Byte,
    pub i: Byte,
    pub s16: bool,
    pub host_challenge: Hex,
    pub sequence_counter: Hex,
    pub initialize_update: InitUpdate,
    pub external_authenticate: ExtAuth,
    pub commands: Vec<SessionCommand>,
    pub expect: SessionExpect,
}

/// One step of `scp03-channel`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelStep {
    pub plain: Hex,
    pub wrapped: Hex,
    pub response_plain: Option<Hex>,
    pub response_wrapped: Option<Hex>,
    pub sw: Option<Hex>,
}

/// `scp03-channel`: a session whose INITIALIZE UPDATE bytes the source does not give.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: String,
    pub enc: Hex,
    pub mac: Hex,
    pub host_challenge: Hex,
    pub card_challenge: Hex,
    pub card_cryptogram: Option<Hex>,
    pub level: Byte,
    pub s16: bool,
    pub external_authenticate: Hex,
    pub steps: Vec<ChannelStep>,
}

/// A loaded vector file.
#[derive(Debug)]
pub enum VectorFile {
    /// `cmac`.
    Cmac(Vec<Cmac>),
    /// `kdf-ctr-cmac`.
    KdfCtrCmac(Vec<KdfCtrCmac>),
    /// `kcv`.
    Kcv(Vec<Kcv>),
    /// `kdf3-diversify`.
    Kdf3(Vec<Kdf3>),
    /// `scp03-session-keys`.
    SessionKeys(Vec<SessionKeysVector>),
    /// `dek-encrypt`.
    DekEncrypt(Vec<DekEncrypt>),
    /// `scp03-wrap`.
    Wrap(Vec<Wrap>),
    /// `scp03-session`.
    Session(Vec<Session>),
    /// `scp03-channel`.
    Channel(Vec<Channel>),
}

impl VectorFile {
    /// The kind's name as written in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            VectorFile::Cmac(_) => "cmac",
            VectorFile::KdfCtrCmac(_) => "kdf-ctr-cmac",
            VectorFile::Kcv(_) => "kcv",
            VectorFile::Kdf3(_) => "kdf3-diversify",
            VectorFile::SessionKeys(_) => "scp03-session-keys",
            VectorFile::DekEncrypt(_) => "dek-encrypt",
            VectorFile::Wrap(_) => "scp03-wrap",
            VectorFile::Session(_) => "scp03-session",
            VectorFile::Channel(_) => "scp03-channel",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<T> {
    #[allow(dead_code)]
    kind: String,
    #[allow(dead_code)]
    source: String,
    vectors: Vec<T>,
}

/// What a vector must carry beyond its JSON shape, checked when the file is loaded.
trait Shape {
    /// Ok when the vector asserts at least one expected value and is internally complete.
    fn shape(&self) -> Result<(), String>;
}

fn vectors<T: DeserializeOwned + Shape>(text: &str) -> Result<Vec<T>, String> {
    let v = serde_json::from_str::<Envelope<T>>(text)
        .map(|e| e.vectors)
        .map_err(|e| e.to_string())?;
    if v.is_empty() {
        return Err("\"vectors\" is empty: a vector file must hold at least one vector".into());
    }
    for (i, one) in v.iter().enumerate() {
        one.shape().map_err(|e| format!("vector {i}: {e}"))?;
    }
    Ok(v)
}

impl Shape for Cmac {
    fn shape(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Shape for KdfCtrCmac {
    fn shape(&self) -> Result<(), String> {
        if self.output.0.is_empty() || self.output.0.len() * 8 != self.output_bits {
            return Err(format!(
                "output holds {} bytes but output_bits is {}: give the expected output in full",
                self.output.0.len(),
                self.output_bits
            ));
        }
        Ok(())
    }
}

impl Shape for Kcv {
    fn shape(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Shape for Kdf3 {
    fn shape(&self) -> Result<(), String> {
        let expected = [
            &self.enc,
            &self.mac,
            &self.dek,
            &self.kcv_enc,
            &self.kcv_mac,
            &self.kcv_dek,
        ];
        if expected.iter().all(|e| e.is_none()) {
            return Err(
                "no expected value: give at least one of enc, mac, dek, kcv_enc, kcv_mac, kcv_dek"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Shape for SessionKeysVector {
    fn shape(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Shape for DekEncrypt {
    fn shape(&self) -> Result<(), String> {
        if self.plaintext.0.is_empty() {
            return Err("empty plaintext: nothing is encrypted, nothing can be checked".into());
        }
        Ok(())
    }
}

impl Shape for Wrap {
    fn shape(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err("no steps: give at least one plain/wrapped pair".into());
        }
        Ok(())
    }
}

impl Shape for Channel {
    fn shape(&self) -> Result<(), String> {
        if self.steps.is_empty() {
            return Err(format!(
                "{}: no steps: give at least one plain/wrapped pair",
                self.name
            ));
        }
        for (n, c) in self.steps.iter().enumerate() {
            let given = [
                c.response_plain.is_some(),
                c.response_wrapped.is_some(),
                c.sw.is_some(),
            ];
            if given.iter().any(|g| *g) && !given.iter().all(|g| *g) {
                return Err(format!(
                    "{}: step {n} has only part of response_plain, response_wrapped, sw (all three or none)",
                    self.name
                ));
            }
        }
        Ok(())
    }
}

impl Shape for Session {
    fn shape(&self) -> Result<(), String> {
        for (n, c) in self.commands.iter().enumerate() {
            let given = [
                c.response_plain.is_some(),
                c.response_wrapped.is_some(),
                c.sw.is_some(),
            ];
            if given.iter().any(|g| *g) && !given.iter().all(|g| *g) {
                return Err(format!(
                    "{}: command {n} has only part of response_plain, response_wrapped, sw (all three or none)",
                    self.name
                ));
            }
        }
        // A derived EXTERNAL AUTHENTICATE was computed, not seen: its MAC, and the chaining value
        // every later C-MAC starts from, would then be anchored by nothing from the source.
        if self.external_authenticate.derived && self.commands.is_empty() {
            return Err(format!(
                "{}: external_authenticate.derived is true and no command follows; a derived \
                 EXTERNAL AUTHENTICATE needs at least one recorded wrapped command to anchor it",
                self.name
            ));
        }
        Ok(())
    }
}

/// Parses a file's text, dispatching on its `kind`.
pub fn parse(text: &str) -> Result<VectorFile, String> {
    #[derive(Deserialize)]
    struct KindOnly {
        kind: String,
    }
    let kind = serde_json::from_str::<KindOnly>(text)
        .map_err(|e| format!("no readable \"kind\": {e}"))?
        .kind;
    Ok(match kind.as_str() {
        "cmac" => VectorFile::Cmac(vectors(text)?),
        "kdf-ctr-cmac" => VectorFile::KdfCtrCmac(vectors(text)?),
        "kcv" => VectorFile::Kcv(vectors(text)?),
        "kdf3-diversify" => VectorFile::Kdf3(vectors(text)?),
        "scp03-session-keys" => VectorFile::SessionKeys(vectors(text)?),
        "dek-encrypt" => VectorFile::DekEncrypt(vectors(text)?),
        "scp03-wrap" => VectorFile::Wrap(vectors(text)?),
        "scp03-session" => VectorFile::Session(vectors(text)?),
        "scp03-channel" => VectorFile::Channel(vectors(text)?),
        other => return Err(format!("unknown kind '{other}'")),
    })
}
