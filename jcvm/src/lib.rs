//! A Java Card 3.0.5 classic virtual machine for kagi's simulator: it links a CAP package
//! against a native (Rust) implementation of the Java Card API ([`Package::link`]) and runs
//! the package's context ([`Vm`]: one per package, shared by its applet instances):
//! `install`, `select`, `process`, `deselect`, with its objects in persistent memory
//! ([`Persist`]) so that they live through transactions, power loss and card images.
//!
//! Limits, by design: a bounded operand stack and frame depth (overflow is an exception),
//! a bytecode budget per call (an endless loop ends the command with `6F00`), and an
//! unsupported bytecode or API method ends the command with `6F00` and an error naming it and
//! where it happened ([`Vm::last_error`]).

pub mod api;
mod cost;
pub mod crypto;
#[cfg(test)]
mod descriptor;
mod gc;
pub mod heap;
mod interp;
pub mod link;
pub(crate) mod native;
mod record;
pub mod share;

pub use cost::CardOp;
pub use link::{ClassId, LinkError, Package};

use heap::{Heap, Obj};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A persistent write failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFail {
    /// Power lost in the middle of the write.
    Torn,
    /// Persistent memory is full.
    Full,
}

/// The card as the machine sees it: the context's persistent memory (the simulator's store,
/// scoped to the package or, in the old form, to one instance), and the card's services around
/// it — GlobalPlatform's
/// registry (`GPSystem`), other applets (`lookupAID`, shareable interface objects) and the
/// timing model's charges. Only the memory is required; the services default to a card with
/// nothing else on it.
pub trait Persist {
    /// Reads a record.
    fn get(&self, name: &str) -> Option<Vec<u8>>;
    /// Writes a record (into the open transaction, when there is one).
    fn put(&mut self, name: &str, value: &[u8]) -> Result<(), StoreFail>;
    /// Reads a record as last committed, ignoring the open transaction's writes.
    fn get_committed(&self, name: &str) -> Option<Vec<u8>>;
    /// Writes a record outside the open transaction: the write is durable at once and an
    /// abort (or power loss before the commit) does not roll it back. A later write of the
    /// same record inside the transaction still wins at commit.
    fn put_outside(&mut self, name: &str, value: &[u8]) -> Result<(), StoreFail>;
    /// The names of records starting with `prefix`.
    fn names(&self, prefix: &str) -> Vec<String>;
    /// Opens the card's transaction.
    fn begin(&mut self);
    /// Commits it.
    fn commit(&mut self) -> Result<(), StoreFail>;
    /// Rolls it back.
    fn abort(&mut self);
    /// Whether a transaction is open.
    fn in_transaction(&self) -> bool;
    /// Removes a record (the machine removes records only when no transaction is open:
    /// objects `JCSystem.requestObjectDeletion` found unreachable).
    fn remove(&mut self, name: &str) -> Result<(), StoreFail>;
    /// The card's GlobalPlatform life-cycle state (`GPSystem.getCardState`; `0x0F` SECURED
    /// unless the card manager says otherwise).
    fn card_state(&self) -> u8 {
        0x0F
    }
    /// The instance's life-cycle state in the card manager's registry
    /// (`GPSystem.getCardContentState`; `0x03` INSTALLED while its `install` runs).
    fn life_cycle(&self) -> u8 {
        0x07
    }
    /// Writes the instance's life-cycle state into the registry (`GPSystem.
    /// setCardContentState`, after the machine checked it is an application-specific
    /// state). `Ok(false)` when the card manager keeps no registry for it.
    fn set_life_cycle(&mut self, state: u8) -> Result<bool, StoreFail> {
        let _ = state;
        Ok(false)
    }
    /// Tells the card what the chip computed (its timing model charges the time); ignored by
    /// default.
    fn charge(&mut self, op: CardOp) {
        let _ = op;
    }
    /// Whether an applet instance `aid` is on the card (`JCSystem.lookupAID`); by default
    /// only the instance itself is known.
    fn applet_exists(&self, aid: &[u8]) -> bool {
        let _ = aid;
        false
    }
    /// Asks applet `server` for its shareable object for this instance with `parameter`
    /// (`JCSystem.getAppletShareableInterfaceObject`); `None` when it refuses or is not there
    /// (the default: no other contexts). `caller` is the asking machine, whose call is under
    /// way: the card may need it again if `server` calls back into its context.
    fn shareable_object(
        &mut self,
        server: &[u8],
        parameter: u8,
        caller: &mut Vm,
    ) -> Result<Option<share::Sio>, StoreFail> {
        let _ = (server, parameter, caller);
        Ok(None)
    }
    /// Runs a shareable interface method in the context of applet `owner`
    /// ([`Vm::call_shareable`] there); by default the firewall refuses. `caller` is the
    /// calling machine, whose call is under way (the owner may call back into its context).
    fn call_shareable(
        &mut self,
        owner: &[u8],
        call: share::ShareCall,
        caller: &mut Vm,
    ) -> share::ShareOutcome {
        let _ = (owner, caller);
        share::ShareOutcome {
            ret: share::ShareReturn::Security,
            buffer: call.buffer,
        }
    }
}

