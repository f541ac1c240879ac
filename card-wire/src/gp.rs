//! GlobalPlatform card-management commands as bytes, and the card's GET STATUS answers
//! parsed — with no I/O, so the same encoders serve a host that sends each command and waits
//! (`kagi::gp`) and a TSM that computes whole scripts for a relay to carry.
//!
//! Commands are built in the clear; a secure channel wraps them afterwards.

use crate::apdu::{ApduError, Command};
use crate::scp03::StaticKeys;
use crate::scp03::crypto::AesKey;
use crate::scp03::putkey::put_key_block;
use crate::tlv::{self, Tag, TlvError};
use thiserror::Error;

/// Largest data block per LOAD / STORE DATA command that still fits a short APDU after
/// SCP03 padding and an S16 MAC.
pub const BLOCK: usize = 200;

/// Why a command could not be built or an answer not read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GpError {
    /// An INSTALL field longer than 255 bytes.
    #[error("an INSTALL field of {0} bytes does not fit")]
    FieldTooLong(usize),
    /// The command does not fit an APDU.
    #[error(transparent)]
    Apdu(#[from] ApduError),
    /// The card's data is not BER-TLV.
    #[error(transparent)]
    Tlv(#[from] TlvError),
    /// The card's answer has the wrong shape.
    #[error("{0}")]
    Malformed(String),
    /// PUT KEY material could not be encrypted.
    #[error("PUT KEY: {0}")]
    PutKey(String),
}

fn lv(out: &mut Vec<u8>, v: &[u8]) -> Result<(), GpError> {
    match v.len() {
        0..=0x7F => out.push(v.len() as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, v.len() as u8]),
        n => return Err(GpError::FieldTooLong(n)),
    }
    out.extend_from_slice(v);
    Ok(())
}

/// The load file kagi's simulator accepts: `C4 ‖ len ‖ (4F package, A0 { 4F module,
/// 50 class }…)`. Real cards take a CAP file's load file data block instead.
pub fn sim_load_file(package: &[u8], modules: &[(Vec<u8>, String)]) -> Vec<u8> {
    let mut lfdb = tlv::tlv(0x4F, package);
    for (m, class) in modules {
        let mut body = tlv::tlv(0x4F, m);
        body.extend(tlv::tlv(0x50, class.as_bytes()));
        lfdb.extend(tlv::tlv(0xA0, &body));
    }
    tlv::tlv(0xC4, &lfdb)
}

/// SHA-256 over the load file data block (the value of `C4`), as INSTALL [for load]
/// carries it.
pub fn load_file_hash(load_file: &[u8]) -> Result<Vec<u8>, GpError> {
    use sha2::{Digest, Sha256};
    let c4 = tlv::parse_single(load_file)?;
    Ok(Sha256::digest(c4.value).to_vec())
}

/// INSTALL [for load] of `package` into the security domain `sd` (empty: the selected one),
/// with the load file's hash when given.
pub fn install_for_load(package: &[u8], sd: &[u8], hash: &[u8]) -> Result<Command, GpError> {
    let mut data = Vec::new();
    lv(&mut data, package)?;
    lv(&mut data, sd)?;
    lv(&mut data, hash)?;
    lv(&mut data, &[])?;
    lv(&mut data, &[])?;
    Ok(Command::new(0x80, 0xE6, 0x02, 0x00)
        .with_data(data)?
        .with_le(256)?)
}

/// The LOAD commands for a load file, in blocks of [`BLOCK`] bytes.
pub fn load_blocks(load_file: &[u8]) -> Result<Vec<Command>, GpError> {
    let blocks: Vec<&[u8]> = load_file.chunks(BLOCK).collect();
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let p1 = if i + 1 == blocks.len() { 0x80 } else { 0x00 };
            Ok(Command::new(0x80, 0xE8, p1, i as u8)
                .with_data(b.to_vec())?
                .with_le(256)?)
        })
        .collect()
}

/// What INSTALL [for install] creates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallSpec {
    /// Executable load file (package) AID.
    pub package: Vec<u8>,
    /// Module (applet class) AID.
    pub module: Vec<u8>,
    /// Instance AID.
    pub instance: Vec<u8>,
    /// Privileges (1 or 3 bytes).
    pub privileges: Vec<u8>,
    /// Install parameters; wrapped in `C9` unless they already start with `C9`.
    pub params: Vec<u8>,
    /// Also make it selectable.
    pub selectable: bool,
}

