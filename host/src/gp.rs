//! GlobalPlatform card management on the host: selecting a security domain, reading what it
//! reports (card recognition data, key information, sequence counter, CPLC) and listing its
//! registry with GET STATUS (paged with `6310`, legacy format when tags are refused).

use crate::channel::ApduChannel;
use crate::error::{Error, Result, expect_success};
use card_wire::apdu::Command;
use card_wire::sw::StatusWord;
use card_wire::tlv::{self, Tag};
use serde::Serialize;

/// Well-known ISD AIDs, tried in order when none is given and the default SELECT fails.
pub const KNOWN_ISD_AIDS: [&[u8]; 3] = [
    &[0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00, 0x00],
    &[0xA0, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00],
    &[0xA0, 0x00, 0x00, 0x01, 0x51, 0x00, 0x00],
];

/// What a security domain's SELECT response says.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SelectedDomain {
    /// The AID from the FCI (tag `84`), or the one selected.
    #[serde(serialize_with = "hex_ser")]
    pub aid: Vec<u8>,
    /// Maximum command data length (`9F65`), when given.
    pub max_command_data: Option<u32>,
    /// Card recognition data, when the FCI carries it.
    pub recognition: Option<CardRecognition>,
}

/// Card recognition data (GP Card Specification Annex H).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct CardRecognition {
    /// GlobalPlatform version, e.g. "2.3.1".
    pub gp_version: Option<String>,
    /// Secure channel protocol (3 = SCP03) and its `i`; in JSON `{"protocol": "03", "i":
    /// "70"}` (hex, as the text output shows them).
    #[serde(serialize_with = "scp_ser")]
    pub scp: Option<(u8, u8)>,
}

fn hex_ser<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode_upper(v))
}

/// One byte as two hex digits (KVNs, key types, key ids), as kagi prints them.
fn hex_u8<S: serde::Serializer>(v: &u8, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:02X}"))
}

fn scp_ser<S: serde::Serializer>(v: &Option<(u8, u8)>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    match v {
        None => s.serialize_none(),
        Some((p, i)) => {
            let mut m = s.serialize_map(Some(2))?;
            m.serialize_entry("protocol", &format!("{p:02X}"))?;
            m.serialize_entry("i", &format!("{i:02X}"))?;
            m.end()
        }
    }
}

const GP_OID: [u8; 6] = [0x2A, 0x86, 0x48, 0x86, 0xFC, 0x6B];

/// Parses card recognition data (the value of tag `73`, or a `66`/`73` wrapper around it).
pub fn parse_recognition(data: &[u8]) -> Result<CardRecognition> {
    let mut out = CardRecognition::default();
    let body = match tlv::find(data, Tag(0x73))? {
        Some(t) => t.value,
        None => data,
    };
    for item in tlv::parse_all(body)? {
        let oid = match tlv::find(item.value, Tag(0x06)) {
            Ok(Some(o)) if o.value.starts_with(&GP_OID) => &o.value[GP_OID.len()..],
            _ => continue,
        };
        match (item.tag.0, oid) {
            (0x60, [0x02, v @ ..]) => {
                out.gp_version = Some(
                    v.iter()
                        .map(|b| b.to_string())
                        .collect::<Vec<_>>()
                        .join("."),
                )
            }
            (0x64, [0x04, scp, i, ..]) => out.scp = Some((*scp, *i)),
            _ => {}
        }
    }
    Ok(out)
}

/// Parses a SELECT response (FCI) of a security domain.
pub fn parse_fci(fci: &[u8], selected: &[u8]) -> Result<SelectedDomain> {
    let aid = match tlv::find(fci, Tag(0x84))? {
        Some(t) => t.value.to_vec(),
        None => selected.to_vec(),
    };
    let max_command_data = tlv::find(fci, Tag(0x9F65))?
        .map(|t| t.value.iter().fold(0u32, |a, b| (a << 8) | *b as u32));
    let recognition = match tlv::find(fci, Tag(0x73))? {
        Some(t) => Some(parse_recognition(t.value)?),
        None => None,
    };
    Ok(SelectedDomain {
        aid,
        max_command_data,
        recognition,
    })
}

