//! `JCSystem.requestObjectDeletion`: at the end of the call that requested it, the applet's
//! persistent objects no root reaches are deleted, with their store records. The roots are
//! the applet instance, the package's static reference fields and the system's own objects;
//! references are followed through instance reference fields (by the Class component's
//! reference field tokens), reference arrays and the native state of API objects (a key
//! pair's keys, an engine's key).

use crate::heap::{self, Data, NativeState, Obj};
use crate::link::ClassId;
use crate::{OBJ, Persist, StoreFail, Vm};
use std::collections::BTreeSet;

impl Vm {
    /// Handles referenced by object `o`.
    fn references(&self, o: &Obj, out: &mut Vec<u16>) {
        match o {
            Obj::Array {
                data: Data::Refs(v),
                ..
            } => out.extend(v.iter().copied()),
            Obj::Array { .. } => {}
            Obj::Instance {
                class,
                cells,
                native,
                ..
            } => {
                let mut c = Some(*class);
                while let Some(ClassId::Pkg(off)) = c {
                    let Some(lc) = self.pkg.classes.get(&off) else {
                        break;
                    };
                    if let Some(info) = self.pkg.model.classes.classes.get(lc.index)
                        && info.first_reference_token != 0xFF
                    {
                        let first = usize::from(lc.base) + usize::from(info.first_reference_token);
                        for i in first..first + usize::from(info.reference_count) {
                            if let Some(h) = cells.get(i) {
                                out.push(*h as u16);
                            }
                        }
                    }
                    c = lc.super_class;
                }
                match native {
                    NativeState::Pair {
                        public, private, ..
                    } => out.extend([*public, *private]),
                    NativeState::Engine(e) => out.push(e.key),
                    _ => {}
                }
            }
        }
    }

    /// The persistent objects nothing reaches.
    pub(crate) fn unreachable(&self) -> Vec<u16> {
        let mut seen: BTreeSet<u16> = BTreeSet::new();
        let mut todo: Vec<u16> = vec![self.applet];
        todo.extend(self.applets.values().copied());
        let refs = usize::from(self.pkg.model.static_fields.reference_count);
        for i in 0..refs {
            if let Some(b) = self.statics.get(2 * i..2 * i + 2) {
                todo.push(u16::from_be_bytes([b[0], b[1]]));
            }
        }
        todo.extend(
            self.heap
                .objects
                .keys()
                .copied()
                .filter(|h| *h < heap::FIRST_PERSISTENT),
        );
        let mut found = Vec::new();
        while let Some(h) = todo.pop() {
            if h == 0 || !seen.insert(h) {
                continue;
            }
            if let Some(o) = self.heap.objects.get(&h) {
                found.clear();
                self.references(o, &mut found);
                todo.append(&mut found);
            }
        }
        self.heap
            .objects
            .keys()
            .copied()
            .filter(|h| *h >= heap::FIRST_PERSISTENT && !seen.contains(h))
            .collect()
    }

    /// Deletes the unreachable persistent objects: out of the heap, their records out of the
    /// store (a power loss part-way leaves the rest, still unreachable, for the next request).
    pub(crate) fn delete_unreachable(&mut self, p: &mut dyn Persist) -> Result<usize, StoreFail> {
        let dead = self.unreachable();
        for h in &dead {
            self.heap.objects.remove(h);
            self.dirty.remove(h);
            self.validated.remove(h);
            self.crt_cache.remove(h);
            self.ec_cache.remove(h);
            p.remove(&format!("{OBJ}{h:04X}"))?;
        }
        Ok(dead.len())
    }
}
