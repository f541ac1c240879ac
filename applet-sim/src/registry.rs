//! The GlobalPlatform registry, kept in persistent memory: applet and security-domain
//! instances (`reg/<AID>`) and executable load files (`elf/<AID>`), with privileges and life
//! cycles. The runtime instantiates applets from these records, so a card image restores
//! everything.

use crate::store::{Store, StoreError};
use card_wire::aid::Aid;
use card_wire::sw::StatusWord;
use card_wire::tlv::{self, Tag, tlv};

/// The class of the issuer security domain.
pub const ISD_CLASS: &str = "gp.isd";
/// The class of a supplementary security domain.
pub const SD_CLASS: &str = "gp.sd";
/// The class name recorded for modules that come from a CAP file: Java Card bytecode the
/// simulator cannot run yet.
pub const CAP_CLASS: &str = "jc.cap";

/// INSTALL [for install] of a module whose class the card cannot instantiate (a CAP's, or
/// one missing from the class table): `6A81` (function not supported).
pub const SW_CLASS_UNAVAILABLE: StatusWord = StatusWord::FUNCTION_NOT_SUPPORTED;

/// Privilege bits of byte 1 (GP Card Specification Table 6-1).
pub mod privilege {
    /// Security Domain.
    pub const SECURITY_DOMAIN: u8 = 0x80;
    /// DAP Verification.
    pub const DAP_VERIFICATION: u8 = 0x40;
    /// Delegated Management.
    pub const DELEGATED_MANAGEMENT: u8 = 0x20;
    /// Card Lock.
    pub const CARD_LOCK: u8 = 0x10;
    /// Card Terminate.
    pub const CARD_TERMINATE: u8 = 0x08;
    /// Card Reset (default selected).
    pub const CARD_RESET: u8 = 0x04;
    /// CVM Management.
    pub const CVM_MANAGEMENT: u8 = 0x02;
    /// Authorized Management (byte 2).
    pub const AUTHORIZED_MANAGEMENT: u8 = 0x40;
}

/// GP card life-cycle states.
pub mod card_state {
    /// OP_READY.
    pub const OP_READY: u8 = 0x01;
    /// INITIALIZED.
    pub const INITIALIZED: u8 = 0x07;
    /// SECURED.
    pub const SECURED: u8 = 0x0F;
    /// CARD_LOCKED.
    pub const CARD_LOCKED: u8 = 0x7F;
    /// TERMINATED.
    pub const TERMINATED: u8 = 0xFF;
}

/// Application and security-domain life-cycle states.
pub mod app_state {
    /// INSTALLED.
    pub const INSTALLED: u8 = 0x03;
    /// SELECTABLE.
    pub const SELECTABLE: u8 = 0x07;
    /// PERSONALIZED (security domains).
    pub const PERSONALIZED: u8 = 0x0F;
    /// The LOCKED bit (GP: b8 set with the previous state kept).
    pub const LOCKED_BIT: u8 = 0x80;
    /// Executable load file LOADED.
    pub const LOADED: u8 = 0x01;
}

/// What kind of registry entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// The issuer security domain.
    Isd,
    /// A supplementary security domain.
    Sd,
    /// An application.
    App,
}

/// One installed instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// Instance AID.
    pub aid: Aid,
    /// The simulator class that implements it (`gp.isd`, `gp.sd`, `kagi.echo`, …).
    pub class: String,
    /// Life-cycle state.
    pub life_cycle: u8,
    /// Privileges (3 bytes).
    pub privileges: [u8; 3],
    /// Associated security domain (none for the ISD).
    pub sd: Option<Aid>,
    /// The executable load file it was installed from.
    pub elf: Option<Aid>,
    /// Install parameters.
    pub params: Vec<u8>,
}

impl RegistryEntry {
    /// ISD, SSD or application.
    pub fn kind(&self) -> EntryKind {
        if self.class == ISD_CLASS {
            EntryKind::Isd
        } else if self.privileges[0] & privilege::SECURITY_DOMAIN != 0 {
            EntryKind::Sd
        } else {
            EntryKind::App
        }
    }

