//! The card runtime: parses APDUs, routes SELECT by AID, keeps one selected applet per
//! logical channel (0–19), handles MANAGE CHANNEL, command chaining and GET RESPONSE, so that
//! applets only ever see whole commands.

use crate::applet::{Applet, AppletContext, RegistryEntry};
use crate::rng::CardRng;
use card_wire::apdu::{ApduError, Class, Command, Response};
use card_wire::sw::StatusWord;

/// Number of logical channels (0–19).
pub const CHANNELS: usize = 20;

/// `6999`: applet selection failed / no applet selected (Java Card's SW_APPLET_SELECT_FAILED).
pub const SW_NO_APPLET: StatusWord = StatusWord(0x6999);

/// An [`AppletContext`] from disjoint fields of the runtime, so applets can be borrowed
/// mutably next to it.
macro_rules! ctx {
    ($self:ident, $ch:expr) => {
        AppletContext {
            channel: $ch as u8,
            rng: &mut $self.rng,
            registry: &$self.registry,
        }
    };
}

struct Installed {
    entry: RegistryEntry,
    applet: Box<dyn Applet>,
}

#[derive(Default)]
struct ChannelState {
    open: bool,
    selected: Option<usize>,
    pending: Vec<u8>,
    pending_sw: Option<StatusWord>,
    chain: Option<Command>,
}

/// The applets of a card and the per-channel state that routes commands to them.
pub struct Runtime {
    applets: Vec<Installed>,
    registry: Vec<RegistryEntry>,
    channels: Vec<ChannelState>,
    default_applet: Option<usize>,
    rng: CardRng,
    extended_length: bool,
}

impl Runtime {
    /// An empty runtime with a random source; `extended_length` says whether the card accepts
    /// extended APDUs at all.
    pub fn new(rng: CardRng, extended_length: bool) -> Self {
        let mut rt = Runtime {
            applets: Vec::new(),
            registry: Vec::new(),
            channels: (0..CHANNELS).map(|_| ChannelState::default()).collect(),
            default_applet: None,
            rng,
            extended_length,
        };
        rt.channels[0].open = true;
        rt
    }

    /// Installs an applet; the first one marked `default` is selected on channel 0 at reset.
    pub fn install(&mut self, entry: RegistryEntry, applet: Box<dyn Applet>, default: bool) {
        self.registry.push(entry.clone());
        self.applets.push(Installed { entry, applet });
        if default && self.default_applet.is_none() {
            self.default_applet = Some(self.applets.len() - 1);
        }
    }

    /// The registry as GET STATUS sees it.
    pub fn registry(&self) -> &[RegistryEntry] {
        &self.registry
    }

    /// Power-on or reset: every channel but 0 closed, transient state cleared, the default
    /// applet selected on channel 0.
    pub fn reset(&mut self) {
        for a in &mut self.applets {
            a.applet.reset();
        }
        for (i, ch) in self.channels.iter_mut().enumerate() {
            *ch = ChannelState {
                open: i == 0,
                ..ChannelState::default()
            };
        }
        if let Some(d) = self.default_applet {
            let mut ctx = ctx!(self, 0);
            if self.applets[d].applet.select(&mut ctx).is_ok() {
                self.channels[0].selected = Some(d);
            }
        }
    }

