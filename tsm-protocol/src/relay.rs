//! The relay protocol between the TSM and the phone app ("common app") that relays card
//! commands. Shaped after GlobalPlatform SERAM (orders from the server in HTTP answers,
//! reports from the agent in the next request), with what SERAM lacks: sequence numbers and
//! acknowledgements so every order is applied to the card exactly once, a single-use device
//! ticket, and resumption after a lost connection.
//!
//! The relay is untrusted. It holds no key and sees nothing in clear that matters: the card
//! commands are SCP03-wrapped end to end between the TSM and the card; the only secrets the
//! user types (access code, password) authorise the download and are checked by the TSM —
//! the password as a key the app derives with the Argon2id parameters the TSM names in
//! [`ServerMsg::AskCredentials`] ([`crate::relief`]), so it never leaves the phone.
//!
//! Exactly once: the agent applies `Order { seq }` only if `seq` is above the last order it
//! applied (after a resumed session the server may skip numbers it sent and never got an
//! answer for); a repeated order (the server did not get the report) is answered with the
//! stored report, without touching the card; an older one is refused. The server answers a
//! repeated report with the order it already sent.

use crate::ids::SessionId;
use serde::{Deserialize, Serialize};

/// The relay protocol's version: the shape of [`AgentMsg`] and [`ServerMsg`] (their
/// canonical encoding is not self-describing, so a field added anywhere changes it). Raised
/// with every change of either; a server may speak several.
pub const VERSION: u16 = 1;

/// The HTTP header the relay names its protocol version in, on every request, and the server
/// the version it answered in: a phone app and the servers are upgraded apart, and a server
/// that does not speak the app's version says so (see [`unsupported_version`]) instead of
/// failing to decode its messages.
pub const VERSION_HEADER: &str = "kagi-relay-version";

/// The versions a server built from this crate speaks.
pub const SPOKEN: &[u16] = &[VERSION];

/// Whether a server speaks the version a relay named in [`VERSION_HEADER`] (`None`: the
/// header was missing or not a number), and if not, what it answers: which versions it
/// speaks and what to do.
pub fn unsupported_version(named: Option<&str>) -> Option<String> {
    let named = named.map(|v| v.trim().parse::<u16>());
    if let Some(Ok(v)) = named
        && SPOKEN.contains(&v)
    {
        return None;
    }
    // Only a refusal spells out what is spoken (not every request of the hot path).
    let spoken = SPOKEN
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Some(match named {
        Some(Ok(v)) => format!(
            "the app speaks relay protocol version {v}; this server speaks {spoken}: update the {}",
            if v < VERSION {
                "app"
            } else {
                "server (or use an older app)"
            }
        ),
        Some(Err(_)) | None => format!(
            "the app did not name its relay protocol version (header {VERSION_HEADER}); this server speaks {spoken}: update the app"
        ),
    })
}

/// What the agent sends (HTTP request bodies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMsg {
    /// Opens (or resumes) a session with the device ticket the provider gave the app.
    Hello {
        /// The single-use device ticket.
        ticket: String,
        /// What the app is (logged).
        agent: String,
        /// A session to resume after a lost connection (then `ticket` is that session's).
        resume: Option<SessionId>,
        /// The user's entries, when the app asked for them before connecting.
        credentials: Option<UserCredentials>,
        /// Coming back from the server a [`ServerMsg::Continue`] sent the relay to: the
        /// signed receipt that server ended its session with (the MNO-TSM's SIM
        /// preparation), which the provider's TSM checks instead of asking that server.
        prepared: Option<crate::Sealed>,
    },
    /// The user's entries, when the server asked for them.
    Credentials {
        /// The session.
        session: SessionId,
        /// What the user typed.
        credentials: UserCredentials,
    },
    /// The result of an order.
    Report {
        /// The session.
        session: SessionId,
        /// The order reported on.
        seq: u32,
        /// What the agent could do.
        status: AgentStatus,
        /// One result per order command that produced responses.
        results: Vec<BatchResult>,
    },
}

/// The access code and password the user typed into the app.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCredentials {
    /// The one-time access code (from the provider's letter or message).
    pub access_code: String,
    /// The password the user registered with the provider, or the key the app derived
    /// from it.
    pub password: PasswordEntry,
}