    /// Whether the entry is the issuer security domain.
    pub fn is_isd(&self) -> bool {
        self.kind() == EntryKind::Isd
    }

    /// Whether SELECT may reach it.
    pub fn selectable(&self) -> bool {
        self.life_cycle & app_state::LOCKED_BIT == 0 && self.life_cycle >= app_state::SELECTABLE
    }

    /// Whether it holds `bit` of privilege byte `byte` (0-based).
    pub fn has_privilege(&self, byte: usize, bit: u8) -> bool {
        self.privileges.get(byte).is_some_and(|b| b & bit != 0)
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = tlv(0x80, self.class.as_bytes());
        v.extend(tlv(0x81, &[self.life_cycle]));
        v.extend(tlv(0x82, &self.privileges));
        if let Some(sd) = &self.sd {
            v.extend(tlv(0x83, sd.as_bytes()));
        }
        if let Some(elf) = &self.elf {
            v.extend(tlv(0x84, elf.as_bytes()));
        }
        v.extend(tlv(0x85, &self.params));
        v
    }

    fn decode(aid: Aid, data: &[u8]) -> Option<Self> {
        let get = |t| tlv::find(data, Tag(t)).ok().flatten().map(|x| x.value);
        let privileges = get(0x82)?;
        Some(RegistryEntry {
            aid,
            class: String::from_utf8(get(0x80)?.to_vec()).ok()?,
            life_cycle: *get(0x81)?.first()?,
            privileges: [
                *privileges.first()?,
                *privileges.get(1)?,
                *privileges.get(2)?,
            ],
            sd: get(0x83).and_then(|a| Aid::new(a).ok()),
            elf: get(0x84).and_then(|a| Aid::new(a).ok()),
            params: get(0x85).unwrap_or_default().to_vec(),
        })
    }
}

/// An executable load file: a package AID and the modules (applet classes) it provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadFile {
    /// Package AID.
    pub aid: Aid,
    /// The security domain it is associated with.
    pub sd: Aid,
    /// (module AID, simulator class name).
    pub modules: Vec<(Aid, String)>,
}

impl LoadFile {
    /// Encodes the load file data block kagi's simulator accepts in LOAD: `4F` package AID,
    /// then one `A0 { 4F module AID, 50 class name }` per module.
    pub fn data_block(package: &Aid, modules: &[(Aid, String)]) -> Vec<u8> {
        let mut v = tlv(0x4F, package.as_bytes());
        for (m, class) in modules {
            let mut body = tlv(0x4F, m.as_bytes());
            body.extend(tlv(0x50, class.as_bytes()));
            v.extend(tlv(0xA0, &body));
        }
        v
    }

    /// Parses a load file data block (see [`LoadFile::data_block`]).
    pub fn parse_data_block(data: &[u8]) -> Option<(Aid, Vec<(Aid, String)>)> {
        let items = tlv::parse_all(data).ok()?;
        let mut package = None;
        let mut modules = Vec::new();
        for t in items {
            match t.tag.0 {
                0x4F => package = Some(Aid::new(t.value).ok()?),
                0xA0 => {
                    let m = Aid::new(tlv::find(t.value, Tag(0x4F)).ok()??.value).ok()?;
                    let c = String::from_utf8(tlv::find(t.value, Tag(0x50)).ok()??.value.to_vec())
                        .ok()?;
                    modules.push((m, c));
                }
                _ => return None,
            }
        }
        Some((package?, modules))
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = tlv(0x83, self.sd.as_bytes());
        v.extend(Self::data_block(&self.aid, &self.modules));
        v
    }

    fn decode(aid: Aid, data: &[u8]) -> Option<Self> {
        let sd = Aid::new(tlv::find(data, Tag(0x83)).ok()??.value).ok()?;
        let rest: Vec<u8> = tlv::parse_all(data)
            .ok()?
            .into_iter()
            .filter(|t| t.tag.0 != 0x83)
            .flat_map(|t| tlv(t.tag.0, t.value))
            .collect();
        let (_, modules) = Self::parse_data_block(&rest)?;
        Some(LoadFile { aid, sd, modules })
    }
}

fn key(prefix: &str, aid: &Aid) -> String {
    format!("{prefix}/{}", card_wire::hex_upper(aid.as_bytes()))
}