    /// Processes one raw command APDU and returns the raw response.
    pub fn process(&mut self, raw: &[u8]) -> Vec<u8> {
        self.process_response(raw).to_bytes()
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
            if Self::is_applet_select(&cmd) && ch < CHANNELS {
                self.channels[ch].open = true;
            } else {
                return Response::status(StatusWord::LOGICAL_CHANNEL_NOT_SUPPORTED);
            }
        }
        if cmd.is_extended() && !self.extended_length {
            return Response::status(StatusWord::WRONG_LENGTH);
        }
        // GET RESPONSE serves what is pending on this channel; anything else drops it.
        if cmd.ins() == 0xC0 && !cmd.class().is_proprietary() && !cmd.class().has_secure_messaging()
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
        } else {
            self.dispatch(ch, &cmd)
        };
        self.limit(ch, resp, ne)
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

    fn select(&mut self, ch: usize, cmd: &Command) -> Response {
        let aid = cmd.data();
        let next = cmd.p2() & 0x03 == 0x02;
        if cmd.p2() & 0x03 == 0x01 || cmd.p2() & 0x03 == 0x03 {
            return Response::status(StatusWord::INCORRECT_P1P2);
        }
        let current = self.channels[ch].selected;
        let candidates: Vec<usize> = if aid.is_empty() {
            self.default_applet.into_iter().collect()
        } else {
            (0..self.applets.len())
                .filter(|i| self.applets[*i].entry.aid.matches(aid))
                .collect()
        };
        let target = if next {
            match current.and_then(|c| candidates.iter().position(|i| *i == c)) {
                Some(pos) => candidates.get(pos + 1).copied(),
                None => candidates.first().copied(),
            }
        } else {
            candidates.first().copied()
        };
        let Some(target) = target else {
            // Not an installed AID: the current applet stays selected; it may implement ISO
            // file selection itself.
            if let Some(c) = current
                && self.applets[c].applet.handles_file_select()
            {
                return self.dispatch(ch, cmd);
            }
            return Response::status(StatusWord::NOT_FOUND);
        };
        if self.applets[target].entry.life_cycle < 0x07 {
            return Response::status(StatusWord::NOT_FOUND);
        }
        // The same applet on another channel needs multi-selection (not modelled: refuse).
        let elsewhere = self
            .channels
            .iter()
            .enumerate()
            .any(|(i, c)| i != ch && c.open && c.selected == Some(target));
        if elsewhere && !self.applets[target].entry.is_isd {
            return Response::status(StatusWord::CONDITIONS_NOT_SATISFIED);
        }
        let mut ctx = ctx!(self, ch);
        // Java Card order: the old applet is deselected before the new one is selected.
        if let Some(old) = current {
            self.applets[old].applet.deselect(&mut ctx);
        }
        self.channels[ch].selected = None;
        match self.applets[target].applet.select(&mut ctx) {
            Ok(fci) => {
                self.channels[ch].selected = Some(target);
                Response::success(fci)
            }
            Err(sw) => Response::status(sw),
        }
    }

    fn dispatch(&mut self, ch: usize, cmd: &Command) -> Response {
        let Some(idx) = self.channels[ch].selected else {
            return Response::status(SW_NO_APPLET);
        };
        if cmd.is_extended() && !self.applets[idx].applet.extended_length() {
            return Response::status(StatusWord::WRONG_LENGTH);
        }
        let mut ctx = ctx!(self, ch);
        match self.applets[idx].applet.process(cmd, &mut ctx) {
            Ok(r) => r,
            Err(sw) => Response::status(sw),
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
                if let Some(idx) = self.channels[n].selected {
                    let mut ctx = ctx!(self, n);
                    self.applets[idx].applet.deselect(&mut ctx);
                }
                self.channels[n] = ChannelState::default();
                Response::status(StatusWord::SUCCESS)
            }
            _ => Response::status(StatusWord::INCORRECT_P1P2),
        }
    }

    /// Opening from channel 0 selects the default applet; from channel n, n's applet.
    fn open_channel(&mut self, from: usize, new: usize) {
        self.channels[new] = ChannelState {
            open: true,
            ..ChannelState::default()
        };
        let target = if from == 0 {
            self.default_applet
        } else {
            self.channels[from].selected
        };
        if let Some(t) = target {
            let shared = self.applets[t].entry.is_isd;
            let busy = self
                .channels
                .iter()
                .enumerate()
                .any(|(i, c)| i != new && c.selected == Some(t));
            if busy && !shared {
                return;
            }
            let mut ctx = ctx!(self, new);
            if self.applets[t].applet.select(&mut ctx).is_ok() {
                self.channels[new].selected = Some(t);
            }
        }
    }

    /// The class byte for a channel (helper for tests and hosts).
    pub fn class_for(channel: u8) -> Class {
        Class(0x00).with_channel(channel).unwrap_or(Class(0x00))
    }
}
