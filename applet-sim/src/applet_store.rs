//! An applet's view of persistent memory: the card's [`Store`] seen through the applet's own
//! namespace, `app/<AID>/`. Every name an applet uses is put under its own AID by
//! construction, so no name it can build — `app/<other AID>/…`, `../…`, anything — reaches
//! another applet's objects, the registry, or a security domain's keys. Transactions are the
//! card's (Java Card has one transaction at a time for the whole card).
//!
//! Java Card (CAP) applets keep their objects in their package's context instead
//! (`jcctx/<package AID>/`, [`crate::registry::context_prefix`]), a prefix the runtime takes
//! from the registry, never one the applet names.
//!
//! Security domains are privileged classes ([`crate::ClassTable`] registers them inside this
//! crate only): [`AppletStore::whole_card`] gives them the unscoped store.

use crate::store::{Store, StoreError};

/// Persistent memory scoped to one applet instance.
#[derive(Debug)]
pub struct AppletStore<'a> {
    store: &'a mut Store,
    prefix: String,
    privileged: bool,
}

impl<'a> AppletStore<'a> {
    /// The namespace of the instance whose AID is `aid_hex` (uppercase hex).
    pub(crate) fn new(store: &'a mut Store, aid_hex: &str, privileged: bool) -> Self {
        AppletStore {
            store,
            prefix: format!("app/{aid_hex}/"),
            privileged,
        }
    }

    /// Whether the instance's class sees the whole card's memory.
    pub(crate) fn privileged(&self) -> bool {
        self.privileged
    }

    /// The whole card's memory, read-only (the runtime's services such as
    /// [`AppletStore::open_sealed`] read card-level objects through it).
    pub(crate) fn card(&self) -> &Store {
        self.store
    }

    /// The AID of the instance this namespace belongs to (from the namespace itself, so an
    /// applet cannot claim another's).
    pub(crate) fn instance(&self) -> Vec<u8> {
        let hex = self
            .prefix
            .strip_prefix("app/")
            .and_then(|p| p.strip_suffix('/'))
            .unwrap_or_default();
        hex::decode(hex).unwrap_or_default()
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Reads the object `name` (seeing the open transaction's writes).
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.store.get(&self.full(name))
    }

    /// Writes the object `name`.
    pub fn put(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let key = self.full(name);
        self.store.put(&key, value)
    }

    /// The object `name` as last committed (ignoring the open transaction).
    pub fn get_committed(&self, name: &str) -> Option<&[u8]> {
        self.store.get_committed(&self.full(name))
    }

    /// Writes the object `name` outside the open transaction (Java Card's non-atomic
    /// writes and PIN try counters: an abort does not roll it back).
    pub fn put_outside(&mut self, name: &str, value: &[u8]) -> Result<(), StoreError> {
        let key = self.full(name);
        self.store.put_outside(&key, value)
    }

    /// Removes the object `name` (a no-op when absent).
    pub fn remove(&mut self, name: &str) -> Result<(), StoreError> {
        let key = self.full(name);
        self.store.remove(&key)
    }

    /// The names of this applet's objects that start with `prefix`, in order.
    pub fn names(&self, prefix: &str) -> Vec<String> {
        let n = self.prefix.len();
        self.store
            .keys(&self.full(prefix))
            .into_iter()
            .map(|k| k[n..].to_string())
            .collect()
    }

    /// Starts a transaction (joins the open one).
    pub fn begin(&mut self) {
        self.store.begin();
    }

    /// Commits the open transaction.
    pub fn commit(&mut self) -> Result<(), StoreError> {
        self.store.commit()
    }

    /// Drops the open transaction's writes.
    pub fn abort(&mut self) {
        self.store.abort();
    }

    /// Whether a transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.store.in_transaction()
    }

    /// Runs `f` in a transaction: commits when it returns `Ok`, rolls back otherwise (Java
    /// Card's `beginTransaction` / `commitTransaction` / `abortTransaction`).
    pub fn atomically<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&mut AppletStore<'a>) -> Result<T, E>,
    ) -> Result<T, E> {
        crate::store::transact(self, f)
    }

    /// Bytes of persistent memory free on the card.
    pub fn free(&self) -> usize {
        self.store.free()
    }

    /// The whole card's memory, for the runtime's own services (another applet's context for
    /// a shareable call); never handed to an applet.
    pub(crate) fn card_mut(&mut self) -> &mut Store {
        self.store
    }

    /// Records an operation of the chip for the card's timing model.
    pub fn charge(&mut self, op: kagi_jcvm::CardOp) {
        self.store.charge(op);
    }

    /// The whole card's memory, for privileged classes (security domains) only.
    pub fn whole_card(&mut self) -> Option<&mut Store> {
        if self.privileged {
            Some(self.store)
        } else {
            None
        }
    }
}

impl crate::store::Transactional for AppletStore<'_> {
    fn begin_tx(&mut self) {
        self.begin()
    }
    fn in_tx(&self) -> bool {
        self.in_transaction()
    }
    fn commit_tx(&mut self) -> Result<(), StoreError> {
        self.commit()
    }
    fn abort_tx(&mut self) {
        self.abort()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever names an applet uses, its writes land under `app/<its AID>/` and its reads
        /// see nothing else: another applet's object, the registry and the keys stay apart.
        #[test]
        fn names_never_leave_the_namespace(names in prop::collection::btree_set(".{0,24}", 1..12)) {
            let mut store = Store::new(64 * 1024);
            store.put("app/F00102030401/secret", b"Y").unwrap();
            store.put("reg/F00102030401", b"entry").unwrap();
            store.put("sd/A000000151000000/key/30", b"keys").unwrap();
            let before = store.clone();
            let mut x = AppletStore::new(&mut store, "F001020304", false);
            for n in &names {
                prop_assert_eq!(x.get(n), None);
                x.put(n, b"x").unwrap();
                prop_assert_eq!(x.get(n), Some(&b"x"[..]));
            }
            prop_assert!(x.whole_card().is_none());
            let mine = x.names("");
            for n in &names {
                prop_assert!(mine.contains(n));
            }
            for k in store.keys("") {
                if !k.starts_with("app/F001020304/") {
                    prop_assert_eq!(store.get(&k), before.get(&k), "{}", k);
                }
            }
            prop_assert_eq!(store.keys("").len(), 3 + mine.len());
        }
    }
}