/// INSTALL [for install (and make selectable)].
pub fn install(spec: &InstallSpec) -> Result<Command, GpError> {
    let params = if spec.params.first() == Some(&0xC9) {
        spec.params.clone()
    } else {
        tlv::tlv(0xC9, &spec.params)
    };
    let mut data = Vec::new();
    lv(&mut data, &spec.package)?;
    lv(&mut data, &spec.module)?;
    lv(&mut data, &spec.instance)?;
    lv(
        &mut data,
        if spec.privileges.is_empty() {
            &[0]
        } else {
            &spec.privileges
        },
    )?;
    lv(&mut data, &params)?;
    lv(&mut data, &[])?;
    let p1 = if spec.selectable { 0x0C } else { 0x04 };
    Ok(Command::new(0x80, 0xE6, p1, 0x00)
        .with_data(data)?
        .with_le(256)?)
}

/// INSTALL [for make selectable].
pub fn make_selectable(instance: &[u8]) -> Result<Command, GpError> {
    let mut data = vec![0, 0];
    lv(&mut data, instance)?;
    data.extend_from_slice(&[0x01, 0x00, 0x00, 0x00]);
    Ok(Command::new(0x80, 0xE6, 0x08, 0x00)
        .with_data(data)?
        .with_le(256)?)
}

/// INSTALL [for personalization] of `instance`: the STORE DATA commands that follow go to it.
pub fn install_for_personalization(instance: &[u8]) -> Result<Command, GpError> {
    let mut data = vec![0, 0];
    lv(&mut data, instance)?;
    data.extend_from_slice(&[0x00, 0x00, 0x00]);
    Ok(Command::new(0x80, 0xE6, 0x20, 0x00)
        .with_data(data)?
        .with_le(256)?)
}

/// STORE DATA of each block (the last with P1 bit `80`); `sensitive` keeps them out of
/// traces.
pub fn store_data(blocks: &[Vec<u8>], sensitive: bool) -> Result<Vec<Command>, GpError> {
    blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let p1 = if i + 1 == blocks.len() { 0x80 } else { 0x00 };
            let cmd = Command::new(0x80, 0xE2, p1, i as u8)
                .with_data(b.clone())?
                .with_le(256)?;
            Ok(if sensitive { cmd.sensitive() } else { cmd })
        })
        .collect()
}

/// A personalisation script cut into STORE DATA blocks of [`BLOCK`] bytes.
pub fn blocks(script: &[u8]) -> Vec<Vec<u8>> {
    script.chunks(BLOCK).map(|c| c.to_vec()).collect()
}

/// DELETE an instance or a load file (`related`: with its instances).
pub fn delete(aid: &[u8], related: bool) -> Result<Command, GpError> {
    Ok(
        Command::new(0x80, 0xE4, 0x00, if related { 0x80 } else { 0x00 })
            .with_data(tlv::tlv(0x4F, aid))?
            .with_le(256)?,
    )
}

/// DELETE of a key (GP Card Specification §11.2): the key version `kvn` (tag `D2`), and
/// with `id` only that key of the version (tag `D0`), else every key of the version.
pub fn delete_key(kvn: u8, id: Option<u8>) -> Result<Command, GpError> {
    let mut data = Vec::new();
    if let Some(id) = id {
        data.extend(tlv::tlv(0xD0, &[id]));
    }
    data.extend(tlv::tlv(0xD2, &[kvn]));
    Ok(Command::new(0x80, 0xE4, 0x00, 0x00)
        .with_data(data)?
        .with_le(256)?)
}

/// SET STATUS of the card (P1 `80`).
pub fn set_card_status(state: u8) -> Command {
    Command::new(0x80, 0xF0, 0x80, state)
}

/// SET STATUS of an application or security domain (P1 `40`).
pub fn set_app_status(aid: &[u8], state: u8) -> Result<Command, GpError> {
    Ok(Command::new(0x80, 0xF0, 0x40, state).with_data(aid.to_vec())?)
}

