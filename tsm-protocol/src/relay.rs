//! The relay protocol between the TSM and the phone app ("common app") that relays card
//! commands. Shaped after GlobalPlatform SERAM (orders from the server in HTTP answers,
//! reports from the agent in the next request), with what SERAM lacks: sequence numbers and
//! acknowledgements so every order is applied to the card exactly once, a single-use device
//! ticket, and resumption after a lost connection.
//!
//! The relay is untrusted. It holds no key and sees nothing in clear that matters: the card
//! commands are SCP03-wrapped end to end between the TSM and the card; the only secrets the
//! user types (access code, password) authorise the download and are checked by the TSM.
//!
//! Exactly once: the agent applies `Order { seq }` only if `seq` is one more than the last
//! order it applied; a repeated order (the server did not get the report) is answered with
//! the stored report, without touching the card. The server answers a repeated report with
//! the order it already sent.

use crate::ids::SessionId;
use serde::{Deserialize, Serialize};

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
    /// The password the user registered with the provider.
    pub password: String,
}

impl std::fmt::Debug for UserCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserCredentials(<redacted>)")
    }
}

impl Drop for UserCredentials {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.access_code);
        zeroize::Zeroize::zeroize(&mut self.password);
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
    /// The session is over.
    Stop {
        /// The session.
        session: SessionId,
        /// How it ended.
        outcome: StopOutcome,
        /// For the user.
        message: String,
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