/// Limits of the machine.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytecodes per call (install, select, process, deselect).
    pub budget: u64,
    /// Words of locals and operand stack over all frames.
    pub stack_words: usize,
    /// Frames.
    pub frames: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            budget: 20_000_000,
            stack_words: 2048,
            frames: 64,
        }
    }
}

/// A command as the applet's `APDU` object sees it.
#[derive(Debug, Clone, Default)]
pub struct ApduIn {
    /// CLA INS P1 P2.
    pub header: [u8; 4],
    /// Command data.
    pub data: Vec<u8>,
    /// Expected response length (`Ne`), 0 when absent.
    pub ne: usize,
    /// Whether the command was extended length.
    pub extended: bool,
}

/// How a call into the applet ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Normal completion: response data, `9000`.
    Ok(Vec<u8>),
    /// A status word (`ISOException`, or an error of the machine: see [`Vm::last_error`]).
    Sw(u16),
    /// Data the applet sent before it threw `ISOException` with this status word.
    Data(Vec<u8>, u16),
    /// Power was lost during a persistent write.
    Torn,
}

/// `6F00`: an uncaught exception or an error of the machine.
pub const SW_UNKNOWN: u16 = 0x6F00;

/// The context of a linked package: its heap and static fields, and the instances that run
/// in it ([`Vm::enter`] names the one each call is for).
pub struct Vm {
    pkg: Arc<Package>,
    limits: Limits,
    heap: Heap,
    statics: Vec<u8>,
    applet: u16,
    aid: Vec<u8>,
    /// The registered applet object of each instance of the package in this context.
    applets: std::collections::BTreeMap<Vec<u8>, u16>,
    /// Instances whose registration waits to be written.
    applets_dirty: BTreeSet<Vec<u8>>,
    /// The instance whose records predate package contexts (its meta record names its
    /// applet); `None` for a package context.
    home: Option<Vec<u8>>,
    /// The applet handle of an old-form meta record, written back unchanged.
    meta_applet: u16,
    /// Channels on which each instance of this context is selected.
    active: std::collections::BTreeMap<Vec<u8>, u16>,
    loaded: bool,
    dirty: BTreeSet<u16>,
    statics_dirty: bool,
    meta_dirty: bool,
    words: Vec<i16>,
    frames: Vec<interp::Frame>,
    apdu: native::ApduState,
    selecting: bool,
    validated: BTreeSet<u16>,
    system: std::collections::BTreeMap<u16, u16>,
    last_error: Option<String>,
    executed: u64,
    budget: u64,
    /// RSA-CRT keys ready for use, by key object (and the primes they were made from).
    crt_cache: std::collections::HashMap<u16, (crypto::Secret, Box<rsa::PrivateKey>)>,
    /// Where the exception in flight was thrown.
    throw_origin: Option<String>,
    /// `JCSystem.requestObjectDeletion` was called: collect at the end of the call.
    deletion_requested: bool,
    /// The chip's work in this call, told to the card at its end ([`Persist::charge`]).
    charges: Vec<CardOp>,
    /// The calling context's AID while a shareable call of another context runs here.
    caller: Option<Vec<u8>>,
    /// AID objects (system objects, one per AID): this instance's and other contexts'.
    aid_objects: std::collections::HashMap<Vec<u8>, u16>,
    /// P-256 signing keys ready for use, by key object (and the scalar they were made from).
    ec_cache: std::collections::HashMap<u16, (crypto::Secret, Box<p256::ecdsa::SigningKey>)>,
    /// The arguments of the native call under way (kept to reuse its allocation).
    native_args: Vec<i16>,
    /// Argument words (with `this`) of each virtual method reference of the constant pool,
    /// by index, as found at its first call (0: not yet).
    virtual_nargs: Vec<u8>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("aid", &self.aid)
            .field("objects", &self.heap.objects.len())
            .finish()
    }
}

