//! CAP load files in the card manager, as a real Java Card takes them: the load file data
//! block (Header, Directory, Import, … components) is checked against its hash and its
//! imports are linked against the packages the card provides — the Java Card 3.0.5 API and
//! packages loaded before — then the package and its applets (modules) enter the registry.
//!
//! The simulator has no Java Card VM yet: an applet from a CAP cannot be instantiated, and
//! INSTALL [for install] of one answers [`SW_NO_JCVM`].

use crate::applet::Aid;
use crate::registry::{self, LoadFile};
use crate::store::{Store, StoreError};
use card_wire::sw::StatusWord;
use kagi_cap::{CapFile, HashAlg, PackageRef};

pub use crate::registry::CAP_CLASS;

/// LOAD of a CAP whose imported package the card does not have (or has in an older minor
/// version, or another major version): `6438`, what NXP JCOP cards answer to a CAP built
/// against an API the card lacks (arekinath/PivApplet issue #2, "LOAD failed: 0x6438" for a
/// CAP converted with a newer Java Card kit than the card's).
pub const SW_IMPORT_NOT_FOUND: StatusWord = StatusWord(0x6438);

/// INSTALL [for install] of an applet from a CAP file: `6A81` (function not supported) —
/// the simulator has no Java Card VM to run its `install` method.
pub const SW_NO_JCVM: StatusWord = crate::registry::SW_CLASS_UNAVAILABLE;

/// The Java Card Classic 3.0.5 API packages the simulated card provides: AID, major, minor
/// (from `javacard/api-tokens-3.0.5.json`, the 3.0.5u3 kit's export files).
pub const API_3_0_5: &[(&str, u8, u8)] = &[
    ("A0000000620002", 1, 0),     // java.io
    ("A0000000620001", 1, 0),     // java.lang
    ("A0000000620003", 1, 0),     // java.rmi
    ("A0000000620101", 1, 6),     // javacard.framework
    ("A000000062010101", 1, 0),   // javacard.framework.service
    ("A0000000620102", 1, 6),     // javacard.security
    ("A0000000620209", 1, 0),     // javacardx.apdu
    ("A000000062020901", 1, 0),   // javacardx.apdu.util
    ("A0000000620202", 1, 2),     // javacardx.biometry
    ("A0000000620204", 1, 0),     // javacardx.biometry1toN
    ("A0000000620201", 1, 6),     // javacardx.crypto
    ("A0000000620203", 1, 0),     // javacardx.external
    ("A000000062020802", 1, 0),   // javacardx.framework.math
    ("A000000062020804", 1, 0),   // javacardx.framework.string
    ("A000000062020803", 1, 0),   // javacardx.framework.tlv
    ("A00000006202080101", 1, 0), // javacardx.framework.util.intx
    ("A000000062020801", 1, 1),   // javacardx.framework.util
    ("A0000000620205", 1, 0),     // javacardx.security
];

/// Whether a load file data block is a CAP's (it starts with the Header component, tag 1)
/// rather than the simulator's own class-naming format (tag `4F`).
pub fn is_cap(block: &[u8]) -> bool {
    block.first() == Some(&0x01)
}

/// Checks the load file data block hash of INSTALL [for load]: 20 bytes SHA-1, 32 SHA-256.
pub fn check_hash(block: &[u8], hash: Option<&[u8]>) -> Result<(), StatusWord> {
    let Some(hash) = hash else {
        return Ok(());
    };
    let alg = HashAlg::from_len(hash.len()).ok_or(StatusWord::INCORRECT_DATA)?;
    if alg.digest(block).as_slice() != hash {
        return Err(StatusWord::INCORRECT_DATA);
    }
    Ok(())
}

/// The version (major, minor) of a package loaded from a CAP.
pub fn version(store: &Store, aid: &Aid) -> Option<[u8; 2]> {
    registry::package_version(store, aid)
}

/// Whether the card provides `import`: same major version, minor at least the one imported.
fn provided(store: &Store, import: &PackageRef) -> bool {
    let hex = card_wire::hex_upper(&import.aid);
    let ok = |major: u8, minor: u8| major == import.major && minor >= import.minor;
    if API_3_0_5
        .iter()
        .any(|(aid, major, minor)| *aid == hex && ok(*major, *minor))
    {
        return true;
    }
    Aid::new(&import.aid)
        .ok()
        .and_then(|a| version(store, &a))
        .is_some_and(|[major, minor]| ok(major, minor))
}

/// Reads a CAP load file data block for the package `elf` (the AID INSTALL [for load] named),
/// links its imports, and returns the load file record and the package version to store.
pub fn accept(
    store: &Store,
    block: &[u8],
    elf: &Aid,
    sd: &Aid,
) -> Result<(LoadFile, [u8; 2]), StatusWord> {
    let cap = CapFile::from_ijc(block).map_err(|_| StatusWord::INCORRECT_DATA)?;
    if cap.package_aid() != elf.as_bytes() {
        return Err(StatusWord::INCORRECT_DATA);
    }
    if cap.imports().iter().any(|i| !provided(store, i)) {
        return Err(SW_IMPORT_NOT_FOUND);
    }
    let modules = cap
        .applets()
        .iter()
        .map(|a| {
            Ok((
                Aid::new(&a.aid).map_err(|_| StatusWord::INCORRECT_DATA)?,
                CAP_CLASS.to_string(),
            ))
        })
        .collect::<Result<Vec<_>, StatusWord>>()?;
    let (major, minor) = cap.version();
    Ok((
        LoadFile {
            aid: elf.clone(),
            sd: sd.clone(),
            modules,
        },
        [major, minor],
    ))
}

/// Records a CAP package: its load file and version, in one transaction.
pub fn record(store: &mut Store, lf: &LoadFile, version: [u8; 2]) -> Result<(), StoreError> {
    store.atomically(|s| {
        registry::put_load_file(s, lf)?;
        registry::put_package_version(s, &lf.aid, version)
    })
}
