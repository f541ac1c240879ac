//! Java Card CAP files for loading onto cards: the compact format of CAP versions 2.1 to 2.3
//! (Java Card 2.1 to 3.1 classic), read from a CAP file (a zip whose components are found by
//! name, `…/javacard/Header.cap` and so on) or from an `.ijc` file (the components back to
//! back). It tells the package AID and version, the applets' AIDs, the imported packages and
//! the component sizes, and builds the GlobalPlatform load file: the load file data block (the
//! components in the order the JCVM specification prescribes, Debug never) inside tag `C4`,
//! with its hash. [`CapFile::model`] parses every component for a virtual machine (constant
//! pool, classes, methods, static fields, …) and [`bytecode`] names the instructions.
//!
//! Only bytes come in: nothing here does I/O except the [`CapFile::from_path`] convenience.
//! Every malformed input is a [`CapError`], never a panic.

pub mod bytecode;
mod component;
mod model;

pub use model::{
    ArrayInit, ClassComponent, ClassDescriptor, ClassExport, ClassInfo, ClassRef, CpEntry,
    Descriptor, Directory, FieldDescriptor, Handler, ImplementedInterface, InterfaceInfo,
    MethodComponent, MethodDescriptor, MethodHeader, Model, RefLocation, StaticFieldComponent,
    StaticRef,
};

pub use component::{ALL, AppletRef, Component, Header, LOAD_ORDER, MAGIC, PackageRef};

use std::collections::BTreeMap;
use std::io::Read;
use thiserror::Error;

/// Largest CAP file (and largest single component) kagi reads: far beyond any card's memory,
/// small enough that a crafted zip cannot exhaust the host's.
pub const MAX_CAP: usize = 4 * 1024 * 1024;

/// Why a CAP or `.ijc` file could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CapError {
    /// The zip container could not be read.
    #[error(
        "not a readable CAP file ({0}); a CAP file is a zip archive of components: rebuild it with the Java Card converter"
    )]
    Zip(String),
    /// The file is larger than [`MAX_CAP`] (or a zip member expands beyond it).
    #[error("the CAP file or one of its components is larger than {MAX_CAP} bytes")]
    TooLarge,
    /// A component every CAP file has is missing.
    #[error("the {0} component is missing: the file is not a complete CAP")]
    Missing(Component),
    /// Two files (or two `.ijc` entries) carry the same component.
    #[error("the {0} component appears twice: a CAP holds one package; split it or rebuild it")]
    Duplicate(Component),
    /// A component's first byte is not its tag.
    #[error("{component}: tag {found} where {} belongs; the file is corrupted", component.tag())]
    WrongTag {
        /// The component (from the file name).
        component: Component,
        /// The tag found.
        found: u8,
    },
    /// An `.ijc` entry with a tag no component has.
    #[error("unknown component tag {0} in the load file data block")]
    UnknownTag(u8),
    /// A component's u2 size disagrees with its bytes.
    #[error(
        "{component}: the header says {declared} bytes but {actual} follow; the file is truncated or corrupted"
    )]
    SizeMismatch {
        /// The component.
        component: Component,
        /// The size in the component's header.
        declared: usize,
        /// The bytes that follow the header.
        actual: usize,
    },
    /// A component ends in the middle of a field.
    #[error("{component}: truncated")]
    Truncated {
        /// The component.
        component: Component,
    },
    /// An AID length outside 5..=16.
    #[error("{component}: an AID of {len} bytes (AIDs have 5 to 16)")]
    BadAid {
        /// The component.
        component: Component,
        /// The length byte.
        len: u8,
    },
    /// The Header does not start with `DECAFFED`.
    #[error("Header: magic {0:08X} instead of DECAFFED; not a CAP file")]
    BadMagic(u32),
    /// A CAP format other than 2.1–2.3.
    #[error(
        "CAP format {major}.{minor} is not supported (2.1 to 2.3, the compact format); convert the package for Java Card 3.1 classic or earlier"
    )]
    UnsupportedVersion {
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
    },
    /// Component files of more than one package in one zip.
    #[error("the zip holds components of more than one package ({0} and {1})")]
    TwoPackages(String, String),
    /// A component whose contents break the JCVM specification's rules.
    #[error("{0}: {1}; the file is corrupted or made by an unsupported converter")]
    Malformed(Component, &'static str),
    /// The file could not be read from disk.
    #[error("{0}")]
    Io(String),
}

/// Load file data block hash algorithm (INSTALL [for load]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum HashAlg {
    /// No hash.
    None,
    /// SHA-1 (20 bytes), what most GP 2.1/2.2 cards expect.
    Sha1,
    /// SHA-256 (32 bytes).
    Sha256,
}