/// The `javacard.framework.Applet` method the runtime calls, by its token in the API table.
fn applet_token(name: &str, descriptor: &str) -> u8 {
    api::virtual_token("javacard.framework.Applet", name, descriptor).unwrap_or(0xFF)
}

const META: &str = "jc/m";
const STATICS: &str = "jc/s";
const OBJ: &str = "jc/o/";
const INSTANCE: &str = "jc/i/";

/// The record that names instance `aid`'s applet object in its package's context
/// (`jc/i/<AID in hex>`: remove it and the instance's objects are garbage).
pub fn instance_record(aid: &[u8]) -> String {
    format!("{INSTANCE}{}", hex::encode_upper(aid))
}

impl Vm {
    /// The context of package `pkg` (Java Card 3.0.5 runtime environment specification
    /// §6.1.2: one context per package): every instance of the package runs in it, sharing
    /// its static fields and objects. Its state is read from `Persist` on first use; name the
    /// instance each call is for with [`Vm::enter`].
    pub fn context(pkg: Arc<Package>, limits: Limits) -> Self {
        Self::make(pkg, None, limits)
    }

    /// A context of one instance `aid` of `pkg` whose records are of the old form (the
    /// instance's own meta record names its applet object): the form of card images made
    /// before package contexts, which keep running as they were.
    pub fn new(pkg: Arc<Package>, aid: &[u8], limits: Limits) -> Self {
        let mut vm = Self::make(pkg, Some(aid.to_vec()), limits);
        vm.aid = aid.to_vec();
        vm
    }

    fn make(pkg: Arc<Package>, home: Option<Vec<u8>>, limits: Limits) -> Self {
        Vm {
            pkg,
            limits,
            heap: Heap::new(),
            statics: Vec::new(),
            applet: 0,
            aid: Vec::new(),
            applets: std::collections::BTreeMap::new(),
            applets_dirty: BTreeSet::new(),
            home,
            meta_applet: 0,
            active: std::collections::BTreeMap::new(),
            loaded: false,
            dirty: BTreeSet::new(),
            statics_dirty: false,
            meta_dirty: false,
            words: Vec::new(),
            frames: Vec::new(),
            apdu: native::ApduState::default(),
            selecting: false,
            validated: BTreeSet::new(),
            system: std::collections::BTreeMap::new(),
            last_error: None,
            executed: 0,
            budget: 0,
            crt_cache: std::collections::HashMap::new(),
            ec_cache: std::collections::HashMap::new(),
            throw_origin: None,
            deletion_requested: false,
            charges: Vec::new(),
            caller: None,
            aid_objects: std::collections::HashMap::new(),
            native_args: Vec::new(),
            virtual_nargs: Vec::new(),
        }
    }

    /// Names the instance the following calls are for (its AID, as the card manager
    /// installed it).
    pub fn enter(&mut self, instance: &[u8]) {
        if self.aid != instance {
            self.aid = instance.to_vec();
        }
        self.applet = self.applets.get(instance).copied().unwrap_or(0);
    }

