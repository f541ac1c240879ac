//! The card runtime: parses APDUs, routes SELECT by AID, keeps one selected applet per
//! logical channel (0–19), handles MANAGE CHANNEL, command chaining and GET RESPONSE, so that
//! applets only ever see whole commands. It instantiates applets from the registry kept in
//! persistent memory, aborts transactions an applet left open, and goes mute when power is
//! lost in the middle of a persistent write (tearing).

use crate::applet::{Aid, Applet, AppletContext};
use crate::class_table::{ClassError, ClassTable};
use crate::others::{Instance, Instances, Others, scoped, visible};
use crate::registry::{self, RegistryEntry, card_state};
use crate::rng::CardRng;
use crate::store::Store;
use crate::timing::TimingProfile;
use card_wire::apdu::{ApduError, Class, Command, Response};
use card_wire::sw::StatusWord;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub use crate::applet::CHANNELS;

/// `6999`: applet selection failed / no applet selected (Java Card's SW_APPLET_SELECT_FAILED).
pub const SW_NO_APPLET: StatusWord = StatusWord(0x6999);

/// Every registry entry and load file module of `store` whose class `classes` lacks (CAP
/// modules aside: they are Java Card bytecode), and every instance whose class refuses its
/// stored install parameters: the first one as an error.
pub fn check_classes(store: &Store, classes: &ClassTable) -> Result<(), ClassError> {
    for e in registry::entries(store) {
        if e.class == registry::CAP_CLASS {
            continue;
        }
        match classes.instantiate(&e.class, &e.aid, &e.params) {
            None => {
                return Err(ClassError::Unregistered {
                    class: e.class,
                    what: "instance",
                    aid: e.aid,
                });
            }
            Some(Err(sw)) => {
                return Err(ClassError::Refused {
                    class: e.class,
                    aid: e.aid,
                    sw,
                });
            }
            Some(Ok(_)) => {}
        }
    }
    for lf in registry::load_files(store) {
        for (module, class) in lf.modules {
            if class != registry::CAP_CLASS && !classes.knows(&class) {
                return Err(ClassError::Unregistered {
                    class,
                    what: "load file module",
                    aid: module,
                });
            }
        }
    }
    Ok(())
}

#[derive(Default)]
struct ChannelState {
    open: bool,
    selected: Option<Aid>,
    pending: Vec<u8>,
    pending_sw: Option<StatusWord>,
    chain: Option<Command>,
    /// The current file of a UICC's file system, when a file and no applet is selected.
    file: Option<u16>,
}

/// The applets of a card and the per-channel state that routes commands to them.
pub struct Runtime {
    store: Store,
    instances: Instances,
    /// Java Card package contexts, shared by their instances.
    contexts: crate::contexts::Contexts,
    /// Packages whose contexts have garbage to collect (an instance went).
    gc_due: std::collections::BTreeSet<Aid>,
    registry: Vec<RegistryEntry>,
    synced: Option<u64>,
    channels: Vec<ChannelState>,
    rng: CardRng,
    extended_length: bool,
    classes: Arc<ClassTable>,
    timing: Option<TimingProfile>,
    card_time: Duration,
    last_time: Duration,
}

impl Runtime {
    /// A runtime over a card's persistent memory with the stock applet classes;
    /// `extended_length` says whether the card accepts extended APDUs at all.
    pub fn new(store: Store, rng: CardRng, extended_length: bool) -> Self {
        Self::with_classes(store, rng, extended_length, crate::stock::shared())
    }

    /// A runtime that instantiates applets from `classes`. An instance whose class the
    /// table lacks stays unselectable (`6A82`); check a store first with
    /// [`check_classes`] to have that reported instead.
    pub fn with_classes(
        store: Store,
        rng: CardRng,
        extended_length: bool,
        classes: Arc<ClassTable>,
    ) -> Self {
        let mut rt = Runtime {
            store,
            instances: BTreeMap::new(),
            contexts: BTreeMap::new(),
            gc_due: std::collections::BTreeSet::new(),
            registry: Vec::new(),
            synced: None,
            channels: (0..CHANNELS).map(|_| ChannelState::default()).collect(),
            rng,
            extended_length,
            classes,
            timing: None,
            card_time: Duration::ZERO,
            last_time: Duration::ZERO,
        };
        rt.channels[0].open = true;
        rt
    }

