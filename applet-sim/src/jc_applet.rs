//! Java Card applets from CAP files, run by kagi's Java Card VM ([`kagi_jcvm`]): the
//! [`Applet`] seam over a [`Vm`] whose objects live in the applet's own persistent memory.

use crate::applet::{Aid, Applet, AppletContext, OtherApplets};
use crate::applet_store::AppletStore;
use crate::rng::CardRng;
use crate::store::StoreError;
use card_wire::apdu::{Command, Response};
use card_wire::sw::StatusWord;
use kagi_jcvm::share::{ShareCall, ShareOutcome, ShareReturn, Sio};
use kagi_jcvm::{Answer, ApduIn, Limits, Package, Persist, StoreFail, Vm};
use std::sync::Arc;

/// The applet's persistent memory as the VM sees it, and (when the runtime gives them) the
/// other applets, for `JCSystem.lookupAID` and shareable interface objects.
pub(crate) struct ScopedPersist<'a, 'b> {
    store: &'a mut AppletStore<'b>,
    others: Option<Reach<'a>>,
}

/// The other applets as an applet reaches them through the runtime.
pub(crate) struct Reach<'a> {
    applets: &'a mut dyn OtherApplets,
    rng: &'a mut CardRng,
    me: &'a Aid,
}

impl<'a, 'b> ScopedPersist<'a, 'b> {
    /// The applet's memory alone (no other applets reachable).
    pub(crate) fn new(store: &'a mut AppletStore<'b>) -> Self {
        ScopedPersist {
            store,
            others: None,
        }
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
        self.store.get(name).map(<[u8]>::to_vec)
    }
    fn put(&mut self, name: &str, value: &[u8]) -> Result<(), StoreFail> {
        self.store.put(name, value).map_err(fail)
    }
    fn get_committed(&self, name: &str) -> Option<Vec<u8>> {
        self.store.get_committed(name).map(<[u8]>::to_vec)
    }
    fn put_outside(&mut self, name: &str, value: &[u8]) -> Result<(), StoreFail> {
        self.store.put_outside(name, value).map_err(fail)
    }
    fn names(&self, prefix: &str) -> Vec<String> {
        self.store.names(prefix)
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
        self.store.remove(name).map_err(fail)
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
    fn shareable_object(&mut self, server: &[u8], parameter: u8) -> Result<Option<Sio>, StoreFail> {
        let (Some(reach), Ok(server)) = (self.others.as_mut(), Aid::new(server)) else {
            return Ok(None);
        };
        reach.applets.shareable_object(
            &server,
            reach.me,
            parameter,
            reach.rng,
            self.store.card_mut(),
        )
    }
    fn call_shareable(&mut self, owner: &[u8], call: ShareCall) -> ShareOutcome {
        let (Some(reach), Ok(owner)) = (self.others.as_mut(), Aid::new(owner)) else {
            return ShareOutcome {
                ret: ShareReturn::Security,
                buffer: call.buffer,
            };
        };
        reach
            .applets
            .call_shareable(&owner, call, reach.rng, self.store.card_mut())
    }
}

/// Writes made where the runtime gives no store (an applet's `deselect()`), kept until the
/// next call that has one.
#[derive(Default)]
struct Deferred(Vec<(String, Option<Vec<u8>>)>);

impl Persist for Deferred {
    fn get(&self, name: &str) -> Option<Vec<u8>> {
        self.0
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.clone())
    }
    fn put(&mut self, name: &str, value: &[u8]) -> Result<(), StoreFail> {
        self.0.push((name.to_string(), Some(value.to_vec())));
        Ok(())
    }
    fn get_committed(&self, name: &str) -> Option<Vec<u8>> {
        self.get(name)
    }
    fn put_outside(&mut self, name: &str, value: &[u8]) -> Result<(), StoreFail> {
        self.put(name, value)
    }
    fn names(&self, _: &str) -> Vec<String> {
        Vec::new()
    }
    fn begin(&mut self) {}
    fn commit(&mut self) -> Result<(), StoreFail> {
        Ok(())
    }
    fn abort(&mut self) {}
    fn in_transaction(&self) -> bool {
        false
    }
    fn remove(&mut self, name: &str) -> Result<(), StoreFail> {
        self.0.push((name.to_string(), None));
        Ok(())
    }
}

/// A Java Card applet instance from a CAP file.
pub struct JcApplet {
    vm: Vm,
    deferred: Deferred,
}

impl std::fmt::Debug for JcApplet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.vm.fmt(f)
    }
}

impl JcApplet {
    /// The instance `aid` of the linked package `pkg`.
    pub fn new(pkg: Arc<Package>, aid: &Aid) -> Self {
        JcApplet {
            vm: Vm::new(pkg, aid.as_bytes(), Limits::default()),
            deferred: Deferred::default(),
        }
    }

    /// The VM (for its last error and counters).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    fn apply_deferred(&mut self, store: &mut AppletStore<'_>) -> Result<(), StatusWord> {
        for (n, v) in std::mem::take(&mut self.deferred.0) {
            match v {
                Some(v) => store.put(&n, &v)?,
                None => store.remove(&n)?,
            }
        }
        Ok(())
    }
}

/// The applet's memory and the other applets, from its context.
fn reach<'a, 'b>(ctx: &'a mut AppletContext<'b>) -> ScopedPersist<'a, 'b> {
    ScopedPersist {
        store: &mut ctx.store,
        others: Some(Reach {
            applets: &mut *ctx.others,
            rng: &mut *ctx.rng,
            me: ctx.aid,
        }),
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
        self.apply_deferred(&mut ctx.store)?;
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
        answer(self.vm.select(&mut reach(ctx), &cmd))
    }

    fn deselect(&mut self, _channel: u8) {
        let _ = self.vm.deselect(&mut self.deferred);
    }

    fn process(
        &mut self,
        command: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, StatusWord> {
        self.apply_deferred(&mut ctx.store)?;
        let cmd = ApduIn {
            header: command.header(),
            data: command.data().to_vec(),
            ne: command.ne().unwrap_or(0),
            extended: command.is_extended(),
        };
        match self.vm.process(&mut reach(ctx), &cmd) {
            Answer::Data(d, sw) => Ok(Response::new(d, StatusWord(sw))),
            a => answer(a).map(Response::success),
        }
    }

    fn reset(&mut self) {
        self.vm.reset();
    }

    fn shareable_object(
        &mut self,
        client: &[u8],
        parameter: u8,
        ctx: &mut AppletContext<'_>,
    ) -> Option<Sio> {
        self.apply_deferred(&mut ctx.store).ok()?;
        self.vm
            .shareable_object(&mut ScopedPersist::new(&mut ctx.store), client, parameter)
            .ok()
            .flatten()
    }

    fn call_shareable(&mut self, call: ShareCall, ctx: &mut AppletContext<'_>) -> ShareOutcome {
        if self.apply_deferred(&mut ctx.store).is_err() {
            return ShareOutcome {
                ret: ShareReturn::Full,
                buffer: call.buffer,
            };
        }
        self.vm
            .call_shareable(&mut ScopedPersist::new(&mut ctx.store), call)
    }

    fn extended_length(&self) -> bool {
        // The instance's own class, not any class of its package (Java Card 3.0.5
        // `javacardx.apdu.ExtendedLength`: the applet implements it). Commands reach an
        // applet after its SELECT, when the machine has read its state.
        self.vm.applet_implements("javacardx.apdu.ExtendedLength")
    }

    fn own_get_response(&self) -> bool {
        true
    }

    fn diagnostic(&self) -> Option<String> {
        self.vm.last_error().map(str::to_string)
    }
}