impl std::str::FromStr for HashAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(HashAlg::None),
            "sha1" | "sha-1" => Ok(HashAlg::Sha1),
            "sha256" | "sha-256" => Ok(HashAlg::Sha256),
            other => Err(format!("hash '{other}': use sha1, sha256 or none")),
        }
    }
}

impl HashAlg {
    /// The hash of `data` (empty for [`HashAlg::None`]).
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            HashAlg::None => Vec::new(),
            HashAlg::Sha1 => sha1::Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => sha2::Sha256::digest(data).to_vec(),
        }
    }

    /// The algorithm whose digest has `len` bytes (0: none).
    pub fn from_len(len: usize) -> Option<Self> {
        match len {
            0 => Some(HashAlg::None),
            20 => Some(HashAlg::Sha1),
            32 => Some(HashAlg::Sha256),
            _ => None,
        }
    }
}

/// A parsed CAP file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapFile {
    /// Each component's full bytes (tag, u2 size, info).
    components: BTreeMap<Component, Vec<u8>>,
    header: Header,
    applets: Vec<AppletRef>,
    imports: Vec<PackageRef>,
}

/// One component's bytes, checked: tag then u2 size then exactly that many bytes.
fn check_component(c: Component, bytes: &[u8]) -> Result<(), CapError> {
    let [tag, a, b, info @ ..] = bytes else {
        return Err(CapError::Truncated { component: c });
    };
    if *tag != c.tag() {
        return Err(CapError::WrongTag {
            component: c,
            found: *tag,
        });
    }
    let declared = usize::from(u16::from_be_bytes([*a, *b]));
    if declared != info.len() {
        return Err(CapError::SizeMismatch {
            component: c,
            declared,
            actual: info.len(),
        });
    }
    Ok(())
}

impl CapFile {
    /// Reads a CAP (zip) or `.ijc` file from its bytes: a zip when it starts with `PK`,
    /// otherwise the components back to back.
    pub fn from_bytes(data: &[u8]) -> Result<Self, CapError> {
        if data.starts_with(b"PK") {
            Self::from_zip(data)
        } else {
            Self::from_ijc(data)
        }
    }