/// SELECT by AID (`00 A4 04 00`), returning the FCI.
pub fn select(ch: &mut impl ApduChannel, aid: &[u8]) -> Result<Vec<u8>> {
    let cmd = Command::new(0x00, 0xA4, 0x04, 0x00)
        .with_data(aid.to_vec())?
        .with_le(256)?;
    expect_success("SELECT", ch.transmit(&cmd)?)
}

/// Selects the security domain `aid`, or the card's default one (then the well-known ISD
/// AIDs) when `aid` is `None`.
pub fn select_domain(ch: &mut impl ApduChannel, aid: Option<&[u8]>) -> Result<SelectedDomain> {
    if let Some(aid) = aid {
        let fci = select(ch, aid)?;
        return parse_fci(&fci, aid);
    }
    let default = Command::new(0x00, 0xA4, 0x04, 0x00).with_le(256)?;
    let r = ch.transmit(&default)?;
    if r.sw.is_success() && tlv::find(&r.data, Tag(0x84)).ok().flatten().is_some() {
        return parse_fci(&r.data, &[]);
    }
    let mut last = r.sw;
    for known in KNOWN_ISD_AIDS {
        match select(ch, known) {
            Ok(fci) => return parse_fci(&fci, known),
            Err(Error::Status { sw, .. }) => last = sw,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Status {
        command: "SELECT of the issuer security domain (give its AID with --sd)",
        sw: last,
    })
}

/// The card image number (GET DATA `45` of the selected security domain), hex; `None` when
/// the card has none.
pub fn card_image_number(ch: &mut impl ApduChannel) -> Result<Option<String>> {
    Ok(get_data(ch, 0x0045)?.map(|d| card_wire::gp::parse_cin(&d)))
}

/// The issuer identification number (GET DATA `42` of the selected security domain), hex;
/// `None` when the card has none.
pub fn issuer_identification_number(ch: &mut impl ApduChannel) -> Result<Option<String>> {
    Ok(get_data(ch, 0x0042)?.map(|d| card_wire::gp::parse_card_data(0x42, &d)))
}

/// The card's CPLC (GET DATA `9F7F`): the raw 42 bytes as hex and the decoded fields, dates
/// relative to `today` (see [`card_wire::cplc`] for the decade assumption); `None` when the
/// card has none.
pub fn cplc(
    ch: &mut impl ApduChannel,
    today: card_wire::cplc::DayOfYear,
) -> Result<Option<(String, card_wire::cplc::Cplc)>> {
    let Some(d) = get_data(ch, 0x9F7F)? else {
        return Ok(None);
    };
    let decoded = card_wire::cplc::parse_cplc(&d, today)
        .map_err(|e| Error::Protocol(format!("GET DATA 9F7F: {e}")))?;
    let raw = match d.as_slice() {
        [0x9F, 0x7F, 0x2A, rest @ ..] => rest,
        other => other,
    };
    Ok(Some((hex::encode_upper(raw), decoded)))
}

/// Today (UTC) as the reference day for CPLC dates.
pub fn today_utc() -> card_wire::cplc::DayOfYear {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    card_wire::cplc::DayOfYear::from_unix_days((secs / 86_400) as i64)
}

/// GET DATA (`80 CA P1 P2`); `Ok(None)` when the card has no such object (`6A88`/`6A82`).
pub fn get_data(ch: &mut impl ApduChannel, tag: u16) -> Result<Option<Vec<u8>>> {
    let [p1, p2] = tag.to_be_bytes();
    let cmd = Command::new(0x80, 0xCA, p1, p2).with_le(256)?;
    let r = ch.transmit(&cmd)?;
    match r.sw {
        StatusWord::SUCCESS => Ok(Some(r.data)),
        StatusWord::REFERENCED_DATA_NOT_FOUND
        | StatusWord::NOT_FOUND
        | StatusWord::INCORRECT_P1P2 => Ok(None),
        sw => Err(Error::Status {
            command: "GET DATA",
            sw,
        }),
    }
}

/// One key of the key information template (`E0`/`C0`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyInfo {
    /// Key identifier (hex in JSON).
    #[serde(serialize_with = "hex_u8")]
    pub id: u8,
    /// Key version number (hex in JSON).
    #[serde(serialize_with = "hex_u8")]
    pub version: u8,
    /// Key type (`88` AES, `80` DES, …; hex in JSON).
    #[serde(serialize_with = "hex_u8")]
    pub key_type: u8,
    /// Key length in bytes (of the first component: an RSA key's modulus).
    pub length: u16,
}

