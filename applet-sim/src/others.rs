//! How applets reach each other through the runtime: a security domain's personalisation
//! forwarding, and Java Card shareable interface objects across contexts.

use crate::applet::Applet;
use crate::applet::{Aid, AppletContext, OtherApplets};
use crate::applet_store::AppletStore;
use crate::callers::Callers;
use crate::class_table::ClassTable;
use crate::registry::RegistryEntry;
use crate::rng::CardRng;
use crate::store::Store;
use card_wire::apdu::{Command, Response};
use card_wire::sw::StatusWord;
use std::collections::BTreeMap;

/// A live applet instance and whether its class sees the whole card's memory.
pub(crate) struct Instance {
    pub(crate) applet: Box<dyn Applet>,
    pub(crate) privileged: bool,
}

pub(crate) type Instances = BTreeMap<Aid, Instance>;

/// The registry as an applet may see it: all of it for a security domain, its own entry
/// otherwise (other instances' install parameters can hold their providers' keys).
pub(crate) fn visible<'r>(
    registry: &'r [RegistryEntry],
    aid: &Aid,
    privileged: bool,
) -> &'r [RegistryEntry] {
    if privileged {
        return registry;
    }
    match registry.iter().position(|e| &e.aid == aid) {
        Some(i) => &registry[i..=i],
        None => &[],
    }
}

/// The applet's own view of persistent memory.
pub(crate) fn scoped<'s>(store: &'s mut Store, aid: &Aid, privileged: bool) -> AppletStore<'s> {
    AppletStore::new(store, &aid.to_hex(), privileged)
}

/// The other applets as the running one reaches them: a security domain forwards
/// personalisation (no further nesting), a Java Card applet calls shareable objects.
pub(crate) struct Others<'m> {
    pub(crate) instances: &'m mut Instances,
    pub(crate) classes: &'m ClassTable,
}

struct NoOthers;

impl OtherApplets for NoOthers {
    fn personalize(
        &mut self,
        _: &Aid,
        _: &Command,
        _: u8,
        _: &mut CardRng,
        _: &mut Store,
        _: &[RegistryEntry],
    ) -> Result<Response, StatusWord> {
        Err(StatusWord::CONDITIONS_NOT_SATISFIED)
    }
}

impl Others<'_> {
    /// Runs `f` on the applet `aid` taken out of the map, with the rest in its reach.
    fn with_server<T>(
        &mut self,
        aid: &Aid,
        rng: &mut CardRng,
        store: &mut Store,
        f: impl FnOnce(&mut dyn Applet, &mut AppletContext<'_>) -> T,
    ) -> Option<T> {
        let mut inst = self.instances.remove(aid)?;
        let out = {
            let mut rest = Others {
                instances: &mut *self.instances,
                classes: self.classes,
            };
            let mut ctx = AppletContext {
                channel: 0,
                aid,
                rng,
                store: scoped(store, aid, inst.privileged),
                registry: &[],
                others: &mut rest,
                classes: self.classes,
            };
            f(inst.applet.as_mut(), &mut ctx)
        };
        self.instances.insert(aid.clone(), inst);
        Some(out)
    }
}

impl OtherApplets for Others<'_> {
    fn personalize(
        &mut self,
        aid: &Aid,
        cmd: &Command,
        channel: u8,
        rng: &mut CardRng,
        store: &mut Store,
        registry: &[RegistryEntry],
    ) -> Result<Response, StatusWord> {
        let inst = self
            .instances
            .get_mut(aid)
            .ok_or(StatusWord::REFERENCED_DATA_NOT_FOUND)?;
        let mut ctx = AppletContext {
            channel,
            aid,
            rng,
            store: scoped(store, aid, inst.privileged),
            registry: visible(registry, aid, inst.privileged),
            others: &mut NoOthers,
            classes: self.classes,
        };
        inst.applet.personalize(cmd, &mut ctx)
    }

    // A server runs with the applets not already running in reach: it may call on into a
    // third context. A context whose call is under way (its caller's) is out of the map (or,
    // for another instance of a running package, busy): a call back into it finds its machine
    // in `callers` before it gets here (`jc_applet`), and nesting is bounded there.
    fn shareable_object(
        &mut self,
        server: &Aid,
        client: &Aid,
        parameter: u8,
        rng: &mut CardRng,
        store: &mut Store,
        callers: Callers<'_>,
    ) -> Result<Option<kagi_jcvm::share::Sio>, kagi_jcvm::StoreFail> {
        if !crate::registry::entry(store, server).is_some_and(|e| e.selectable()) {
            return Ok(None);
        }
        Ok(self
            .with_server(server, rng, store, |a, ctx| {
                a.shareable_object(client.as_bytes(), parameter, ctx, callers)
            })
            .flatten())
    }

    fn call_shareable(
        &mut self,
        owner: &Aid,
        call: kagi_jcvm::share::ShareCall,
        rng: &mut CardRng,
        store: &mut Store,
        callers: Callers<'_>,
    ) -> kagi_jcvm::share::ShareOutcome {
        if !self.instances.contains_key(owner) {
            return kagi_jcvm::share::ShareOutcome {
                ret: kagi_jcvm::share::ShareReturn::Security,
                buffer: call.buffer,
            };
        }
        self.with_server(owner, rng, store, |a, ctx| {
            a.call_shareable(call, ctx, callers)
        })
        .unwrap_or(kagi_jcvm::share::ShareOutcome {
            ret: kagi_jcvm::share::ShareReturn::Security,
            buffer: Vec::new(),
        })
    }
}
