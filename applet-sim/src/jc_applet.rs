//! Java Card applets from CAP files, run by kagi's Java Card VM ([`kagi_jcvm`]): the
//! [`Applet`] seam over a [`Vm`] whose objects live in the applet's own persistent memory.

use crate::applet::{Aid, Applet, AppletContext, OtherApplets};
use crate::applet_store::AppletStore;
use crate::callers::{Busy, Callers, MAX_NESTING};
use crate::rng::CardRng;
use crate::store::StoreError;
use card_wire::apdu::{Command, Response};
use card_wire::sw::StatusWord;
use kagi_jcvm::share::{ShareCall, ShareOutcome, ShareReturn, Sio};
use kagi_jcvm::{Answer, ApduIn, Limits, Package, Persist, StoreFail, Vm};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

/// The applet's persistent memory as the VM sees it, and (when the runtime gives them) the
/// other applets, for `JCSystem.lookupAID` and shareable interface objects.
///
/// A package context's records (`jc/…`) are the package's, under `jcctx/<package AID>/`;
/// an old-form instance keeps them in its own namespace. Transactions are the card's.
pub(crate) struct ScopedPersist<'a, 'b> {
    store: &'a mut AppletStore<'b>,
    /// The package context's records prefix, `None` for an old-form instance.
    records: Option<&'a str>,
    others: Option<Reach<'a>>,
    /// The contexts whose calls are under way (a shareable call's client among them).
    callers: Callers<'a>,
}

/// The other applets as an applet reaches them through the runtime.
pub(crate) struct Reach<'a> {
    applets: &'a mut dyn OtherApplets,
    rng: &'a mut CardRng,
    me: &'a Aid,
}

impl<'a, 'b> ScopedPersist<'a, 'b> {
    /// The memory of a context (`records`: its records prefix, see
    /// [`crate::registry::context_prefix`]) as instance `store` sees it, with no other
    /// applets reachable.
    pub(crate) fn new(store: &'a mut AppletStore<'b>, records: Option<&'a str>) -> Self {
        ScopedPersist {
            store,
            records,
            others: None,
            callers: Callers::default(),
        }
    }

    fn key(&self, name: &str) -> Option<String> {
        self.records.map(|p| format!("{p}{name}"))
    }
}

fn fail(e: StoreError) -> StoreFail {
    match e {
        StoreError::Torn => StoreFail::Torn,
        StoreError::Full { .. } => StoreFail::Full,
    }
}

