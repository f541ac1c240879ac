//! Java Card package contexts on the card (Java Card 3.0.5 runtime environment specification
//! §6.1.2): every instance of a CAP package runs in its package's one context — a single
//! [`kagi_jcvm::Vm`] whose static fields and objects all its instances share, with records
//! under [`registry::context_prefix`] and each instance's applet object named by its
//! registration record ([`kagi_jcvm::instance_record`]). An instance's objects nothing else
//! reaches become garbage when it is deleted and are collected at the next command.
//!
//! Card images made before package contexts kept each instance's records in the instance's
//! own namespace (`app/<AID>/jc/…`). At power-up such a package's records move into its
//! context, in one transaction, when the package has exactly one such instance and no context
//! yet; instances of a package with several keep running each in a context of its own (their
//! heaps cannot be merged without knowing which fields hold references), as they did.

use crate::applet::Aid;
use crate::applet_store::AppletStore;
use crate::jc_applet::{Context, JcApplet, ScopedPersist};
use crate::load_file;
use crate::registry::{self, RegistryEntry};
use crate::store::{Store, StoreError};
use kagi_jcvm::{Limits, StoreFail, Vm};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// The live contexts, by package (load file) AID.
pub(crate) type Contexts = BTreeMap<Aid, Context>;

/// Where an old-form instance keeps its records: `app/<AID>/jc/`.
fn old_prefix(aid: &Aid) -> String {
    format!("{}/jc/", registry::data_prefix(aid))
}

/// Whether instance `aid` keeps old-form records (a meta record of its own).
fn old_form(store: &Store, aid: &Aid) -> bool {
    store.get(&format!("{}m", old_prefix(aid))).is_some()
}

/// The applet of registry entry `e` (of class [`registry::CAP_CLASS`]): a member of its
/// package's context, made (and the package linked) on first use; an old-form instance gets a
/// context of its own. An existing context is told to read the store again (the new member's
/// installation changed its records).
pub(crate) fn instantiate(
    store: &Store,
    e: &RegistryEntry,
    contexts: &mut Contexts,
) -> Option<JcApplet> {
    let elf = e.elf.as_ref()?;
    if old_form(store, &e.aid) {
        let pkg = load_file::linked(store, elf)?;
        return Some(JcApplet::solo(Arc::new(pkg), &e.aid));
    }
    let context = match contexts.get(elf) {
        Some(c) => {
            c.lock().unwrap_or_else(|p| p.into_inner()).invalidate();
            c.clone()
        }
        None => {
            let pkg = load_file::linked(store, elf)?;
            let c: Context = Arc::new(Mutex::new(Vm::context(Arc::new(pkg), Limits::default())));
            contexts.insert(elf.clone(), c.clone());
            c
        }
    };
    Some(JcApplet::member(
        context,
        registry::context_prefix(elf),
        &e.aid,
    ))
}

/// Deletes the objects of package `elf`'s context that no instance, static field or system
/// object reaches (after an instance was deleted or its installation cut); returns how many.
pub(crate) fn collect(
    store: &mut Store,
    elf: &Aid,
    contexts: &Contexts,
) -> Result<usize, StoreFail> {
    let records = registry::context_prefix(elf);
    let mut fresh;
    let mut guard;
    let vm: &mut Vm = match contexts.get(elf) {
        Some(c) => {
            guard = c.lock().unwrap_or_else(|p| p.into_inner());
            &mut guard
        }
        None => match load_file::linked(store, elf) {
            Some(pkg) => {
                fresh = Vm::context(Arc::new(pkg), Limits::default());
                &mut fresh
            }
            None => return Ok(0),
        },
    };
    vm.invalidate();
    let mut scoped = AppletStore::new(store, &elf.to_hex(), false);
    vm.collect_garbage(&mut ScopedPersist::new(&mut scoped, Some(&records)))
}

/// Whether the registry has instance `hex` (an AID in hex, as in record keys).
fn registered(store: &Store, hex: &str) -> bool {
    hex::decode(hex)
        .ok()
        .and_then(|b| Aid::new(&b).ok())
        .is_some_and(|aid| registry::entry(store, &aid).is_some())
}

/// Power-up clean-up, so that an INSTALL is all-or-nothing: the records of an instance the
/// registry does not know — an INSTALL whose `install` ran but whose registry entry was never
/// written (power lost in between), or a DELETE cut after its registry entry went — are
/// removed: an old-form instance's objects (`app/<AID>/jc/…`) and a context's registration;
/// so are the records of a package no longer loaded. Returns the packages whose garbage is
/// then due ([`collect`]). A power loss during the clean-up leaves the rest for the next
/// power-up.
pub(crate) fn collect_orphans(store: &mut Store) -> BTreeSet<Aid> {
    let mut due = BTreeSet::new();
    let mut dead: Vec<String> = Vec::new();
    for k in store.keys("app/") {
        if let Some((hex, rest)) = k["app/".len()..].split_once('/')
            && rest.starts_with("jc/")
            && !registered(store, hex)
        {
            dead.push(k);
        }
    }
    for k in store.keys("jcctx/") {
        let Some((hex, rest)) = k["jcctx/".len()..].split_once('/') else {
            continue;
        };
        let Some(elf) = hex::decode(hex).ok().and_then(|b| Aid::new(&b).ok()) else {
            continue;
        };
        if registry::load_file(store, &elf).is_none() {
            dead.push(k);
            continue;
        }
        let Some(inst) = rest.strip_prefix("jc/i/") else {
            continue;
        };
        if !registered(store, inst) {
            dead.push(k);
            due.insert(elf);
        }
    }
    for k in dead {
        if store.remove(&k).is_err() {
            break;
        }
    }
    due
}

/// Power-up migration of old-form records (see the module documentation); returns the
/// instances that became members of their package's context.
pub(crate) fn migrate(store: &mut Store) -> Vec<Aid> {
    let mut by_package: BTreeMap<Aid, Vec<Aid>> = BTreeMap::new();
    for e in registry::entries(store) {
        if e.class == registry::CAP_CLASS
            && let Some(elf) = e.elf
            && old_form(store, &e.aid)
        {
            by_package.entry(elf).or_default().push(e.aid);
        }
    }
    let mut moved = Vec::new();
    for (elf, instances) in by_package {
        let [aid] = &instances[..] else { continue };
        let records = registry::context_prefix(&elf);
        if !store.keys(&records).is_empty() {
            continue;
        }
        let done = store.atomically(|s| -> Result<(), StoreError> {
            let from = old_prefix(aid);
            for k in s.keys(&from) {
                let Some(v) = s.get(&k).map(<[u8]>::to_vec) else {
                    continue;
                };
                let rest = &k[from.len()..];
                if rest == "m" {
                    // [next handle, applet object]: the applet becomes the instance's
                    // registration, the context's meta record keeps the next handle.
                    if let [a, b, c, d, ..] = v[..] {
                        s.put(&format!("{records}jc/m"), &[a, b, 0, 0])?;
                        s.put(
                            &format!("{records}{}", kagi_jcvm::instance_record(aid.as_bytes())),
                            &[c, d],
                        )?;
                    }
                } else {
                    s.put(&format!("{records}jc/{rest}"), &v)?;
                }
                s.remove(&k)?;
            }
            Ok(())
        });
        if done.is_ok() {
            moved.push(aid.clone());
        }
    }
    moved
}