/// The password as the app sends it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PasswordEntry {
    /// As typed: the TSM does the Argon2id work (grants made before server relief, or an app
    /// that does not derive).
    Typed(String),
    /// Argon2id of the password with the derivation the TSM sent in
    /// [`ServerMsg::AskCredentials`] ([`crate::relief`]): the password stays on the phone.
    Derived(Vec<u8>),
}

impl From<&str> for PasswordEntry {
    fn from(s: &str) -> PasswordEntry {
        PasswordEntry::Typed(s.to_owned())
    }
}

impl From<String> for PasswordEntry {
    fn from(s: String) -> PasswordEntry {
        PasswordEntry::Typed(s)
    }
}

impl From<crate::relief::DerivedKey> for PasswordEntry {
    fn from(k: crate::relief::DerivedKey) -> PasswordEntry {
        PasswordEntry::Derived(k.as_bytes().to_vec())
    }
}

impl PasswordEntry {
    /// The typed password, or `None` once derived.
    pub fn typed(&self) -> Option<&str> {
        match self {
            PasswordEntry::Typed(s) => Some(s),
            PasswordEntry::Derived(_) => None,
        }
    }

    /// The entry an app sends for a TSM that asked with `derive`: the typed password derived
    /// within `limits` (the password then stays here), or as it is when the TSM asked for no
    /// derivation or it is derived already.
    pub fn for_derivation(
        self,
        derive: Option<&crate::relief::Derivation>,
        limits: &crate::relief::DerivationLimits,
    ) -> Result<PasswordEntry, crate::password::PasswordError> {
        match (derive, &self) {
            (Some(d), PasswordEntry::Typed(pw)) => d.derive(pw, limits).map(PasswordEntry::from),
            _ => Ok(self),
        }
    }
}

impl Drop for PasswordEntry {
    fn drop(&mut self) {
        match self {
            PasswordEntry::Typed(s) => zeroize::Zeroize::zeroize(s),
            PasswordEntry::Derived(k) => zeroize::Zeroize::zeroize(k),
        }
    }
}

impl std::fmt::Debug for UserCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserCredentials(<redacted>)")
    }
}

impl Drop for UserCredentials {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.access_code);
    }
}

/// What the server answers (HTTP response bodies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// The session is open; the user must give the access code and password.
    AskCredentials {
        /// The session.
        session: SessionId,
        /// Entries left before the operation locks.
        attempts_left: u8,
        /// For a server-relief grant: what the app derives the password with
        /// ([`PasswordEntry::Derived`]); `None`: send it typed.
        derive: Option<crate::relief::Derivation>,
    },
    /// Card commands to run.
    Order {
        /// The session.
        session: SessionId,
        /// Sequence number: one more than the last order.
        seq: u32,
        /// Wait this long before reporting (server-paced polling), milliseconds.
        delay_ms: u32,
        /// What to do, in order.
        cmds: Vec<AgentCmd>,
    },
    /// Seed 004 ⑮: the MNO-TSM prepares the SIM first. The relay opens a session at `url`
    /// (the MNO-TSM's relay endpoint) with `ticket`, relays it to its end as any other, then
    /// comes back here with `Hello { resume: Some(session) }` and this session's ticket.
    Continue {
        /// This session (resumed afterwards).
        session: SessionId,
        /// The MNO-TSM's base URL (`http(s)://host:port`).
        url: String,
        /// The single-use ticket for the MNO-TSM.
        ticket: String,
    },
    /// The session is over.
    Stop {
        /// The session.
        session: SessionId,
        /// How it ended.
        outcome: StopOutcome,
        /// For the user.
        message: String,
        /// The operation's signed receipt, when another server acts on it: a completed SIM
        /// preparation of an MNO-TSM, which the relay hands back with its `Hello`.
        receipt: Option<crate::Sealed>,
    },
}