impl KeyInfo {
    /// The key type's name (GP Card Specification table "Key Type Coding").
    pub fn type_name(&self) -> &'static str {
        match self.key_type {
            0x80 => "DES",
            0x81 => "3DES (reserved)",
            0x82 => "3DES-CBC",
            0x83 => "DES-ECB",
            0x84 => "DES-CBC",
            0x85 => "TLS PSK",
            0x88 => "AES",
            0x90 => "HMAC-SHA1",
            0x91 => "HMAC-SHA1-160",
            0xA0 => "RSA public e",
            0xA1 => "RSA public N",
            0xA2 => "RSA private N",
            0xA3 => "RSA private d",
            0xB0 => "ECC public",
            0xB1 => "ECC private",
            _ => "other",
        }
    }
}

/// Parses a key information template: each `C0` in the basic format (id, version, key type,
/// one length byte) or the extended one (id, version, `FF`, key type, two length bytes, …; GP
/// Card Specification 2.2.1 §11.3.3.1, as GlobalPlatformPro's `GPKeyInfo` reads it). The
/// first component names the key: an RSA key's modulus.
pub fn parse_key_info(data: &[u8]) -> Result<Vec<KeyInfo>> {
    let mut out = Vec::new();
    for c0 in tlv::find_all(data, Tag(0xC0))? {
        let (id, version, key_type, length) = match *c0.value {
            [id, version, 0xFF, key_type, hi, lo, ..] => {
                (id, version, key_type, u16::from_be_bytes([hi, lo]))
            }
            [_, _, 0xFF, ..] => {
                return Err(Error::Protocol(format!(
                    "extended key information entry of {} bytes is too short",
                    c0.value.len()
                )));
            }
            [id, version, key_type, length, ..] => (id, version, key_type, u16::from(length)),
            _ => {
                return Err(Error::Protocol(format!(
                    "key information entry of {} bytes is too short",
                    c0.value.len()
                )));
            }
        };
        out.push(KeyInfo {
            id,
            version,
            key_type,
            length,
        });
    }
    Ok(out)
}

pub use card_wire::gp::{RegistryEntry, StatusScope};

