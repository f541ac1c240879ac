//! The components of a CAP file (JCVM specification chapter 6): their tags and names, and the
//! Header, Applet and Import components (the rest are parsed in `model`).

use crate::CapError;

/// A CAP component, by its tag (JCVM specification Table 6-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Component {
    /// `COMPONENT_Header` (1).
    Header,
    /// `COMPONENT_Directory` (2).
    Directory,
    /// `COMPONENT_Applet` (3).
    Applet,
    /// `COMPONENT_Import` (4).
    Import,
    /// `COMPONENT_ConstantPool` (5).
    ConstantPool,
    /// `COMPONENT_Class` (6).
    Class,
    /// `COMPONENT_Method` (7).
    Method,
    /// `COMPONENT_StaticField` (8).
    StaticField,
    /// `COMPONENT_ReferenceLocation` (9).
    RefLocation,
    /// `COMPONENT_Export` (10).
    Export,
    /// `COMPONENT_Descriptor` (11).
    Descriptor,
    /// `COMPONENT_Debug` (12): never sent to a card.
    Debug,
}

/// Every component, in tag order.
pub const ALL: [Component; 12] = [
    Component::Header,
    Component::Directory,
    Component::Applet,
    Component::Import,
    Component::ConstantPool,
    Component::Class,
    Component::Method,
    Component::StaticField,
    Component::RefLocation,
    Component::Export,
    Component::Descriptor,
    Component::Debug,
];

/// The order of the components in a load file data block (JCVM specification §6.2: Header,
/// Directory, Import, Applet, Class, Method, StaticField, Export, ConstantPool, RefLocation,
/// then the optional Descriptor). Debug is never part of it.
pub const LOAD_ORDER: [Component; 11] = [
    Component::Header,
    Component::Directory,
    Component::Import,
    Component::Applet,
    Component::Class,
    Component::Method,
    Component::StaticField,
    Component::Export,
    Component::ConstantPool,
    Component::RefLocation,
    Component::Descriptor,
];

impl Component {
    /// The component's tag byte.
    pub fn tag(self) -> u8 {
        ALL.iter().position(|c| *c == self).unwrap_or(0) as u8 + 1
    }

    /// The component with tag `tag`, if any.
    pub fn from_tag(tag: u8) -> Option<Self> {
        ALL.get(usize::from(tag).checked_sub(1)?).copied()
    }

    /// The file name inside a CAP's `javacard/` folder (`Header.cap`, …).
    pub fn file_name(self) -> &'static str {
        match self {
            Component::Header => "Header.cap",
            Component::Directory => "Directory.cap",
            Component::Applet => "Applet.cap",
            Component::Import => "Import.cap",
            Component::ConstantPool => "ConstantPool.cap",
            Component::Class => "Class.cap",
            Component::Method => "Method.cap",
            Component::StaticField => "StaticField.cap",
            Component::RefLocation => "RefLocation.cap",
            Component::Export => "Export.cap",
            Component::Descriptor => "Descriptor.cap",
            Component::Debug => "Debug.cap",
        }
    }

    /// Whether every CAP file must have it (JCVM §6.2: Header, Directory, Import,
    /// ConstantPool, Class, Method, StaticField, RefLocation; Descriptor too, but a card may be
    /// sent a load file without it, so kagi does not insist).
    pub fn required(self) -> bool {
        matches!(
            self,
            Component::Header
                | Component::Directory
                | Component::Import
                | Component::ConstantPool
                | Component::Class
                | Component::Method
                | Component::StaticField
                | Component::RefLocation
        )
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.file_name().trim_end_matches(".cap"))
    }
}

/// A package's AID and version (`package_info`, JCVM §6.4).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PackageRef {
    /// Package AID.
    #[serde(serialize_with = "hex_ser")]
    pub aid: Vec<u8>,
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
}

impl PackageRef {
    /// The version as `major.minor`.
    pub fn version(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

/// An applet the package defines (Applet component).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AppletRef {
    /// Applet (module) AID.
    #[serde(serialize_with = "hex_ser")]
    pub aid: Vec<u8>,
    /// Offset of its `install` method in the Method component.
    pub install_method_offset: u16,
}

fn hex_ser<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode_upper(v))
}

/// What the Header component says.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Header {
    /// CAP file format major version (2).
    pub cap_major: u8,
    /// CAP file format minor version (1 to 3).
    pub cap_minor: u8,
    /// Flags (`01` int, `02` export, `04` applet).
    pub flags: u8,
    /// The package itself.
    pub package: PackageRef,
    /// The package name (CAP 2.2 and later), when present.
    pub package_name: Option<String>,
}