    /// Turns the card timing model on (or off with `None`): from now on each command is
    /// charged what it would take on that chip ([`crate::timing`]).
    pub fn set_timing(&mut self, profile: Option<TimingProfile>) {
        self.timing = profile;
    }

    /// The modelled card time of every command since the model was turned on.
    pub fn card_time(&self) -> Duration {
        self.card_time
    }

    /// The modelled time of the last command (zero without a model).
    pub fn last_card_time(&self) -> Duration {
        self.last_time
    }

    /// Persistent memory.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Persistent memory, mutably (tests inject tearing here).
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// The applet classes this runtime instantiates.
    pub fn classes(&self) -> &Arc<ClassTable> {
        &self.classes
    }

    /// What the applet `aid` knows about its last failed command beyond the status word
    /// ([`Applet::diagnostic`]): for a Java Card applet, the uncaught exception or the
    /// unsupported bytecode or API method and where it happened.
    pub fn diagnostic(&self, aid: &Aid) -> Option<String> {
        self.instances.get(aid)?.applet.diagnostic()
    }

    /// The registry as of the last command.
    pub fn registry(&self) -> &[RegistryEntry] {
        &self.registry
    }

    /// Brings the instances in line with the registry in persistent memory.
    fn sync(&mut self) {
        if self.synced == Some(self.store.generation()) {
            return;
        }
        let old = std::mem::replace(&mut self.registry, registry::entries(&self.store));
        let live: Vec<Aid> = self.registry.iter().map(|e| e.aid.clone()).collect();
        for e in old {
            if e.class == registry::CAP_CLASS
                && !live.contains(&e.aid)
                && let Some(elf) = e.elf
            {
                self.gc_due.insert(elf);
            }
        }
        self.instances.retain(|aid, _| live.contains(aid));
        let packages: Vec<&Aid> = self
            .registry
            .iter()
            .filter(|e| e.class == registry::CAP_CLASS)
            .filter_map(|e| e.elf.as_ref())
            .collect();
        self.contexts.retain(|elf, _| packages.contains(&elf));
        for e in &self.registry {
            if !self.instances.contains_key(&e.aid) && e.class == registry::CAP_CLASS {
                if let Some(applet) =
                    crate::contexts::instantiate(&self.store, e, &mut self.contexts)
                {
                    let applet = Box::new(applet);
                    self.instances.insert(
                        e.aid.clone(),
                        Instance {
                            applet,
                            privileged: false,
                        },
                    );
                }
            } else if !self.instances.contains_key(&e.aid)
                && let Some(Ok(applet)) = self.classes.instantiate(&e.class, &e.aid, &e.params)
            {
                let privileged = self.classes.is_privileged(&e.class);
                self.instances
                    .insert(e.aid.clone(), Instance { applet, privileged });
            }
        }
        for ch in &mut self.channels {
            if ch
                .selected
                .as_ref()
                .is_some_and(|a| !self.instances.contains_key(a))
            {
                ch.selected = None;
            }
        }
        // An instance went: what only it reached is garbage now (a failure leaves it for
        // the next collection).
        for elf in std::mem::take(&mut self.gc_due) {
            let _ = crate::contexts::collect(&mut self.store, &elf, &self.contexts);
        }
        self.synced = Some(self.store.generation());
    }

    fn default_applet(&self) -> Option<Aid> {
        let by_priv = self.registry.iter().find(|e| {
            e.has_privilege(0, registry::privilege::CARD_RESET) && !e.is_isd() && e.selectable()
        });
        by_priv
            .or_else(|| self.registry.iter().find(|e| e.is_isd()))
            .map(|e| e.aid.clone())
    }