/// PUT KEY of a whole AES key set encrypted under `dek` (the static DEK of the open
/// session), padded with `pad`; `replace`: the KVN replaced, or `None` to add. Returns the
/// command and the answer the card must give (KVN and key check values).
pub fn put_key(
    dek: &AesKey,
    new: &StaticKeys,
    replace: Option<u8>,
    pad: &[u8; 16],
) -> Result<(Command, Vec<u8>), GpError> {
    let mut data = vec![new.kvn];
    let mut expected = vec![new.kvn];
    for k in [new.enc(), new.mac(), new.dek()] {
        data.extend(put_key_block(dek, k, pad).map_err(|e| GpError::PutKey(e.to_string()))?);
        expected.extend_from_slice(&k.kcv());
    }
    let cmd = Command::new(0x80, 0xD8, replace.unwrap_or(0), 0x81)
        .with_data(data)?
        .with_le(256)?
        .sensitive();
    Ok((cmd, expected))
}

/// GET DATA of the card image number (tag `45`).
pub fn get_cin() -> Result<Command, GpError> {
    Ok(Command::new(0x80, 0xCA, 0x00, 0x45).with_le(256)?)
}

/// The card image number in a GET DATA `45` answer (`45 L CIN`, or the bare value), as
/// upper-case hex.
pub fn parse_cin(data: &[u8]) -> String {
    parse_card_data(0x45, data)
}

/// A one-byte-tag card data object from a GET DATA answer (`tag L value`, or the bare value
/// when the card leaves the tag out), as upper-case hex: the IIN (`42`), the CIN (`45`).
pub fn parse_card_data(tag: u8, data: &[u8]) -> String {
    let v = match data {
        [t, l, rest @ ..] if *t == tag && usize::from(*l) == rest.len() => rest,
        other => other,
    };
    hex::encode_upper(v)
}

/// Which part of the registry GET STATUS reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum StatusScope {
    /// P1 `80`: the issuer security domain.
    IssuerDomain,
    /// P1 `40`: applications and security domains.
    Applications,
    /// P1 `20`: executable load files.
    LoadFiles,
    /// P1 `10`: executable load files and their modules.
    LoadFilesAndModules,
}

impl StatusScope {
    /// The P1 byte.
    pub fn p1(self) -> u8 {
        match self {
            StatusScope::IssuerDomain => 0x80,
            StatusScope::Applications => 0x40,
            StatusScope::LoadFiles => 0x20,
            StatusScope::LoadFilesAndModules => 0x10,
        }
    }
}

/// GET STATUS of `scope`: tagged answers (`tags`) or the legacy format, the first page or
/// the next one (`next`, after `6310`).
pub fn get_status(scope: StatusScope, tags: bool, next: bool) -> Result<Command, GpError> {
    let p2 = if tags { 0x02 } else { 0x00 } | u8::from(next);
    Ok(Command::new(0x80, 0xF2, scope.p1(), p2)
        .with_data(vec![0x4F, 0x00])?
        .with_le(256)?)
}

fn hex_ser<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode_upper(v))
}

/// One registry entry from GET STATUS.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct RegistryEntry {
    /// Which scope listed it.
    pub scope: StatusScope,
    /// AID.
    #[serde(serialize_with = "hex_ser")]
    pub aid: Vec<u8>,
    /// Life-cycle state byte.
    pub life_cycle: u8,
    /// Privileges (1 or 3 bytes).
    #[serde(serialize_with = "hex_ser")]
    pub privileges: Vec<u8>,
    /// Executable load file version (tag `CE`, e.g. `0100` for 1.0), when the card gives it.
    #[serde(serialize_with = "hex_opt_ser")]
    pub version: Option<Vec<u8>>,
    /// Executable modules (tag `84`; scope [`StatusScope::LoadFilesAndModules`]).
    #[serde(serialize_with = "hex_list_ser")]
    pub modules: Vec<Vec<u8>>,
    /// The security domain it is associated with (tag `CC`, GP Card Specification 11.4.3.1),
    /// when the card gives it (the tagged format only).
    #[serde(skip)]
    pub associated_sd: Option<Vec<u8>>,
}

fn hex_opt_ser<S: serde::Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_str(&hex::encode_upper(v)),
        None => s.serialize_none(),
    }
}