/// One thing the agent does to the card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentCmd {
    /// Opens a logical channel to `aid` (MANAGE CHANNEL, then SELECT on it, as OMAPI's
    /// `openLogicalChannel`); later `Apdus` go to that channel. The SELECT answer is
    /// reported as the result's only response.
    OpenChannel {
        /// The application.
        aid: Vec<u8>,
    },
    /// Sends C-APDUs on the open channel (the agent sets the channel bits of each class
    /// byte), answering `61xx` with GET RESPONSE itself, and stops at the first status that
    /// is neither success nor a warning when `stop_on_error`.
    Apdus {
        /// Identifies the batch in the report.
        batch_id: u32,
        /// The commands, opaque to the agent.
        capdus: Vec<Vec<u8>>,
        /// Stop at the first error status.
        stop_on_error: bool,
    },
    /// Closes the logical channel.
    CloseChannel,
}

/// What the agent could do with an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentStatus {
    /// Executed (maybe stopped at an error status, see the results).
    Processed,
    /// No secure element reachable.
    UnavailableSe,
    /// The application cannot be reached now (no free channel, busy).
    TemporarilyUnavailableApplication,
    /// The order could not be understood.
    ScriptFormatError,
    /// The app may not talk to that application (access rules).
    UngrantedAccess,
    /// Something else went wrong.
    UnknownFailure,
}

/// The responses to one command of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    /// The batch (`OpenChannel` results use 0).
    pub batch_id: u32,
    /// Commands sent to the card.
    pub executed: u16,
    /// Their responses, status words included (after GET RESPONSE).
    pub rapdus: Vec<Vec<u8>>,
    /// A transport failure that stopped the batch.
    pub transport_error: Option<String>,
    /// `OpenChannel`: the logical channel opened. The TSM builds its commands for it (on
    /// channels 4–19 the class byte, and so the MAC, differs).
    pub channel: Option<u8>,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopOutcome {
    /// The operation completed.
    Completed,
    /// The operation failed for good.
    Failed,
    /// Wrong access code or password too often, or the ticket is not valid.
    Refused,
    /// The session stops; the operation continues with a new session later.
    Interrupted,
}

/// The card half of the relay: runs orders against a card and keeps them exactly once. It
/// holds no key: the commands are opaque, the answers go back as they came.
#[derive(Debug, Default)]
pub struct Agent {
    session: Option<SessionId>,
    channel: Option<u8>,
    applied: u32,
    last_report: Option<AgentMsg>,
    needs_reset: bool,
}

fn is_ok(sw: [u8; 2]) -> bool {
    matches!(sw[0], 0x90 | 0x62 | 0x63) && (sw[0] != 0x90 || sw[1] == 0x00)
}

impl Agent {
    /// A new agent (no session yet).
    pub fn new() -> Agent {
        Agent::default()
    }

    /// The last order applied.
    pub fn applied(&self) -> u32 {
        self.applied
    }

    /// Closes the logical channel it opened (at the end of a session).
    pub fn close(&mut self, card: &mut dyn card_wire::Transport) {
        if let Some(ch) = self.channel.take() {
            let _ = self.send(card, &[0x00, 0x70, 0x80, ch]);
        }
    }

    /// Applies an order exactly once: a new order (`seq` above the last applied) runs on the
    /// card; the last order again is answered from the stored report without touching the
    /// card; an older one is refused as out of sequence.
    pub fn on_order(
        &mut self,
        card: &mut dyn card_wire::Transport,
        session: SessionId,
        seq: u32,
        cmds: &[AgentCmd],
    ) -> AgentMsg {
        if self.session != Some(session) {
            // A new session (or a resumed one after this agent restarted) starts from zero.
            self.session = Some(session);
            self.applied = seq.saturating_sub(1);
            self.last_report = None;
        }
        if seq == self.applied
            && let Some(r) = &self.last_report
        {
            return r.clone();
        }
        if seq <= self.applied {
            return AgentMsg::Report {
                session,
                seq,
                status: AgentStatus::ScriptFormatError,
                results: Vec::new(),
            };
        }
        let (status, results) = self.execute(card, cmds);
        let report = AgentMsg::Report {
            session,
            seq,
            status,
            results,
        };
        self.applied = seq;
        self.last_report = Some(report.clone());
        report
    }

