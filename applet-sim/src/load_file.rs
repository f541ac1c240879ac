//! CAP load files in the card manager, as a real Java Card takes them: the load file data
//! block (Header, Directory, Import, … components) is checked against its hash and its
//! imports are linked against the packages the card provides — the Java Card 3.0.5 API, the
//! GlobalPlatform Card API 1.6 and
//! packages loaded before — then the package and its applets (modules) enter the registry.
//!
//! LOAD links the package with kagi's Java Card VM ([`kagi_jcvm`]) and keeps its load file
//! data block; INSTALL [for install] runs the applet's `install` method ([`install_cap`]) and
//! the runtime makes the instance a [`crate::jc_applet::JcApplet`] of its package's context
//! ([`crate::contexts`]).

use crate::applet::Aid;
use crate::jc_applet::ScopedPersist;
use crate::registry::{self, LoadFile};
use crate::store::{Store, StoreError};
use card_wire::sw::StatusWord;
use kagi_cap::{CapFile, HashAlg, PackageRef};
use kagi_jcvm::{LinkError, Package};
use std::sync::Arc;

pub use crate::registry::CAP_CLASS;

/// LOAD of a CAP whose imported package the card does not have (or has in an older minor
/// version, or another major version): `6438`, what NXP JCOP cards answer to a CAP built
/// against an API the card lacks (arekinath/PivApplet issue #2, "LOAD failed: 0x6438" for a
/// CAP converted with a newer Java Card kit than the card's).
pub const SW_IMPORT_NOT_FOUND: StatusWord = StatusWord(0x6438);

/// `6A81` (function not supported): kept for callers of the time before the VM; INSTALL of a
/// CAP applet now runs it.
pub const SW_NO_JCVM: StatusWord = crate::registry::SW_CLASS_UNAVAILABLE;

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
    let ok = |major: u8, minor: u8| major == import.major && minor >= import.minor;
    // The APIs the VM implements natively: the Java Card 3.0.5 classic API and the
    // GlobalPlatform Card API 1.6, as their export files give them (`kagi_jcvm::api`).
    if kagi_jcvm::api::PACKAGES
        .iter()
        .any(|p| p.aid == import.aid.as_slice() && ok(p.major, p.minor))
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
    link(&cap)?;
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

/// Links a CAP: a package the VM cannot link is refused as LOAD refuses an import the card
/// lacks ([`SW_IMPORT_NOT_FOUND`] for a missing package, class or method token, `6A80` for
/// an inconsistent file).
pub fn link(cap: &CapFile) -> Result<Package, StatusWord> {
    Package::link(cap).map_err(|e| match e {
        LinkError::Import { .. } | LinkError::Token(_) => SW_IMPORT_NOT_FOUND,
        LinkError::Cap(_) | LinkError::Inconsistent(_) => StatusWord::INCORRECT_DATA,
    })
}

pub use crate::registry::block_key;

/// Records a CAP package: its load file, version and load file data block, and its static
/// fields initialised from the Static Field component (as the card's installer does at load),
/// in one transaction.
pub fn record(
    store: &mut Store,
    lf: &LoadFile,
    version: [u8; 2],
    block: &[u8],
) -> Result<(), StoreError> {
    store.atomically(|s| {
        registry::put_load_file(s, lf)?;
        registry::put_package_version(s, &lf.aid, version)?;
        s.put(&block_key(&lf.aid), block)?;
        if let Ok((_, pkg)) = package(s, &lf.aid) {
            let records = registry::context_prefix(&lf.aid);
            let mut vm = kagi_jcvm::Vm::context(Arc::new(pkg), kagi_jcvm::Limits::default());
            let mut scoped = crate::applet_store::AppletStore::new(s, &lf.aid.to_hex(), false);
            vm.init_package(&mut ScopedPersist::new(&mut scoped, Some(&records)))
                .map_err(|e| match e {
                    kagi_jcvm::StoreFail::Torn => StoreError::Torn,
                    kagi_jcvm::StoreFail::Full => StoreError::Full { need: 0, free: 0 },
                })?;
        }
        Ok(())
    })
}