    /// Calls `f` on applet `aid` with a context; the applet is taken out of the map meanwhile
    /// so it can reach the others.
    fn with_applet<T>(
        &mut self,
        aid: &Aid,
        channel: usize,
        f: impl FnOnce(&mut dyn Applet, &mut AppletContext<'_>) -> T,
    ) -> Option<T> {
        let mut inst = self.instances.remove(aid)?;
        let mut others = Others {
            instances: &mut self.instances,
            classes: &self.classes,
        };
        let mut ctx = AppletContext {
            channel: channel as u8,
            aid,
            rng: &mut self.rng,
            store: scoped(&mut self.store, aid, inst.privileged),
            registry: visible(&self.registry, aid, inst.privileged),
            others: &mut others,
            classes: &*self.classes,
        };
        let out = f(inst.applet.as_mut(), &mut ctx);
        self.instances.insert(aid.clone(), inst);
        Some(out)
    }

    /// Power-on or reset: an interrupted transaction rolls back, every channel but 0 closes,
    /// transient state is cleared and the default applet is selected on channel 0.
    pub fn reset(&mut self) {
        self.store.power_up();
        self.gc_due
            .extend(crate::contexts::collect_orphans(&mut self.store));
        for aid in crate::contexts::migrate(&mut self.store) {
            self.instances.remove(&aid);
        }
        self.synced = None;
        self.sync();
        for i in self.instances.values_mut() {
            i.applet.reset();
        }
        for (i, ch) in self.channels.iter_mut().enumerate() {
            *ch = ChannelState {
                open: i == 0,
                ..ChannelState::default()
            };
        }
        if let Some(d) = self.default_applet()
            && let Some(Ok(_)) = self.with_applet(&d, 0, |a, ctx| a.select(ctx))
        {
            self.channels[0].selected = Some(d);
        }
    }

    /// Processes one raw command APDU. `None` means the card went mute: power was lost in
    /// the middle of a persistent write.
    pub fn process(&mut self, raw: &[u8]) -> Option<Vec<u8>> {
        if self.store.is_torn() {
            return None;
        }
        self.sync();
        self.store.take_activity();
        let resp = self.process_response(raw);
        if self.store.in_transaction() {
            // Java Card aborts a transaction still open when the command ends.
            self.store.abort();
        }
        let (nvm, ops) = self.store.take_activity();
        if self.store.is_torn() {
            return None;
        }
        let out = resp.to_bytes();
        self.last_time = match &self.timing {
            Some(t) => t.command_time(raw.len() + out.len(), nvm, &ops),
            None => Duration::ZERO,
        };
        self.card_time += self.last_time;
        Some(out)
    }

    fn process_response(&mut self, raw: &[u8]) -> Response {
        let cmd = match Command::parse(raw) {
            Ok(c) => c,
            Err(ApduError::InvalidClass(_)) => {
                return Response::status(StatusWord::CLA_NOT_SUPPORTED);
            }
            Err(ApduError::InvalidIns(_)) => {
                return Response::status(StatusWord::INS_NOT_SUPPORTED);
            }
            Err(_) => return Response::status(StatusWord::WRONG_LENGTH),
        };
        let Some(ch) = cmd.class().channel() else {
            return Response::status(StatusWord::CLA_NOT_SUPPORTED);
        };
        let ch = ch as usize;
        if !self.channels[ch].open {
            // SELECT on a closed channel opens it (ISO 7816-4 §5.4.2); everything else fails.
            if Self::is_applet_select(&cmd) {
                self.channels[ch].open = true;
            } else {
                return Response::status(StatusWord::LOGICAL_CHANNEL_NOT_SUPPORTED);
            }
        }
        if cmd.is_extended() && !self.extended_length {
            return Response::status(StatusWord::WRONG_LENGTH);
        }
        // GET RESPONSE serves what is pending on this channel; anything else drops it.
        // With nothing pending, a Java Card applet that kept the rest of its answer takes it.
        let applets_own =
            self.channels[ch].pending.is_empty() && self.selected_answers_get_response(ch);
        if cmd.ins() == 0xC0
            && !cmd.class().is_proprietary()
            && !cmd.class().has_secure_messaging()
            && !applets_own
        {
            return self.get_response(ch, &cmd);
        }
        self.channels[ch].pending.clear();
        self.channels[ch].pending_sw = None;
        // MANAGE CHANNEL is never passed to an applet.
        if cmd.ins() == 0x70 && !cmd.class().is_proprietary() {
            return self.manage_channel(ch, &cmd);
        }
        let cmd = match self.chain(ch, cmd) {
            Ok(Some(c)) => c,
            Ok(None) => return Response::status(StatusWord::SUCCESS),
            Err(sw) => return Response::status(sw),
        };
        let ne = cmd.ne();
        let resp = if Self::is_applet_select(&cmd) {
            self.select(ch, &cmd)
        } else if self.is_uicc_file_command(ch, &cmd) {
            self.uicc_file(ch, &cmd)
        } else {
            self.dispatch(ch, &cmd)
        };
        self.limit(ch, resp, ne)
    }

    /// A SELECT by file identifier or path, or a READ BINARY of the current file, that the
    /// UICC file system answers: the card is a UICC and no applet on the channel handles
    /// file selection itself.
    fn is_uicc_file_command(&self, ch: usize, cmd: &Command) -> bool {
        let state = &self.channels[ch];
        crate::uicc::is_file_command(cmd, state.file.is_some())
            && crate::uicc::present(&self.store)
            && !state
                .selected
                .as_ref()
                .and_then(|a| self.instances.get(a))
                .is_some_and(|i| i.applet.handles_file_select())
    }

    /// Selecting a file leaves the applet selected on the channel (deselected first).
    fn uicc_file(&mut self, ch: usize, cmd: &Command) -> Response {
        let mut file = self.channels[ch].file;
        let resp = crate::uicc::process(cmd, &self.store, &mut file);
        if cmd.ins() == 0xA4
            && resp.sw.is_success()
            && let Some(old) = self.channels[ch].selected.take()
        {
            self.with_applet(&old, ch, |a, ctx| a.deselect(ctx));
        }
        self.channels[ch].file = file;
        resp
    }

    fn is_applet_select(cmd: &Command) -> bool {
        cmd.ins() == 0xA4
            && cmd.p1() == 0x04
            && !cmd.class().is_proprietary()
            && !cmd.class().has_secure_messaging()
    }

    fn chain(&mut self, ch: usize, cmd: Command) -> Result<Option<Command>, StatusWord> {
        let state = &mut self.channels[ch];
        let chained = cmd.class().is_chained();
        match state.chain.take() {
            Some(mut head) => {
                if head.header()[1..] != cmd.header()[1..] {
                    // The chain is abandoned. SELECT starts afresh; anything else is told
                    // that the chain's last command was expected (and may be sent again).
                    if Self::is_applet_select(&cmd) && !chained {
                        return Ok(Some(cmd));
                    }
                    return Err(StatusWord::LAST_COMMAND_EXPECTED);
                }
                let mut data = head.take_data();
                data.extend_from_slice(cmd.data());
                let joined = head
                    .with_data(data)
                    .map_err(|_| StatusWord::WRONG_LENGTH)?
                    .with_ne(cmd.ne())
                    .map_err(|_| StatusWord::WRONG_LENGTH)?;
                if chained {
                    state.chain = Some(joined);
                    Ok(None)
                } else {
                    Ok(Some(joined.with_class(cmd.class())))
                }
            }
            None if chained => {
                let class = cmd.class().with_chaining(false);
                state.chain = Some(cmd.with_class(class));
                Ok(None)
            }
            None => Ok(Some(cmd)),
        }
    }

    /// Whether the applet selected on channel `ch` takes GET RESPONSE itself.
    fn selected_answers_get_response(&self, ch: usize) -> bool {
        self.channels[ch]
            .selected
            .as_ref()
            .and_then(|a| self.instances.get(a))
            .is_some_and(|i| i.applet.own_get_response())
    }

    fn get_response(&mut self, ch: usize, cmd: &Command) -> Response {
        let state = &mut self.channels[ch];
        if state.pending.is_empty() {
            return Response::status(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let ne = cmd.ne().unwrap_or(256);
        let n = ne.min(state.pending.len());
        let data: Vec<u8> = state.pending.drain(..n).collect();
        let sw = if state.pending.is_empty() {
            state.pending_sw.take().unwrap_or(StatusWord::SUCCESS)
        } else {
            Self::more(state.pending.len())
        };
        Response::new(data, sw)
    }

    fn more(remaining: usize) -> StatusWord {
        StatusWord::from_bytes(0x61, if remaining >= 256 { 0 } else { remaining as u8 })
    }

    /// Returns at most Ne bytes; the rest waits for GET RESPONSE behind `61xx`.
    fn limit(&mut self, ch: usize, resp: Response, ne: Option<usize>) -> Response {
        let max = ne.unwrap_or(0);
        if resp.data.len() <= max || resp.data.is_empty() {
            return resp;
        }
        let mut data = resp.data;
        let rest = data.split_off(max);
        let state = &mut self.channels[ch];
        state.pending = rest;
        state.pending_sw = Some(resp.sw);
        Response::new(data, Self::more(state.pending.len()))
    }

    fn selectable(&self, e: &RegistryEntry) -> bool {
        match registry::card_life_cycle(&self.store) {
            card_state::CARD_LOCKED | card_state::TERMINATED => e.is_isd(),
            _ => e.selectable() || e.is_isd(),
        }
    }

    fn select(&mut self, ch: usize, cmd: &Command) -> Response {
        let aid = cmd.data();
        let next = cmd.p2() & 0x03 == 0x02;
        if cmd.p2() & 0x03 == 0x01 || cmd.p2() & 0x03 == 0x03 {
            return Response::status(StatusWord::INCORRECT_P1P2);
        }
        let current = self.channels[ch].selected.clone();
        let candidates: Vec<Aid> = if aid.is_empty() {
            self.default_applet().into_iter().collect()
        } else {
            self.registry
                .iter()
                .filter(|e| e.aid.matches(aid) && self.selectable(e))
                .map(|e| e.aid.clone())
                .collect()
        };
        let target = if next {
            match current
                .as_ref()
                .and_then(|c| candidates.iter().position(|i| i == c))
            {
                Some(pos) => candidates.get(pos + 1).cloned(),
                None => candidates.first().cloned(),
            }
        } else {
            candidates.first().cloned()
        };
        let Some(target) = target else {
            // Not an installed, selectable AID: the current applet stays selected; it may
            // implement ISO file selection itself.
            if let Some(c) = &current
                && self
                    .instances
                    .get(c)
                    .is_some_and(|i| i.applet.handles_file_select())
            {
                return self.dispatch(ch, cmd);
            }
            return Response::status(StatusWord::NOT_FOUND);
        };
        if !self.instances.contains_key(&target) {
            return Response::status(StatusWord::NOT_FOUND);
        }
        // The same applet, or (Java Card) another instance of its package, on another channel
        // needs MultiSelectable.
        if self.active_elsewhere(ch, &target)
            && !self
                .instances
                .get(&target)
                .is_some_and(|i| i.applet.multi_selectable())
        {
            return Response::status(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        // Java Card order: the old applet is deselected before the new one is selected.
        if let Some(old) = current {
            self.with_applet(&old, ch, |a, ctx| a.deselect(ctx));
        }
        self.channels[ch].selected = None;
        match self.with_applet(&target, ch, |a, ctx| a.select(ctx)) {
            Some(Ok(fci)) => {
                self.channels[ch].selected = Some(target);
                self.channels[ch].file = None;
                Response::success(fci)
            }
            Some(Err(sw)) => Response::status(sw),
            None => Response::status(StatusWord::NOT_FOUND),
        }
    }

    fn dispatch(&mut self, ch: usize, cmd: &Command) -> Response {
        let Some(aid) = self.channels[ch].selected.clone() else {
            return Response::status(SW_NO_APPLET);
        };
        if cmd.is_extended()
            && !self
                .instances
                .get(&aid)
                .is_some_and(|i| i.applet.extended_length())
        {
            return Response::status(StatusWord::WRONG_LENGTH);
        }
        match self.with_applet(&aid, ch, |a, ctx| a.process(cmd, ctx)) {
            Some(Ok(r)) => r,
            Some(Err(sw)) => Response::status(sw),
            None => Response::status(SW_NO_APPLET),
        }
    }

    fn manage_channel(&mut self, ch: usize, cmd: &Command) -> Response {
        match (cmd.p1(), cmd.p2()) {
            (0x00, 0x00) => {
                let Some(new) = (1..CHANNELS).find(|i| !self.channels[*i].open) else {
                    return Response::status(StatusWord::FUNCTION_NOT_SUPPORTED);
                };
                self.open_channel(ch, new);
                Response::success(vec![new as u8])
            }
            (0x00, n) if (n as usize) < CHANNELS => {
                if self.channels[n as usize].open || n == 0 {
                    return Response::status(StatusWord::INCORRECT_P1P2);
                }
                self.open_channel(ch, n as usize);
                Response::status(StatusWord::SUCCESS)
            }
            (0x80, n) => {
                let n = if n == 0 { ch } else { n as usize };
                if n == 0 || n >= CHANNELS || !self.channels[n].open {
                    return Response::status(StatusWord::INCORRECT_P1P2);
                }
                if let Some(aid) = self.channels[n].selected.clone() {
                    self.with_applet(&aid, n, |a, ctx| a.deselect(ctx));
                }
                self.channels[n] = ChannelState::default();
                Response::status(StatusWord::SUCCESS)
            }
            _ => Response::status(StatusWord::INCORRECT_P1P2),
        }
    }

    /// Whether `target`, or another instance of its Java Card package (one context), is
    /// selected on a channel other than `ch`.
    fn active_elsewhere(&self, ch: usize, target: &Aid) -> bool {
        let package = |aid: &Aid| {
            self.registry
                .iter()
                .find(|e| &e.aid == aid && e.class == registry::CAP_CLASS)
                .and_then(|e| e.elf.clone())
        };
        let mine = package(target);
        self.channels.iter().enumerate().any(|(i, c)| {
            i != ch
                && c.open
                && c.selected
                    .as_ref()
                    .is_some_and(|s| s == target || (mine.is_some() && package(s) == mine))
        })
    }

    /// Opening from channel 0 selects the default applet; from channel n, n's applet.
    fn open_channel(&mut self, from: usize, new: usize) {
        self.channels[new] = ChannelState {
            open: true,
            ..ChannelState::default()
        };
        let target = if from == 0 {
            self.default_applet()
        } else {
            self.channels[from].selected.clone()
        };
        if let Some(t) = target {
            if self.active_elsewhere(new, &t)
                && !self
                    .instances
                    .get(&t)
                    .is_some_and(|i| i.applet.multi_selectable())
            {
                return;
            }
            if let Some(Ok(_)) = self.with_applet(&t, new, |a, ctx| a.select(ctx)) {
                self.channels[new].selected = Some(t);
            }
        }
    }

    /// The class byte for a channel (helper for tests and hosts).
    pub fn class_for(channel: u8) -> Class {
        Class(0x00).with_channel(channel).unwrap_or(Class(0x00))
    }
}