impl Persist for ScopedPersist<'_, '_> {
    fn get(&self, name: &str) -> Option<Vec<u8>> {
        match self.key(name) {
            Some(k) => self.store.card().get(&k),
            None => self.store.get(name),
        }
        .map(<[u8]>::to_vec)
    }
    fn put(&mut self, name: &str, value: &[u8]) -> Result<(), StoreFail> {
        match self.key(name) {
            Some(k) => self.store.card_mut().put(&k, value),
            None => self.store.put(name, value),
        }
        .map_err(fail)
    }
    fn get_committed(&self, name: &str) -> Option<Vec<u8>> {
        match self.key(name) {
            Some(k) => self.store.card().get_committed(&k),
            None => self.store.get_committed(name),
        }
        .map(<[u8]>::to_vec)
    }
    fn put_outside(&mut self, name: &str, value: &[u8]) -> Result<(), StoreFail> {
        match self.key(name) {
            Some(k) => self.store.card_mut().put_outside(&k, value),
            None => self.store.put_outside(name, value),
        }
        .map_err(fail)
    }
    fn names(&self, prefix: &str) -> Vec<String> {
        match (self.records, self.key(prefix)) {
            (Some(p), Some(k)) => self
                .store
                .card()
                .keys(&k)
                .into_iter()
                .map(|k| k[p.len()..].to_string())
                .collect(),
            _ => self.store.names(prefix),
        }
    }
    fn begin(&mut self) {
        self.store.begin();
    }
    fn commit(&mut self) -> Result<(), StoreFail> {
        self.store.commit().map_err(fail)
    }
    fn abort(&mut self) {
        self.store.abort();
    }
    fn in_transaction(&self) -> bool {
        self.store.in_transaction()
    }
    fn remove(&mut self, name: &str) -> Result<(), StoreFail> {
        match self.key(name) {
            Some(k) => self.store.card_mut().remove(&k),
            None => self.store.remove(name),
        }
        .map_err(fail)
    }
    fn card_state(&self) -> u8 {
        crate::registry::card_life_cycle(self.store.card())
    }
    /// The instance's life-cycle state in the registry (`INSTALLED` before the card manager
    /// has written its entry, i.e. while its `install` runs).
    fn life_cycle(&self) -> u8 {
        Aid::new(&self.store.instance())
            .ok()
            .and_then(|aid| crate::registry::entry(self.store.card(), &aid))
            .map(|e| e.life_cycle)
            .unwrap_or(crate::registry::app_state::INSTALLED)
    }
    fn set_life_cycle(&mut self, state: u8) -> Result<bool, StoreFail> {
        // The instance's own registry entry (GPSystem's application-specific states; the VM
        // checked the value); `false` when it has no entry yet.
        let Some(mut e) = Aid::new(&self.store.instance())
            .ok()
            .and_then(|aid| crate::registry::entry(self.store.card(), &aid))
        else {
            return Ok(false);
        };
        e.life_cycle = state;
        crate::registry::put_entry(self.store.card_mut(), &e).map_err(fail)?;
        Ok(true)
    }
    fn charge(&mut self, op: kagi_jcvm::CardOp) {
        self.store.charge(op);
    }
    fn applet_exists(&self, aid: &[u8]) -> bool {
        Aid::new(aid)
            .ok()
            .and_then(|a| crate::registry::entry(self.store.card(), &a))
            .is_some_and(|e| e.selectable())
    }
    fn shareable_object(
        &mut self,
        server: &[u8],
        parameter: u8,
        caller: &mut Vm,
    ) -> Result<Option<Sio>, StoreFail> {
        let (Some(client), Ok(server)) = (
            self.others.as_ref().map(|r| r.me.as_bytes().to_vec()),
            Aid::new(server),
        ) else {
            return Ok(None);
        };
        self.route(
            caller,
            &server,
            |vm, p| {
                let selectable =
                    crate::registry::entry(p.store.card(), &server).is_some_and(|e| e.selectable());
                match selectable.then(|| vm.shareable_object(p, &client, parameter)) {
                    Some(Ok(sio)) => Ok(sio),
                    Some(Err(Answer::Torn)) => Err(StoreFail::Torn),
                    _ => Ok(None),
                }
            },
            |reach, store, callers| {
                reach
                    .applets
                    .shareable_object(&server, reach.me, parameter, reach.rng, store, callers)
            },
        )
        .unwrap_or(Ok(None))
    }
    fn call_shareable(&mut self, owner: &[u8], call: ShareCall, caller: &mut Vm) -> ShareOutcome {
        let refused = |buffer: Vec<u8>| ShareOutcome {
            ret: ShareReturn::Security,
            buffer,
        };
        let Ok(owner) = Aid::new(owner) else {
            return refused(call.buffer);
        };
        let call = std::cell::Cell::new(Some(call));
        let out = self.route(
            caller,
            &owner,
            |vm, p| match call.take() {
                Some(c) => vm.call_shareable(p, c),
                None => refused(Vec::new()),
            },
            |reach, store, callers| match call.take() {
                Some(c) => reach
                    .applets
                    .call_shareable(&owner, c, reach.rng, store, callers),
                None => refused(Vec::new()),
            },
        );
        out.unwrap_or_else(|| refused(call.take().map(|c| c.buffer).unwrap_or_default()))
    }
}