    /// The instances registered in this context (after its state was read).
    pub fn instances(&self) -> Vec<Vec<u8>> {
        self.applets.keys().cloned().collect()
    }

    /// Forgets what the machine holds of the store: the next call reads every persistent
    /// object again (after another machine — an installation — changed the context's
    /// records). Transient arrays keep their contents.
    pub fn invalidate(&mut self) {
        self.loaded = false;
    }

    /// Deletes the persistent objects no instance, static field or system object reaches
    /// (after an instance was deleted, or an installation failed); returns how many.
    pub fn collect_garbage(&mut self, p: &mut dyn Persist) -> Result<usize, StoreFail> {
        self.load(p);
        self.delete_unreachable(p)
    }

    /// What went wrong in the last call that answered `6F00`, naming the exception, the
    /// unsupported bytecode or API method, and the applet's class and method.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Bytecodes executed since the machine was made.
    pub fn executed(&self) -> u64 {
        self.executed
    }

    /// Whether the applet registered itself.
    pub fn registered(&self) -> bool {
        self.applet != 0
    }

    /// Whether the registered applet's class implements the API interface `name`
    /// (`javacardx.apdu.ExtendedLength`): false before the instance's state was read (its
    /// first call) or when it never registered.
    pub fn applet_implements(&self, name: &str) -> bool {
        let Some(i) = api::class_by_name(name) else {
            return false;
        };
        match self.heap.objects.get(&self.applet) {
            Some(Obj::Instance { class, .. }) => {
                self.pkg.is_instance(*class, link::ClassId::Api(i as u16))
            }
            _ => false,
        }
    }

    /// Persistent objects of the instance in memory (after its last call).
    pub fn objects(&self) -> usize {
        self.heap
            .objects
            .keys()
            .filter(|h| **h >= heap::FIRST_PERSISTENT)
            .count()
    }

    fn load(&mut self, p: &dyn Persist) {
        if !self.loaded {
            self.loaded = true;
            self.reload(p);
        }
        self.applet = self.applets.get(&self.aid).copied().unwrap_or(0);
    }

    /// Reads every persistent object, the statics and the meta record from `p`.
    fn reload(&mut self, p: &dyn Persist) {
        // Key objects may come back with other components (an aborted transaction): the
        // ready-made primitives are built again from what is reloaded.
        self.crt_cache.clear();
        self.ec_cache.clear();
        let keep: Vec<(u16, Obj)> = self
            .heap
            .objects
            .iter()
            .filter(|(h, _)| **h < heap::FIRST_PERSISTENT)
            .map(|(h, o)| (*h, o.clone()))
            .collect();
        let old = std::mem::take(&mut self.heap.objects);
        self.heap.objects = keep.into_iter().collect();
        self.applets.clear();
        if let Some(m) = p.get(META)
            && let [a, b, c, d, ..] = m[..]
        {
            self.heap.next = u16::from_be_bytes([a, b]).max(heap::FIRST_PERSISTENT);
            self.meta_applet = u16::from_be_bytes([c, d]);
        } else {
            self.heap.next = heap::FIRST_PERSISTENT;
            self.meta_applet = 0;
        }
        if let Some(home) = &self.home
            && self.meta_applet != 0
        {
            self.applets.insert(home.clone(), self.meta_applet);
        }
        for name in p.names(INSTANCE) {
            if let (Ok(aid), Some([a, b])) = (
                hex::decode(&name[INSTANCE.len()..]),
                p.get(&name).as_deref(),
            ) {
                self.applets.insert(aid, u16::from_be_bytes([*a, *b]));
            }
        }
        self.applets_dirty.clear();
        self.statics = p.get(STATICS).unwrap_or_default();
        for name in p.names(OBJ) {
            let Some(h) = u16::from_str_radix(&name[OBJ.len()..], 16).ok() else {
                continue;
            };
            let Some(bytes) = p.get(&name) else { continue };
            let Some(mut o) = heap::decode(&bytes) else {
                continue;
            };
            // Transient arrays keep their (non-transactional) contents, transient keys their
            // material (never in the store).
            if let (
                Obj::Array {
                    transient: Some(_),
                    data,
                    ..
                },
                Some(Obj::Array { data: old_data, .. }),
            ) = (&mut o, old.get(&h))
                && old_data.len() == data.len()
            {
                *data = old_data.clone();
            }
            if let (
                Obj::Instance {
                    native: heap::NativeState::Key(k),
                    ..
                },
                Some(Obj::Instance {
                    native: heap::NativeState::Key(old_k),
                    ..
                }),
            ) = (&mut o, old.get(&h))
            {
                k.keep_material(old_k);
            }
            self.heap.objects.insert(h, o);
        }
        self.dirty.clear();
        self.statics_dirty = false;
        self.meta_dirty = false;
    }