/// A cursor over a component's `info` bytes that fails with the component's name instead of
/// panicking.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    component: Component,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], component: Component) -> Self {
        Reader { data, component }
    }

    fn truncated(&self) -> CapError {
        CapError::Truncated {
            component: self.component,
        }
    }

    pub(crate) fn u1(&mut self) -> Result<u8, CapError> {
        let (b, rest) = self.data.split_first().ok_or_else(|| self.truncated())?;
        self.data = rest;
        Ok(*b)
    }

    pub(crate) fn u2(&mut self) -> Result<u16, CapError> {
        Ok(u16::from_be_bytes([self.u1()?, self.u1()?]))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], CapError> {
        if self.data.len() < n {
            return Err(self.truncated());
        }
        let (b, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(b)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len()
    }

    /// An AID: a length byte 5..=16 and the bytes.
    pub(crate) fn aid(&mut self) -> Result<Vec<u8>, CapError> {
        let n = self.u1()?;
        if !(5..=16).contains(&n) {
            return Err(CapError::BadAid {
                component: self.component,
                len: n,
            });
        }
        Ok(self.bytes(usize::from(n))?.to_vec())
    }

    pub(crate) fn package_info(&mut self) -> Result<PackageRef, CapError> {
        let minor = self.u1()?;
        let major = self.u1()?;
        let aid = self.aid()?;
        Ok(PackageRef { aid, major, minor })
    }
}

/// The magic number every Header component starts with.
pub const MAGIC: u32 = 0xDECA_FFED;

/// Parses a Header component's `info` (after tag and size).
pub(crate) fn header(info: &[u8]) -> Result<Header, CapError> {
    let mut r = Reader::new(info, Component::Header);
    let magic = u32::from_be_bytes([r.u1()?, r.u1()?, r.u1()?, r.u1()?]);
    if magic != MAGIC {
        return Err(CapError::BadMagic(magic));
    }
    let cap_minor = r.u1()?;
    let cap_major = r.u1()?;
    if cap_major != 2 || !(1..=3).contains(&cap_minor) {
        return Err(CapError::UnsupportedVersion {
            major: cap_major,
            minor: cap_minor,
        });
    }
    let flags = r.u1()?;
    let package = r.package_info()?;
    // CAP 2.2 added package_name_info; 2.1 files end here.
    let package_name = if cap_minor >= 2 && r.remaining() > 0 {
        let n = usize::from(r.u1()?);
        Some(String::from_utf8_lossy(r.bytes(n)?).into_owned())
    } else {
        None
    };
    Ok(Header {
        cap_major,
        cap_minor,
        flags,
        package,
        package_name,
    })
}

/// Parses an Applet component's `info`.
pub(crate) fn applets(info: &[u8]) -> Result<Vec<AppletRef>, CapError> {
    let mut r = Reader::new(info, Component::Applet);
    let count = r.u1()?;
    (0..count)
        .map(|_| {
            Ok(AppletRef {
                aid: r.aid()?,
                install_method_offset: r.u2()?,
            })
        })
        .collect()
}

/// Parses an Import component's `info`.
pub(crate) fn imports(info: &[u8]) -> Result<Vec<PackageRef>, CapError> {
    let mut r = Reader::new(info, Component::Import);
    let count = r.u1()?;
    (0..count).map(|_| r.package_info()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_jcvm_table() {
        // JCVM specification Table 6-1: Header 1, Directory 2, Applet 3, Import 4,
        // ConstantPool 5, Class 6, Method 7, StaticField 8, ReferenceLocation 9, Export 10,
        // Descriptor 11, Debug 12.
        let expected = [
            (Component::Header, 1),
            (Component::Directory, 2),
            (Component::Applet, 3),
            (Component::Import, 4),
            (Component::ConstantPool, 5),
            (Component::Class, 6),
            (Component::Method, 7),
            (Component::StaticField, 8),
            (Component::RefLocation, 9),
            (Component::Export, 10),
            (Component::Descriptor, 11),
            (Component::Debug, 12),
        ];
        for (c, t) in expected {
            assert_eq!(c.tag(), t, "{c}");
            assert_eq!(Component::from_tag(t), Some(c));
        }
        assert_eq!(Component::from_tag(0), None);
        assert_eq!(Component::from_tag(13), None);
    }
}