    /// Reads a CAP file from disk (zip or `.ijc`).
    pub fn from_path(path: &std::path::Path) -> Result<Self, CapError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| CapError::Io(format!("{}: {e}", path.display())))?;
        if meta.len() > MAX_CAP as u64 {
            return Err(CapError::TooLarge);
        }
        let data =
            std::fs::read(path).map_err(|e| CapError::Io(format!("{}: {e}", path.display())))?;
        Self::from_bytes(&data)
    }

    /// Reads a CAP file: a zip whose members `<package path>/javacard/<Component>.cap` are the
    /// components (other members are ignored).
    pub fn from_zip(data: &[u8]) -> Result<Self, CapError> {
        if data.len() > MAX_CAP {
            return Err(CapError::TooLarge);
        }
        let zerr = |e: zip::result::ZipError| CapError::Zip(e.to_string());
        let mut archive = zip::ZipArchive::new(std::io::Cursor::new(data)).map_err(zerr)?;
        let mut components = BTreeMap::new();
        let mut folder: Option<String> = None;
        for i in 0..archive.len() {
            let mut f = archive.by_index(i).map_err(zerr)?;
            let name = f.name().map_err(zerr)?.to_string();
            let (dir, file) = match name.rsplit_once('/') {
                Some((d, f)) => (d, f),
                None => ("", name.as_str()),
            };
            if !(dir == "javacard" || dir.ends_with("/javacard")) {
                continue;
            }
            let Some(c) = ALL.iter().copied().find(|c| c.file_name() == file) else {
                continue;
            };
            match &folder {
                Some(d) if d != dir => return Err(CapError::TwoPackages(d.clone(), dir.into())),
                Some(_) => {}
                None => folder = Some(dir.to_string()),
            }
            if components.contains_key(&c) {
                return Err(CapError::Duplicate(c));
            }
            let mut bytes = Vec::new();
            (&mut f)
                .take(MAX_CAP as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| CapError::Zip(format!("{name}: {e}")))?;
            if bytes.len() > MAX_CAP {
                return Err(CapError::TooLarge);
            }
            components.insert(c, bytes);
        }
        Self::from_components(components)
    }

    /// Reads an `.ijc` file (or a load file data block): components back to back, each tag,
    /// u2 size, info.
    pub fn from_ijc(mut data: &[u8]) -> Result<Self, CapError> {
        if data.len() > MAX_CAP {
            return Err(CapError::TooLarge);
        }
        let mut components = BTreeMap::new();
        while let [tag, a, b, rest @ ..] = data {
            let c = Component::from_tag(*tag).ok_or(CapError::UnknownTag(*tag))?;
            let n = usize::from(u16::from_be_bytes([*a, *b]));
            if rest.len() < n {
                return Err(CapError::SizeMismatch {
                    component: c,
                    declared: n,
                    actual: rest.len(),
                });
            }
            if components.insert(c, data[..3 + n].to_vec()).is_some() {
                return Err(CapError::Duplicate(c));
            }
            data = &rest[n..];
        }
        if let Some(tag) = data.first() {
            let c = Component::from_tag(*tag).ok_or(CapError::UnknownTag(*tag))?;
            return Err(CapError::Truncated { component: c });
        }
        Self::from_components(components)
    }

    fn from_components(components: BTreeMap<Component, Vec<u8>>) -> Result<Self, CapError> {
        for (c, bytes) in &components {
            check_component(*c, bytes)?;
        }
        if let Some(c) = ALL
            .iter()
            .find(|c| c.required() && !components.contains_key(c))
        {
            return Err(CapError::Missing(*c));
        }
        let info = |c: Component| components.get(&c).map(|b| &b[3..]);
        let header = component::header(info(Component::Header).unwrap_or_default())?;
        let applets = match info(Component::Applet) {
            Some(i) => component::applets(i)?,
            None => Vec::new(),
        };
        let imports = component::imports(info(Component::Import).unwrap_or_default())?;
        Ok(CapFile {
            components,
            header,
            applets,
            imports,
        })
    }

    /// The Header component's contents.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The package AID.
    pub fn package_aid(&self) -> &[u8] {
        &self.header.package.aid
    }

    /// The package version `(major, minor)`.
    pub fn version(&self) -> (u8, u8) {
        (self.header.package.major, self.header.package.minor)
    }

    /// The CAP format version `(major, minor)`, e.g. `(2, 1)`.
    pub fn cap_version(&self) -> (u8, u8) {
        (self.header.cap_major, self.header.cap_minor)
    }

    /// The applets the package defines (empty for a library package).
    pub fn applets(&self) -> &[AppletRef] {
        &self.applets
    }

    /// The packages it imports, with the versions it was converted against.
    pub fn imports(&self) -> &[PackageRef] {
        &self.imports
    }

    /// Each component present and its full size in bytes (tag and size included), in tag
    /// order.
    pub fn component_sizes(&self) -> Vec<(Component, usize)> {
        self.components.iter().map(|(c, b)| (*c, b.len())).collect()
    }

    /// A component's full bytes (tag, u2 size, info), if present.
    pub fn component(&self, c: Component) -> Option<&[u8]> {
        self.components.get(&c).map(Vec::as_slice)
    }

    /// The load file data block: the components in [`LOAD_ORDER`] (Descriptor only with
    /// `descriptor`), Debug never.
    pub fn load_file_data_block(&self, descriptor: bool) -> Vec<u8> {
        LOAD_ORDER
            .iter()
            .filter(|c| descriptor || **c != Component::Descriptor)
            .filter_map(|c| self.components.get(c))
            .flatten()
            .copied()
            .collect()
    }

    /// The load file as LOAD carries it: `C4`, BER length, load file data block.
    pub fn load_file(&self, descriptor: bool) -> Vec<u8> {
        wrap_c4(&self.load_file_data_block(descriptor))
    }

    /// The load file data block hash for INSTALL [for load].
    pub fn hash(&self, alg: HashAlg, descriptor: bool) -> Vec<u8> {
        alg.digest(&self.load_file_data_block(descriptor))
    }
}

/// `C4 ‖ BER length ‖ block`.
pub fn wrap_c4(block: &[u8]) -> Vec<u8> {
    let n = block.len();
    let mut out = vec![0xC4];
    match n {
        0..=0x7F => out.push(n as u8),
        0x80..=0xFF => out.extend_from_slice(&[0x81, n as u8]),
        0x100..=0xFFFF => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        _ => out.extend_from_slice(&[0x83, (n >> 16) as u8, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(block);
    out
}

/// Splits `C4 ‖ BER length ‖ block` into the block; `None` when the bytes are not exactly
/// that.
pub fn unwrap_c4(load_file: &[u8]) -> Option<&[u8]> {
    let (n, rest) = match load_file {
        [0xC4, l, rest @ ..] if *l < 0x80 => (usize::from(*l), rest),
        [0xC4, 0x81, l, rest @ ..] if *l >= 0x80 => (usize::from(*l), rest),
        [0xC4, 0x82, a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
        [0xC4, 0x83, a, b, c, rest @ ..] => (
            (usize::from(*a) << 16) | (usize::from(*b) << 8) | usize::from(*c),
            rest,
        ),
        _ => return None,
    };
    (rest.len() == n).then_some(rest)
}