    /// Marks a persistent object as changed (a transient array's contents are never written).
    pub(crate) fn touch(&mut self, h: u16) {
        if h < heap::FIRST_PERSISTENT {
            return;
        }
        if let Some(Obj::Array {
            transient: Some(_), ..
        }) = self.heap.objects.get(&h)
        {
            return;
        }
        self.dirty.insert(h);
    }

    /// Whether changed persistent state waits to be written.
    pub(crate) fn pending(&self) -> bool {
        !self.dirty.is_empty()
            || self.statics_dirty
            || self.meta_dirty
            || !self.applets_dirty.is_empty()
    }

    /// Writes persistent object `h` as it is in memory outside the open transaction too
    /// (non-atomic array writes, PIN presentation): its committed record gets `patch`
    /// applied, so an abort or power loss before the commit keeps the change. Without a
    /// transaction, or for an object not committed yet, nothing is done here (the normal
    /// write path applies).
    pub(crate) fn write_outside(
        &mut self,
        p: &mut dyn Persist,
        h: u16,
        patch: impl FnOnce(&mut Obj),
    ) -> Result<(), StoreFail> {
        if h < heap::FIRST_PERSISTENT || !p.in_transaction() {
            return Ok(());
        }
        let name = format!("{OBJ}{h:04X}");
        let Some(mut o) = p.get_committed(&name).and_then(|b| heap::decode(&b)) else {
            return Ok(());
        };
        if let Obj::Array {
            transient: Some(_), ..
        } = o
        {
            return Ok(());
        }
        patch(&mut o);
        p.put_outside(&name, &heap::encode(&o))
    }

    /// Records the chip's work for the card's timing model.
    pub(crate) fn charge(&mut self, op: CardOp) {
        self.charges.push(op);
    }

    /// Writes every changed persistent object.
    fn flush(&mut self, p: &mut dyn Persist) -> Result<(), StoreFail> {
        let dirty = std::mem::take(&mut self.dirty);
        for h in dirty {
            if h < heap::FIRST_PERSISTENT {
                continue;
            }
            if let Some(o) = self.heap.objects.get(&h) {
                p.put(&format!("{OBJ}{h:04X}"), &heap::encode(o))?;
            }
        }
        if self.statics_dirty {
            p.put(STATICS, &self.statics)?;
            self.statics_dirty = false;
        }
        if self.meta_dirty {
            let mut m = self.heap.next.to_be_bytes().to_vec();
            m.extend_from_slice(&self.meta_applet.to_be_bytes());
            p.put(META, &m)?;
            self.meta_dirty = false;
        }
        for aid in std::mem::take(&mut self.applets_dirty) {
            let h = self.applets.get(&aid).copied().unwrap_or(0);
            p.put(&instance_record(&aid), &h.to_be_bytes())?;
        }
        Ok(())
    }