fn hex_list_ser<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for m in v {
        seq.serialize_element(&hex::encode_upper(m))?;
    }
    seq.end()
}

impl RegistryEntry {
    /// The life-cycle state as GP names it.
    pub fn life_cycle_name(&self) -> &'static str {
        match (self.scope, self.life_cycle) {
            (StatusScope::IssuerDomain, 0x01) => "OP_READY",
            (StatusScope::IssuerDomain, 0x07) => "INITIALIZED",
            (StatusScope::IssuerDomain, 0x0F) => "SECURED",
            (StatusScope::IssuerDomain, 0x7F) => "CARD_LOCKED",
            (StatusScope::IssuerDomain, 0xFF) => "TERMINATED",
            (StatusScope::LoadFiles | StatusScope::LoadFilesAndModules, 0x01) => "LOADED",
            (_, 0x03) => "INSTALLED",
            (_, 0x07) => "SELECTABLE",
            (_, 0x0F) => "PERSONALIZED",
            (_, x) if x & 0x83 == 0x83 => "LOCKED",
            _ => "application-specific",
        }
    }
}

/// Parses one GET STATUS answer page (tagged `E3` entries, or the legacy format).
pub fn parse_status(
    scope: StatusScope,
    tags: bool,
    data: &[u8],
) -> Result<Vec<RegistryEntry>, GpError> {
    if tags {
        parse_status_tags(scope, data)
    } else {
        parse_status_legacy(scope, data)
    }
}

fn parse_status_tags(scope: StatusScope, data: &[u8]) -> Result<Vec<RegistryEntry>, GpError> {
    let mut out = Vec::new();
    for e3 in tlv::parse_all(data)? {
        if e3.tag != Tag(0xE3) {
            continue;
        }
        let aid = e3.require(Tag(0x4F))?.value.to_vec();
        let life_cycle = e3
            .find(Tag(0x9F70))?
            .and_then(|t| t.value.first().copied())
            .unwrap_or(0);
        let privileges = e3
            .find(Tag(0xC5))?
            .map(|t| t.value.to_vec())
            .unwrap_or_default();
        let version = e3.find(Tag(0xCE))?.map(|t| t.value.to_vec());
        let associated_sd = e3.find(Tag(0xCC))?.map(|t| t.value.to_vec());
        let modules = tlv::find_all(e3.value, Tag(0x84))?
            .iter()
            .map(|t| t.value.to_vec())
            .collect();
        out.push(RegistryEntry {
            scope,
            aid,
            life_cycle,
            privileges,
            version,
            modules,
            associated_sd,
        });
    }
    Ok(out)
}