impl ScopedPersist<'_, '_> {
    /// Sends a call from `caller` (this context's machine, whose call is under way) for the
    /// instance `owner`: to `busy` when `owner`'s context has a call under way too (its
    /// machine, entered for `owner`, and its memory), else to `free` (the other applets as
    /// the runtime reaches them, the card's memory, the callers with this one); `None` when
    /// no other applet is reachable or calls are nested [`MAX_NESTING`] deep.
    fn route<T>(
        &mut self,
        caller: &mut Vm,
        owner: &Aid,
        mut busy: impl FnMut(&mut Vm, &mut ScopedPersist<'_, '_>) -> T,
        free: impl FnOnce(&mut Reach<'_>, &mut crate::store::Store, Callers<'_>) -> T,
    ) -> Option<T> {
        let reach = self.others.as_mut()?;
        let mut me = Busy {
            vm: caller,
            records: self.records,
            privileged: self.store.privileged(),
            up: self.callers.reborrow(),
        };
        let mut callers = Callers::of(&mut me);
        if callers.depth() >= MAX_NESTING {
            return None;
        }
        let store = self.store.card_mut();
        let mut out = None;
        callers.find(owner.as_bytes(), &mut |found, mut rest| {
            let mut st = crate::others::scoped(store, owner, found.privileged);
            let mut p = ScopedPersist {
                store: &mut st,
                records: found.records,
                others: Some(Reach {
                    applets: &mut *reach.applets,
                    rng: &mut *reach.rng,
                    me: owner,
                }),
                callers: rest.reborrow(),
            };
            out = Some(found.vm.reenter(owner.as_bytes(), |vm| busy(vm, &mut p)));
        });
        Some(match out {
            Some(o) => o,
            None => free(reach, store, callers),
        })
    }
}

/// A package's context: its machine, shared by every instance of the package (old-form
/// instances have one each).
pub type Context = Arc<Mutex<Vm>>;

/// A Java Card applet instance from a CAP file: an instance of its package's [`Context`].
pub struct JcApplet {
    aid: Aid,
    context: Context,
    /// The context's records prefix (`None`: an old-form instance's own namespace).
    records: Option<String>,
}

impl std::fmt::Debug for JcApplet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JcApplet")
            .field("aid", &self.aid)
            .field("records", &self.records)
            .finish()
    }
}

/// The machine, even if a panic in another thread poisoned its lock (its state is the store's).
fn lock(c: &Context) -> MutexGuard<'_, Vm> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

impl JcApplet {
    /// The instance `aid` in the package context `context` whose records are under
    /// `records` ([`crate::registry::context_prefix`]).
    pub fn member(context: Context, records: String, aid: &Aid) -> Self {
        JcApplet {
            aid: aid.clone(),
            context,
            records: Some(records),
        }
    }

    /// The old-form instance `aid` of the linked package `pkg`: a context of its own, its
    /// records in its own namespace (card images made before package contexts).
    pub fn solo(pkg: Arc<Package>, aid: &Aid) -> Self {
        JcApplet {
            aid: aid.clone(),
            context: Arc::new(Mutex::new(Vm::new(pkg, aid.as_bytes(), Limits::default()))),
            records: None,
        }
    }

    /// The instance's context.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The machine, entered for this instance.
    fn vm(&self) -> MutexGuard<'_, Vm> {
        let mut vm = lock(&self.context);
        vm.enter(self.aid.as_bytes());
        vm
    }

    /// The machine for a call the runtime makes on another applet's behalf: `None` when the
    /// context is busy outside the callers the card handed on (a call back into a context
    /// whose call is under way runs on its machine from [`Callers`] instead), which the
    /// firewall refuses.
    fn vm_if_free(&self) -> Option<MutexGuard<'_, Vm>> {
        let mut vm = match self.context.try_lock() {
            Ok(vm) => vm,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        vm.enter(self.aid.as_bytes());
        Some(vm)
    }
}