    /// Runs the applet's `install(byte[], short, byte)` (the Applet component's method
    /// `install_offset`) with the GlobalPlatform install parameters `params` (instance AID,
    /// privileges and application parameters as length-value fields). The applet must call
    /// `register`.
    pub fn install(&mut self, p: &mut dyn Persist, install_offset: u16, params: &[u8]) -> Answer {
        self.load(p);
        if self.statics.is_empty()
            && self.pkg.model.static_fields.image_size > 0
            && let Err(a) = self.init_statics()
        {
            return a;
        }
        let arr = match self.system_bytes(params) {
            Ok(h) => h,
            Err(a) => return a,
        };
        let len = params.len().min(127) as i16;
        match self.call(
            p,
            interp::Call::Static(install_offset),
            &[arr as i16, 0, len],
        ) {
            Ok(_) if self.applet == 0 => {
                self.last_error = Some("install() returned without calling register()".into());
                Answer::Sw(SW_UNKNOWN)
            }
            Ok(_) => Answer::Ok(Vec::new()),
            Err(a) => a,
        }
    }

    /// Initialises the package's static fields from its Static Field component (its arrays
    /// made) and writes them, unless the context has them already: what the card's installer
    /// does when it loads the package.
    pub fn init_package(&mut self, p: &mut dyn Persist) -> Result<(), StoreFail> {
        self.load(p);
        if self.statics.is_empty()
            && self.pkg.model.static_fields.image_size > 0
            && self.init_statics().is_err()
        {
            return Err(StoreFail::Full);
        }
        self.flush(p)
    }

    fn init_statics(&mut self) -> Result<(), Answer> {
        let sf = self.pkg.model.static_fields.clone();
        self.statics = sf.image();
        for (i, a) in sf.array_inits.iter().enumerate() {
            let (elem, data) = match a.kind {
                2 => (heap::Elem::Boolean, heap::Data::Bytes(a.values.clone())),
                3 => (heap::Elem::Byte, heap::Data::Bytes(a.values.clone())),
                4 => (
                    heap::Elem::Short,
                    heap::Data::Shorts(
                        a.values
                            .chunks_exact(2)
                            .map(|c| i16::from_be_bytes([c[0], c[1]]))
                            .collect(),
                    ),
                ),
                _ => (
                    heap::Elem::Int,
                    heap::Data::Ints(
                        a.values
                            .chunks_exact(4)
                            .map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    ),
                ),
            };
            let h = self
                .heap
                .alloc(Obj::Array {
                    elem,
                    data,
                    transient: None,
                })
                .ok_or(Answer::Sw(SW_UNKNOWN))?;
            self.dirty.insert(h);
            if let Some(s) = self.statics.get_mut(2 * i..2 * i + 2) {
                s.copy_from_slice(&h.to_be_bytes());
            }
        }
        self.statics_dirty = true;
        self.meta_dirty = true;
        Ok(())
    }

    fn system_bytes(&mut self, b: &[u8]) -> Result<u16, Answer> {
        self.heap
            .alloc_system(Obj::Array {
                elem: heap::Elem::Byte,
                data: heap::Data::Bytes(b.to_vec()),
                transient: Some(1),
            })
            .ok_or(Answer::Sw(SW_UNKNOWN))
    }

    /// Whether an instance of this package is selected on some channel.
    fn context_active(&self) -> bool {
        self.active.values().any(|n| *n > 0)
    }

    /// The applet's `MultiSelectable` method `name` when its class implements that interface
    /// (called instead of `Applet.select()`/`deselect()` while the package is active on
    /// another channel, Java Card 3.0.5 runtime environment specification §4.2).
    fn multi_selectable(&self, name: &str, descriptor: &str) -> Option<u16> {
        let i = api::class_by_name("javacard.framework.MultiSelectable")?;
        let token = api::virtual_token("javacard.framework.MultiSelectable", name, descriptor)?;
        let class = match self.heap.objects.get(&self.applet) {
            Some(Obj::Instance { class, .. }) => *class,
            _ => return None,
        };
        match self.resolve_interface(class, link::ClassId::Api(i as u16), token) {
            Ok(interp::Target::Code(o)) => Some(o),
            _ => None,
        }
    }