    /// One command, with `61xx` answered by GET RESPONSE on the same channel.
    fn send(
        &mut self,
        card: &mut dyn card_wire::Transport,
        raw: &[u8],
    ) -> Result<Vec<u8>, card_wire::TransportError> {
        let mut resp = card.transmit(raw)?;
        let mut data = Vec::new();
        let mut rounds = 0;
        loop {
            let n = resp.len();
            if n < 2 {
                return Err(card_wire::TransportError::ShortResponse(n));
            }
            let (body, sw) = resp.split_at(n - 2);
            data.extend_from_slice(body);
            if sw[0] != 0x61 || rounds > 256 {
                data.extend_from_slice(sw);
                return Ok(data);
            }
            rounds += 1;
            let cla = card_wire::Class(0x00)
                .with_channel(self.channel.unwrap_or(0))
                .map(|c| c.byte())
                .unwrap_or(0);
            resp = card.transmit(&[cla, 0xC0, 0x00, 0x00, sw[1]])?;
        }
    }

    fn execute(
        &mut self,
        card: &mut dyn card_wire::Transport,
        cmds: &[AgentCmd],
    ) -> (AgentStatus, Vec<BatchResult>) {
        if self.needs_reset {
            if card.reset(card_wire::ResetKind::Cold).is_err() {
                return (AgentStatus::UnavailableSe, Vec::new());
            }
            self.needs_reset = false;
            self.channel = None;
        }
        let mut results = Vec::new();
        for cmd in cmds {
            match cmd {
                AgentCmd::OpenChannel { aid } => {
                    let mut r = BatchResult {
                        batch_id: 0,
                        executed: 0,
                        rapdus: Vec::new(),
                        transport_error: None,
                        channel: None,
                    };
                    if let Some(old) = self.channel.take() {
                        let _ = self.send(card, &[0x00, 0x70, 0x80, old]);
                    }
                    let opened = self.send(card, &[0x00, 0x70, 0x00, 0x00, 0x01]);
                    match opened {
                        Ok(v) if v.len() == 3 && v[1..] == [0x90, 0x00] => {
                            self.channel = Some(v[0]);
                            r.channel = Some(v[0]);
                        }
                        Ok(_) => return (AgentStatus::TemporarilyUnavailableApplication, results),
                        Err(e) => {
                            self.needs_reset = true;
                            r.transport_error = Some(e.to_string());
                            results.push(r);
                            return (AgentStatus::UnavailableSe, results);
                        }
                    }
                    let cla = card_wire::Class(0x00)
                        .with_channel(self.channel.unwrap_or(0))
                        .map(|c| c.byte())
                        .unwrap_or(0);
                    let mut select = vec![cla, 0xA4, 0x04, 0x00, aid.len() as u8];
                    select.extend_from_slice(aid);
                    select.push(0x00);
                    match self.send(card, &select) {
                        Ok(v) => {
                            r.executed = 1;
                            r.rapdus.push(v);
                        }
                        Err(e) => {
                            self.needs_reset = true;
                            r.transport_error = Some(e.to_string());
                        }
                    }
                    results.push(r);
                }
                AgentCmd::Apdus {
                    batch_id,
                    capdus,
                    stop_on_error,
                } => {
                    let mut r = BatchResult {
                        batch_id: *batch_id,
                        executed: 0,
                        rapdus: Vec::new(),
                        transport_error: None,
                        channel: None,
                    };
                    let Some(ch) = self.channel else {
                        return (AgentStatus::ScriptFormatError, results);
                    };
                    for raw in capdus {
                        // The class byte gets this channel's bits (SCP03 MACs leave them out).
                        let Ok(c) = card_wire::Command::parse(raw) else {
                            return (AgentStatus::ScriptFormatError, results);
                        };
                        let Ok(class) = c.class().with_channel(ch) else {
                            return (AgentStatus::ScriptFormatError, results);
                        };
                        let mut bytes = raw.clone();
                        bytes[0] = class.byte();
                        match self.send(card, &bytes) {
                            Ok(v) => {
                                r.executed += 1;
                                let sw = [v[v.len() - 2], v[v.len() - 1]];
                                r.rapdus.push(v);
                                if *stop_on_error && !is_ok(sw) {
                                    break;
                                }
                            }
                            Err(e) => {
                                self.needs_reset = true;
                                r.transport_error = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    let failed = r.transport_error.is_some();
                    results.push(r);
                    if failed {
                        break;
                    }
                }
                AgentCmd::CloseChannel => self.close(card),
            }
        }
        (AgentStatus::Processed, results)
    }
}