/// The applet's memory and the other applets, from its context.
fn reach<'a, 'b>(
    ctx: &'a mut AppletContext<'b>,
    records: Option<&'a str>,
    callers: Callers<'a>,
) -> ScopedPersist<'a, 'b> {
    ScopedPersist {
        store: &mut ctx.store,
        records,
        others: Some(Reach {
            applets: &mut *ctx.others,
            rng: &mut *ctx.rng,
            me: ctx.aid,
        }),
        callers,
    }
}

/// The status word an answer of the VM becomes.
pub(crate) fn answer(a: Answer) -> Result<Vec<u8>, StatusWord> {
    match a {
        Answer::Ok(d) => Ok(d),
        Answer::Sw(0x9000) => Ok(Vec::new()),
        Answer::Sw(sw) | Answer::Data(_, sw) => Err(StatusWord(sw)),
        Answer::Torn => Err(StatusWord::MEMORY_FAILURE),
    }
}

impl Applet for JcApplet {
    fn select(&mut self, ctx: &mut AppletContext<'_>) -> Result<Vec<u8>, StatusWord> {
        let cla = if ctx.channel < 4 {
            ctx.channel
        } else {
            0x40 | (ctx.channel - 4)
        };
        let cmd = ApduIn {
            header: [cla, 0xA4, 0x04, 0x00],
            data: ctx.aid.as_bytes().to_vec(),
            ne: 256,
            extended: false,
        };
        let mut vm = self.vm();
        answer(vm.select(
            &mut reach(ctx, self.records.as_deref(), Callers::default()),
            &cmd,
        ))
    }

    fn deselect(&mut self, ctx: &mut AppletContext<'_>) {
        let mut vm = self.vm();
        let _ = vm.deselect(&mut reach(ctx, self.records.as_deref(), Callers::default()));
    }

    fn process(
        &mut self,
        command: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, StatusWord> {
        let cmd = ApduIn {
            header: command.header(),
            data: command.data().to_vec(),
            ne: command.ne().unwrap_or(0),
            extended: command.is_extended(),
        };
        let mut vm = self.vm();
        match vm.process(
            &mut reach(ctx, self.records.as_deref(), Callers::default()),
            &cmd,
        ) {
            Answer::Data(d, sw) => Ok(Response::new(d, StatusWord(sw))),
            a => answer(a).map(Response::success),
        }
    }

    fn reset(&mut self) {
        lock(&self.context).reset();
    }

    fn shareable_object(
        &mut self,
        client: &[u8],
        parameter: u8,
        ctx: &mut AppletContext<'_>,
        mut callers: Callers<'_>,
    ) -> Option<Sio> {
        let mut vm = self.vm_if_free()?;
        vm.shareable_object(
            &mut reach(ctx, self.records.as_deref(), callers.reborrow()),
            client,
            parameter,
        )
        .ok()
        .flatten()
    }

    fn call_shareable(
        &mut self,
        call: ShareCall,
        ctx: &mut AppletContext<'_>,
        mut callers: Callers<'_>,
    ) -> ShareOutcome {
        let Some(mut vm) = self.vm_if_free() else {
            return ShareOutcome {
                ret: ShareReturn::Security,
                buffer: call.buffer,
            };
        };
        vm.call_shareable(
            &mut reach(ctx, self.records.as_deref(), callers.reborrow()),
            call,
        )
    }

    fn extended_length(&self) -> bool {
        // The instance's own class, not any class of its package (Java Card 3.0.5
        // `javacardx.apdu.ExtendedLength`: the applet implements it). Commands reach an
        // applet after its SELECT, when the machine has read its state.
        self.vm().applet_implements("javacardx.apdu.ExtendedLength")
    }

    fn multi_selectable(&self) -> bool {
        self.vm()
            .applet_implements("javacard.framework.MultiSelectable")
    }

    fn own_get_response(&self) -> bool {
        true
    }

    fn diagnostic(&self) -> Option<String> {
        lock(&self.context).last_error().map(str::to_string)
    }
}