    /// The applet's `Applet.<name><plain>`, or, while its package is active on another
    /// channel and its class is `MultiSelectable`, `MultiSelectable.<name><multi>` with
    /// whether this instance is (still) active on another channel.
    fn selection_call(
        &mut self,
        p: &mut dyn Persist,
        name: &str,
        plain: &str,
        multi: &str,
    ) -> Result<Option<i32>, Answer> {
        match self.multi_selectable(name, multi) {
            Some(o) if self.context_active() => {
                let here = self.active.get(&self.aid).is_some_and(|n| *n > 0);
                self.call(
                    p,
                    interp::Call::Static(o),
                    &[self.applet as i16, i16::from(here)],
                )
            }
            _ => self.call(
                p,
                interp::Call::Virtual(self.applet, applet_token(name, plain)),
                &[],
            ),
        }
    }

    /// SELECT: the applet's `select()` (or, while its package is active on another channel,
    /// `MultiSelectable.select(appInstAlreadyActive)`), then (if it accepted) `process(apdu)`
    /// with the SELECT command; the answer is the SELECT response.
    pub fn select(&mut self, p: &mut dyn Persist, cmd: &ApduIn) -> Answer {
        self.load(p);
        if self.applet == 0 {
            return Answer::Sw(0x6999);
        }
        match self.selection_call(p, "select", "()Z", "(Z)Z") {
            Ok(Some(v)) if v != 0 => {}
            Err(Answer::Torn) => return Answer::Torn,
            _ => return Answer::Sw(0x6999),
        }
        self.selecting = true;
        let a = self.process_inner(p, cmd);
        self.selecting = false;
        if matches!(a, Answer::Ok(_) | Answer::Sw(0x9000)) {
            *self.active.entry(self.aid.clone()).or_default() += 1;
        }
        a
    }

    /// A command for the selected applet: its `process(apdu)`.
    pub fn process(&mut self, p: &mut dyn Persist, cmd: &ApduIn) -> Answer {
        self.load(p);
        if self.applet == 0 {
            return Answer::Sw(0x6999);
        }
        self.process_inner(p, cmd)
    }

    fn process_inner(&mut self, p: &mut dyn Persist, cmd: &ApduIn) -> Answer {
        let apdu = match self.begin_apdu(cmd) {
            Ok(h) => h,
            Err(a) => return a,
        };
        match self.call(
            p,
            interp::Call::Virtual(
                self.applet,
                applet_token("process", "(Ljavacard/framework/APDU;)V"),
            ),
            &[apdu as i16],
        ) {
            Ok(_) => Answer::Ok(std::mem::take(&mut self.apdu.out)),
            Err(a) => a,
        }
    }

    /// Another applet is selected on the channel: the applet's `deselect()` (or, while its
    /// package stays active on another channel, `MultiSelectable.deselect(appInstStillActive)`),
    /// then, when no instance of the package is selected any more, the context's
    /// CLEAR_ON_DESELECT arrays clear (JCRE 3.0.5 §4.2, multiselection).
    pub fn deselect(&mut self, p: &mut dyn Persist) -> Answer {
        self.load(p);
        if let Some(n) = self.active.get_mut(&self.aid) {
            *n = n.saturating_sub(1);
        }
        let a = if self.applet != 0 {
            match self.selection_call(p, "deselect", "()V", "(Z)V") {
                Ok(_) => Answer::Ok(Vec::new()),
                Err(a) => a,
            }
        } else {
            Answer::Ok(Vec::new())
        };
        if !self.context_active() {
            self.heap.clear_transient(2);
            self.validated.clear();
        }
        a
    }

    /// Card reset (power-up): transient arrays clear, the PINs' validated flags drop, and the
    /// persistent objects are read again from the store at the next call (power loss may have
    /// rolled back writes this machine still holds).
    pub fn reset(&mut self) {
        self.loaded = false;
        self.dirty.clear();
        self.statics_dirty = false;
        self.meta_dirty = false;
        self.applets_dirty.clear();
        self.active.clear();
        self.heap.clear_transient(1);
        self.validated.clear();
        self.frames.clear();
        self.words.clear();
    }
}