/// The linked package of the load file `elf` and the CAP it came from.
fn package(store: &Store, elf: &Aid) -> Result<(CapFile, Package), StatusWord> {
    let block = store
        .get(&block_key(elf))
        .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?;
    let cap = CapFile::from_ijc(block).map_err(|_| StatusWord::INCORRECT_DATA)?;
    let pkg = link(&cap)?;
    Ok((cap, pkg))
}

/// The `install` parameters a Java Card applet receives (GlobalPlatform: instance AID,
/// privileges, then the application parameters of tag `C9`, each length-value).
pub fn install_bytes(app: &Aid, privileges: &[u8], params: &[u8]) -> Vec<u8> {
    let mut c9: &[u8] = &[];
    let mut rest = params;
    while let [tag, len, tail @ ..] = rest {
        let n = usize::from(*len);
        if n > tail.len() || *len >= 0x80 {
            break;
        }
        if *tag == 0xC9 {
            c9 = &tail[..n];
            break;
        }
        rest = &tail[n..];
    }
    let mut v = vec![app.as_bytes().len() as u8];
    v.extend_from_slice(app.as_bytes());
    v.push(privileges.len() as u8);
    v.extend_from_slice(privileges);
    v.push(c9.len() as u8);
    v.extend_from_slice(c9);
    v
}

/// INSTALL [for install] of the CAP applet `module` of load file `elf` as instance `app`:
/// runs its `install(byte[], short, byte)` with the install parameters in the package's
/// context (its records under [`registry::context_prefix`], shared with the package's other
/// instances). When `install` fails, the instance's registration goes, the package's static
/// fields and meta record are put back and the objects it made are collected. The caller
/// writes the registry entry afterwards; the registration of an install cut by power loss
/// before that entry is collected at the next power-up ([`crate::Runtime::reset`]).
pub fn install_cap(
    store: &mut Store,
    elf: &Aid,
    module: &Aid,
    app: &Aid,
    privileges: &[u8],
    params: &[u8],
) -> Result<(), StatusWord> {
    let (cap, pkg) = package(store, elf)?;
    let offset = cap
        .applets()
        .iter()
        .find(|a| a.aid == module.as_bytes())
        .map(|a| a.install_method_offset)
        .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?;
    let records = registry::context_prefix(elf);
    let kept: Vec<(String, Option<Vec<u8>>)> = ["jc/m", "jc/s"]
        .iter()
        .map(|n| {
            let k = format!("{records}{n}");
            let v = store.get(&k).map(<[u8]>::to_vec);
            (k, v)
        })
        .collect();
    // The registration first (no applet object yet): power lost at any later write leaves an
    // orphan registration, which the next power-up removes and whose objects it collects.
    let registration = format!("{records}{}", kagi_jcvm::instance_record(app.as_bytes()));
    store.put(&registration, &[0, 0])?;
    let mut vm = kagi_jcvm::Vm::context(Arc::new(pkg), kagi_jcvm::Limits::default());
    vm.enter(app.as_bytes());
    let bytes = install_bytes(app, privileges, params);
    let answer = {
        let mut scoped = crate::applet_store::AppletStore::new(store, &app.to_hex(), false);
        vm.install(
            &mut ScopedPersist::new(&mut scoped, Some(&records)),
            offset,
            &bytes,
        )
    };
    match crate::jc_applet::answer(answer) {
        Ok(_) => Ok(()),
        Err(sw) => {
            if !store.is_torn() {
                store.remove(&registration)?;
                for (k, v) in kept {
                    match v {
                        Some(v) => store.put(&k, &v)?,
                        None => store.remove(&k)?,
                    }
                }
                store.remove_prefix(&format!("{}/", registry::data_prefix(app)))?;
                vm.invalidate();
                let mut scoped = crate::applet_store::AppletStore::new(store, &app.to_hex(), false);
                vm.collect_garbage(&mut ScopedPersist::new(&mut scoped, Some(&records)))
                    .map_err(|_| StatusWord::MEMORY_FAILURE)?;
            }
            Err(sw)
        }
    }
}

/// The linked package of load file `elf` (for the runtime's contexts).
pub(crate) fn linked(store: &Store, elf: &Aid) -> Option<Package> {
    package(store, elf).ok().map(|(_, p)| p)
}