/// GET STATUS for `scope`, following `6310` pages; falls back to the legacy format when the
/// card refuses tags (`6A86`). An empty scope (`6A88`) is an empty list.
pub fn get_status(ch: &mut impl ApduChannel, scope: StatusScope) -> Result<Vec<RegistryEntry>> {
    let mut tags = true;
    let mut entries = Vec::new();
    let mut next = false;
    loop {
        let cmd = card_wire::gp::get_status(scope, tags, next)?;
        let r = ch.transmit(&cmd)?;
        match r.sw {
            StatusWord::SUCCESS | StatusWord::MORE_DATA_AVAILABLE => {
                let mut page = card_wire::gp::parse_status(scope, tags, &r.data)?;
                if page.is_empty() && r.sw == StatusWord::MORE_DATA_AVAILABLE {
                    return Err(Error::Protocol(
                        "GET STATUS answered 6310 with no entries".into(),
                    ));
                }
                entries.append(&mut page);
                if r.sw == StatusWord::SUCCESS {
                    return Ok(entries);
                }
                next = true;
            }
            StatusWord::INCORRECT_P1P2 if tags && !next => tags = false,
            StatusWord::REFERENCED_DATA_NOT_FOUND if !next => return Ok(entries),
            sw => {
                return Err(Error::Status {
                    command: "GET STATUS",
                    sw,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognition_data() {
        // 73 { 06 GP-OID.1, 60 { 06 GP-OID.2.2.3.1 }, 64 { 06 GP-OID.4.3.70 } }
        let data = hex::decode(
            "7324 0607 2A864886FC6B01 600C 060A 2A864886FC6B02020301 640B 0609 2A864886FC6B040370"
                .replace(' ', ""),
        )
        .unwrap();
        let r = parse_recognition(&data).unwrap();
        assert_eq!(r.gp_version.as_deref(), Some("2.3.1"));
        assert_eq!(r.scp, Some((3, 0x70)));
    }
}

/// Card content management under an open secure channel (GP Card Specification §11): the
/// commands of [`card_wire::gp`], sent one by one, each answer checked.
pub mod manage {
    use super::*;
    use card_wire::gp as cmd;
    use card_wire::scp03::StaticKeys;
    use card_wire::scp03::crypto::AesKey;

    pub use card_wire::gp::{BLOCK, InstallSpec, load_file_hash, sim_load_file};

    fn gp_command(ch: &mut impl ApduChannel, name: &'static str, cmd: Command) -> Result<Vec<u8>> {
        expect_success(name, ch.transmit(&cmd)?)
    }

    /// INSTALL [for load] then LOAD in blocks. `sd` is the security domain the load file
    /// goes to (`None`: the selected one).
    pub fn load(
        ch: &mut impl ApduChannel,
        package: &[u8],
        sd: Option<&[u8]>,
        load_file: &[u8],
        with_hash: bool,
    ) -> Result<()> {
        let hash = if with_hash {
            load_file_hash(load_file)?
        } else {
            Vec::new()
        };
        gp_command(
            ch,
            "INSTALL [for load]",
            cmd::install_for_load(package, sd.unwrap_or_default(), &hash)?,
        )?;
        for block in cmd::load_blocks(load_file)? {
            gp_command(ch, "LOAD", block)?;
        }
        Ok(())
    }

    /// INSTALL [for install (and make selectable)].
    pub fn install(ch: &mut impl ApduChannel, spec: &InstallSpec) -> Result<()> {
        gp_command(ch, "INSTALL [for install]", cmd::install(spec)?)?;
        Ok(())
    }

    /// INSTALL [for make selectable].
    pub fn make_selectable(ch: &mut impl ApduChannel, instance: &[u8]) -> Result<()> {
        gp_command(
            ch,
            "INSTALL [for make selectable]",
            cmd::make_selectable(instance)?,
        )?;
        Ok(())
    }

    /// INSTALL [for personalization] of `instance`, then STORE DATA with each block (the
    /// last with P1 bit `80`). `sensitive` keeps the blocks out of traces.
    pub fn personalize(
        ch: &mut impl ApduChannel,
        instance: &[u8],
        blocks: &[Vec<u8>],
        sensitive: bool,
    ) -> Result<Vec<u8>> {
        gp_command(
            ch,
            "INSTALL [for personalization]",
            cmd::install_for_personalization(instance)?,
        )?;
        store_data(ch, blocks, sensitive)
    }

    /// STORE DATA blocks to the selected security domain (or the applet being personalised).
    /// Returns the response data of the last block (e.g. a public key generated on the card).
    pub fn store_data(
        ch: &mut impl ApduChannel,
        blocks: &[Vec<u8>],
        sensitive: bool,
    ) -> Result<Vec<u8>> {
        let mut last = Vec::new();
        for c in cmd::store_data(blocks, sensitive)? {
            last = gp_command(ch, "STORE DATA", c)?;
        }
        Ok(last)
    }

    /// DELETE an instance or a load file (`related`: with its instances).
    pub fn delete(ch: &mut impl ApduChannel, aid: &[u8], related: bool) -> Result<()> {
        gp_command(ch, "DELETE", cmd::delete(aid, related)?)?;
        Ok(())
    }

    /// `cmd` with a delegated-management token by `signer` (the card issuer's token key)
    /// over what [`card_wire::dm::token_data`] names.
    pub fn with_token(cmd: Command, signer: &dyn card_wire::dap::DapSigner) -> Result<Command> {
        let data = card_wire::dm::token_data(&cmd)?;
        let token = signer.sign(&data).map_err(Error::Keys)?;
        Ok(card_wire::dm::with_token(&cmd, &token)?)
    }

    /// [`load`] by a domain under delegated management: INSTALL [for load] (into the
    /// selected domain) carries a token. Returns the last LOAD's answer: the card's
    /// confirmation, for [`card_wire::dm::verify_receipt`].
    pub fn load_delegated(
        ch: &mut impl ApduChannel,
        package: &[u8],
        load_file: &[u8],
        signer: &dyn card_wire::dap::DapSigner,
    ) -> Result<Vec<u8>> {
        let hash = load_file_hash(load_file)?;
        let c = with_token(cmd::install_for_load(package, &[], &hash)?, signer)?;
        gp_command(ch, "INSTALL [for load] with a token", c)?;
        let mut last = Vec::new();
        for block in cmd::load_blocks(load_file)? {
            last = gp_command(ch, "LOAD", block)?;
        }
        Ok(last)
    }

    /// [`install`] with a delegated-management token; returns the card's confirmation.
    pub fn install_delegated(
        ch: &mut impl ApduChannel,
        spec: &InstallSpec,
        signer: &dyn card_wire::dap::DapSigner,
    ) -> Result<Vec<u8>> {
        let c = with_token(cmd::install(spec)?, signer)?;
        gp_command(ch, "INSTALL [for install] with a token", c)
    }

    /// [`delete`] with a delegated-management token; returns the card's confirmation.
    pub fn delete_delegated(
        ch: &mut impl ApduChannel,
        aid: &[u8],
        related: bool,
        signer: &dyn card_wire::dap::DapSigner,
    ) -> Result<Vec<u8>> {
        let c = with_token(cmd::delete(aid, related)?, signer)?;
        gp_command(ch, "DELETE with a token", c)
    }

    /// DELETE of the key version `kvn` (with `id`: only that key of it). Cards refuse the
    /// key set of the open session and their last one (`6985`), an unknown key (`6A88`).
    pub fn delete_key(ch: &mut impl ApduChannel, kvn: u8, id: Option<u8>) -> Result<()> {
        gp_command(ch, "DELETE KEY", cmd::delete_key(kvn, id)?)?;
        Ok(())
    }

    /// PUT KEY of a DAP verification public key (key 01 of version `kvn`; `replace`: the
    /// version replaced). The card answers the key version (no check value).
    pub fn put_dap_key(
        ch: &mut impl ApduChannel,
        kvn: u8,
        replace: Option<u8>,
        key: &card_wire::dap::DapPublicKey,
    ) -> Result<()> {
        let answer = gp_command(
            ch,
            "PUT KEY",
            card_wire::dap::put_dap_key(kvn, replace, key)?,
        )?;
        if answer.first() != Some(&kvn) {
            return Err(Error::KeyCheck {
                got: answer,
                expected: vec![kvn],
            });
        }
        Ok(())
    }

    /// SET STATUS of the card (P1 `80`).
    pub fn set_card_status(ch: &mut impl ApduChannel, state: u8) -> Result<()> {
        gp_command(ch, "SET STATUS", cmd::set_card_status(state))?;
        Ok(())
    }

    /// SET STATUS of an application or security domain (P1 `40`): `80` lock, `00` unlock, or
    /// an application-specific state.
    pub fn set_app_status(ch: &mut impl ApduChannel, aid: &[u8], state: u8) -> Result<()> {
        gp_command(ch, "SET STATUS", cmd::set_app_status(aid, state)?)?;
        Ok(())
    }

    /// PUT KEY of a whole AES key set, encrypted under `dek` (the static DEK of the open
    /// session). `replace`: the KVN replaced, or `None` to add. The card's key check values
    /// are verified; returns them.
    pub fn put_key(
        ch: &mut impl ApduChannel,
        dek: &AesKey,
        new: &StaticKeys,
        replace: Option<u8>,
    ) -> Result<Vec<u8>> {
        let mut pad = [0u8; 16];
        getrandom::fill(&mut pad).map_err(|e| Error::Keys(format!("random padding: {e}")))?;
        let (c, expected) = cmd::put_key(dek, new, replace, &pad)?;
        let answer = gp_command(ch, "PUT KEY", c)?;
        if answer != expected {
            return Err(Error::KeyCheck {
                got: answer,
                expected,
            });
        }
        Ok(answer)
    }
}