fn aid_from_key(k: &str) -> Option<Aid> {
    let hex = k.rsplit('/').next()?;
    Aid::new(&hex::decode(hex).ok()?).ok()
}

/// Every instance, in AID order.
pub fn entries(store: &Store) -> Vec<RegistryEntry> {
    store
        .keys("reg/")
        .iter()
        .filter_map(|k| RegistryEntry::decode(aid_from_key(k)?, store.get(k)?))
        .collect()
}

/// One instance.
pub fn entry(store: &Store, aid: &Aid) -> Option<RegistryEntry> {
    RegistryEntry::decode(aid.clone(), store.get(&key("reg", aid))?)
}

/// Writes an instance record.
pub fn put_entry(store: &mut Store, e: &RegistryEntry) -> Result<(), StoreError> {
    store.put(&key("reg", &e.aid), &e.encode())
}

/// Removes an instance record and its applet data (for a Java Card applet, its registration
/// in its package's context: the objects only it reached are then garbage).
pub fn remove_entry(store: &mut Store, aid: &Aid) -> Result<(), StoreError> {
    if let Some(elf) = entry(store, aid).and_then(|e| e.elf) {
        store.remove(&format!(
            "{}{}",
            context_prefix(&elf),
            kagi_jcvm::instance_record(aid.as_bytes())
        ))?;
    }
    store.remove(&key("reg", aid))?;
    store.remove_prefix(&format!("{}/", data_prefix(aid)))?;
    store.remove_prefix(&format!("{}/", sd_prefix(aid)))
}

/// Every load file.
pub fn load_files(store: &Store) -> Vec<LoadFile> {
    store
        .keys("elf/")
        .iter()
        .filter_map(|k| LoadFile::decode(aid_from_key(k)?, store.get(k)?))
        .collect()
}

/// One load file.
pub fn load_file(store: &Store, aid: &Aid) -> Option<LoadFile> {
    LoadFile::decode(aid.clone(), store.get(&key("elf", aid))?)
}

/// Writes a load file record.
pub fn put_load_file(store: &mut Store, lf: &LoadFile) -> Result<(), StoreError> {
    store.put(&key("elf", &lf.aid), &lf.encode())
}

/// Removes a load file record (and a CAP package's load file data block).
pub fn remove_load_file(store: &mut Store, aid: &Aid) -> Result<(), StoreError> {
    store.remove_prefix(&context_prefix(aid))?;
    store.remove(&block_key(aid))?;
    store.remove(&version_key(aid))?;
    store.remove(&key("elf", aid))
}

/// Where a CAP package's load file data block is kept: `jc.pkg/<AID>`.
pub fn block_key(elf: &Aid) -> String {
    format!("jc.pkg/{}", elf.to_hex())
}

fn version_key(aid: &Aid) -> String {
    key("elfv", aid)
}

/// The version (major, minor) of a package loaded from a CAP.
pub fn package_version(store: &Store, aid: &Aid) -> Option<[u8; 2]> {
    store.get(&version_key(aid))?.try_into().ok()
}

/// Writes the version of a package loaded from a CAP.
pub fn put_package_version(
    store: &mut Store,
    aid: &Aid,
    version: [u8; 2],
) -> Result<(), StoreError> {
    store.put(&version_key(aid), &version)
}

/// Where an applet keeps its persistent data: `app/<AID>`.
pub fn data_prefix(aid: &Aid) -> String {
    key("app", aid)
}

/// Where the Java Card context of CAP package `elf` keeps its records (static fields, objects,
/// the instances' registrations), shared by all its instances: `jcctx/<AID>/`.
pub fn context_prefix(elf: &Aid) -> String {
    format!("{}/", key("jcctx", elf))
}

/// Where a security domain keeps its keys and counters: `sd/<AID>`.
pub fn sd_prefix(aid: &Aid) -> String {
    key("sd", aid)
}

/// The card life-cycle state.
pub fn card_life_cycle(store: &Store) -> u8 {
    store
        .get("card/lc")
        .and_then(|v| v.first().copied())
        .unwrap_or(card_state::SECURED)
}