fn parse_status_legacy(scope: StatusScope, data: &[u8]) -> Result<Vec<RegistryEntry>, GpError> {
    let truncated = || GpError::Malformed("truncated legacy GET STATUS entry".into());
    let mut out = Vec::new();
    let mut rest = data;
    // Each entry: AID length, AID, life cycle, privileges; with P1 10 then the number of
    // modules and each module's length and AID (GP Card Specification 11.4.3.2).
    while let [len, tail @ ..] = rest {
        let n = *len as usize;
        let (aid, tail) = (tail.get(..n).ok_or_else(truncated)?, &tail[n..]);
        let [life_cycle, privilege, tail @ ..] = tail else {
            return Err(truncated());
        };
        let mut modules = Vec::new();
        rest = tail;
        if scope == StatusScope::LoadFilesAndModules {
            let (count, mut t) = rest.split_first().ok_or_else(truncated)?;
            for _ in 0..*count {
                let (m, after) = t.split_first().ok_or_else(truncated)?;
                let m = *m as usize;
                modules.push(after.get(..m).ok_or_else(truncated)?.to_vec());
                t = &after[m..];
            }
            rest = t;
        }
        out.push(RegistryEntry {
            scope,
            aid: aid.to_vec(),
            life_cycle: *life_cycle,
            privileges: vec![*privilege],
            version: None,
            modules,
            associated_sd: None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn legacy_and_tagged_status() {
        let tagged = hex::decode("E3134F08A0000001510000009F70010FC5039EFE80").unwrap();
        let e = parse_status(StatusScope::IssuerDomain, true, &tagged).unwrap();
        assert_eq!(e[0].aid, hex::decode("A000000151000000").unwrap());
        assert_eq!(e[0].life_cycle_name(), "SECURED");
        let legacy = hex::decode("06F04B414749010700").unwrap();
        let e = parse_status(StatusScope::Applications, false, &legacy).unwrap();
        assert_eq!(
            (e[0].life_cycle_name(), e[0].privileges.clone()),
            ("SELECTABLE", vec![0])
        );
        assert!(parse_status(StatusScope::Applications, false, &[0x08, 1, 2]).is_err());
        assert_eq!(e[0].associated_sd, None);
    }

    #[test]
    fn tagged_status_names_the_associated_domain() {
        // GP Card Specification Table 11-36: an application's E3 with its associated
        // security domain's AID under CC (bytes written out by hand).
        let tagged = hex::decode("E3184F0501020304059F700107C50100CC08A000000151000000").unwrap();
        let e = parse_status(StatusScope::Applications, true, &tagged).unwrap();
        assert_eq!(e[0].aid, [1, 2, 3, 4, 5]);
        assert_eq!(
            e[0].associated_sd.as_deref(),
            Some(&[0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00][..])
        );
    }

    #[test]
    fn load_files_with_modules() {
        // Legacy P1 10 (GP Card Specification 11.4.3.2): AID, life cycle, privileges, then the
        // number of modules and each module's length and AID.
        let legacy = hex::decode("0501020304050100020601020304050605AABBCCDDEE").unwrap();
        let e = parse_status(StatusScope::LoadFilesAndModules, false, &legacy).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].aid, [1, 2, 3, 4, 5]);
        assert_eq!(e[0].life_cycle_name(), "LOADED");
        assert_eq!(
            e[0].modules,
            [vec![1, 2, 3, 4, 5, 6], vec![0xAA, 0xBB, 0xCC, 0xDD, 0xEE]]
        );
        assert!(parse_status(StatusScope::LoadFilesAndModules, false, &legacy[..12]).is_err());
        // Tagged: E3 { 4F AID, 9F70 01, CE 0100, 84 module }.
        let tagged =
            hex::decode("E3174F050102030405 9F700101 CE020100 8406010203040506".replace(' ', ""))
                .unwrap();
        let e = parse_status(StatusScope::LoadFilesAndModules, true, &tagged).unwrap();
        assert_eq!(e[0].version.as_deref(), Some(&[1u8, 0][..]));
        assert_eq!(e[0].modules, [vec![1, 2, 3, 4, 5, 6]]);
    }

    #[test]
    fn commands() {
        // INSTALL [for personalization] of an 8-byte AID: 80 E6 20 00 0D 00 00 08 AID 00 00 00 00.
        let c = install_for_personalization(&[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(
            hex::encode_upper(c.to_bytes()),
            "80E620000E000008010203040506070800000000"
        );
        let s = store_data(&blocks(&[0xAA; 450]), true).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].p1(), s[2].p1(), s[2].p2()), (0x00, 0x80, 2));
        assert!(s[0].is_sensitive());
        // DELETE KEY as a real card took it (a trace on reddeveloper.ru, "DELETE Key APDU
        // returns 6A80", sent to another card with 9000): 80 E4 00 00 06 D0 01 01 D2 01 71.
        let k = delete_key(0x71, Some(0x01)).unwrap().to_bytes();
        assert_eq!(hex::encode_upper(&k[..11]), "80E4000006D00101D20171");
        // The whole key version 30: D2 only.
        let k = delete_key(0x30, None).unwrap().to_bytes();
        assert_eq!(hex::encode_upper(&k[..8]), "80E4000003D20130");
        assert!(matches!(
            install(&InstallSpec {
                params: vec![0; 300],
                ..Default::default()
            }),
            Err(GpError::FieldTooLong(_))
        ));
    }

    proptest! {
        #[test]
        fn status_parsers_never_panic(b in proptest::collection::vec(any::<u8>(), 0..80), tags: bool) {
            let _ = parse_status(StatusScope::Applications, tags, &b);
            let _ = parse_status(StatusScope::LoadFilesAndModules, tags, &b);
        }
    }
}
