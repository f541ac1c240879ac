//! Card scripts: what the TSM computes for the relay to carry, and how it judges the answers.
//! I/O-free — the engine turns a [`Plan`] (what must be true on the card) and the relay's
//! reports into the next order, until every goal is met or the operation has to stop.
//!
//! The rules it keeps (research note `tsm-anchors.md` §5):
//! - Every session is new: INITIALIZE UPDATE with a fresh host challenge, EXTERNAL
//!   AUTHENTICATE, level `33` (C-MAC, C-DEC, R-MAC, R-ENC). A secure channel is never resumed;
//!   after any doubt the engine re-opens one.
//! - Mutual authentication is never retried: a wrong card cryptogram, a refused INITIALIZE
//!   UPDATE or EXTERNAL AUTHENTICATE fails the operation (real cards lock their keys).
//! - The card's identity (its image number, GET DATA `45`) is read under R-MAC and must be
//!   the one the operation is for; nothing the relay says about the card is believed.
//! - Each session starts with a probe (registry under R-MAC) and only the goals not yet met
//!   are acted on; actions whose effect cannot be probed are idempotent on the card
//!   (personalisation scripts, wallet updates with ids).
//! - An error status word from the relay is a hint, not a fact: success answers carry an
//!   R-MAC, errors do not. On an error or a missing answer the engine re-opens and probes.
//! - A credential's postcondition is a key proof: the new key signs the operation and a nonce
//!   of the TSM's (the answer is R-ENC'd and R-MAC'd), checked against the certificate.

mod act;
mod probe;

use crate::error::{ErrorReport, Layer};
use crate::ids::OpId;
use crate::receipt::StepRecord;
use crate::relay::{AgentCmd, AgentStatus, BatchResult};
use card_wire::apdu::Command;
use card_wire::gp::{self, RegistryEntry, StatusScope};
use card_wire::scp03::{
    CardKeys, HostHandshake, HostOptions, Pending, SecureSession, SecurityLevel,
};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Sessions an operation may open before it stops as interrupted (each new one re-probes).
pub const MAX_SESSIONS: u32 = 4;

/// Most commands per order (a policy: fewer round trips against smaller relay messages).
pub const MAX_BATCH: usize = 64;

/// What a card must hold when the operation is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Goal {
    /// The load file is on the card (loaded when absent).
    LoadFile {
        /// Package AID.
        package: Vec<u8>,
        /// Modules (AID, simulator class).
        modules: Vec<(Vec<u8>, String)>,
    },
    /// The instance exists (installed and made selectable when absent).
    Instance(gp::InstallSpec),
    /// A personalisation script applied to the instance (idempotent on the card), and its
    /// answer checked.
    Personalize {
        /// The instance.
        instance: Vec<u8>,
        /// The script (TLV items), opaque to the engine: sealed keys and PINs stay sealed.
        script: Vec<u8>,
        /// What the answer must show.
        check: Check,
    },
    /// The domain's keys are the new key set of the plan ([`Plan::new_keys`]): PUT KEY
    /// replaces the key version `replace` (the domain's initial keys), the card's key check
    /// values verified. Met when the session already runs on the new keys.
    ReplaceKeys {
        /// The key version replaced.
        replace: u8,
    },
    /// The application is absent (deleted when present).
    Absent {
        /// Its AID.
        aid: Vec<u8>,
        /// Delete related objects too (a load file with its instances).
        related: bool,
    },
    /// The security domain is absent, with everything associated with it (seen through the
    /// issuer domain, whose GET STATUS names each entry's domain under tag `CC`): its
    /// applications deleted first, then its load files with their related instances, then
    /// the domain itself — a domain with associated content cannot be deleted (GP Card
    /// Specification 11.2). Met when the card lists no such domain.
    DomainAbsent {
        /// The domain's AID.
        aid: Vec<u8>,
    },
}

/// The postcondition of a personalisation script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A success answer (under R-MAC) is enough.
    Success,
    /// The key in `key_fid` signs a key proof (the engine appends the item) that verifies
    /// with `certificate`.
    KeyProof {
        /// The key file.
        key_fid: u16,
        /// The certificate (DER) the key must match.
        certificate: Vec<u8>,
    },
    /// The applet's answer to an on-card key generation with a proof
    /// (`card_wire::jpki::ITEM_GENERATE_PROVEN`), kept as [`Evidence::generated`] for the
    /// JPKI issuer to check.
    Generated,
    /// A wallet summary whose outcome list covers `updates` updates.
    Wallet {
        /// Updates in the script.
        updates: usize,
    },
}

/// A key set the engine may open a domain with: each card's keys, and their version.
#[derive(Clone)]
pub struct KeySet {
    /// Each card's keys (diversified from master keys in an HSM or a file).
    pub source: Arc<dyn CardKeys>,
    /// The key version.
    pub kvn: u8,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeySet(KVN {:02X})", self.kvn)
    }
}

/// Everything an operation wants on one card, through one security domain.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The operation (bound into the key proof).
    pub op: OpId,
    /// The security domain the TSM holds the keys of.
    pub sd_aid: Vec<u8>,
    /// Its key version.
    pub kvn: u8,
    /// The card image number (hex) the card must report.
    pub expected_cin: String,
    /// What must be true at the end.
    pub goals: Vec<Goal>,
    /// The key set [`Goal::ReplaceKeys`] puts on the domain.
    pub new_keys: Option<KeySet>,
    /// Keys to open the domain with when it does not know the plan's key version (`6A88` to
    /// INITIALIZE UPDATE — not an authentication failure): a domain whose keys were already
    /// replaced before an interruption.
    pub fallback: Option<KeySet>,
}

/// What the engine found and did, for the receipt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The card image number read under R-MAC.
    pub cin: String,
    /// The key proof signature and the nonce it signed.
    pub key_proof: Option<(Vec<u8>, [u8; 32])>,
    /// The wallet after the update.
    pub wallet: Option<card_wire::wallet::Summary>,
    /// The applet's answer to an on-card key generation ([`Check::Generated`]): point ‖
    /// proof of possession ‖ card tag (`card_wire::keygen`).
    pub generated: Option<Vec<u8>>,
    /// The card commands of the action rounds, as digests.
    pub steps: Vec<StepRecord>,
    /// Secure sessions opened.
    pub sessions: u32,
}

/// What the engine wants next.
#[derive(Debug)]
pub enum Next {
    /// Send this order.
    Order(Vec<AgentCmd>),
    /// Every goal is met.
    Done(Box<Evidence>),
    /// The operation failed for good (never retried automatically).
    Failed(ErrorReport),
    /// The relay could not go on; a later session continues (from a new probe).
    Interrupted(ErrorReport),
}

/// The answer expected to one sent command.
#[derive(Debug, Clone)]
enum Expect {
    /// EXTERNAL AUTHENTICATE (no R-MAC on its answer).
    Authenticate,
    /// GET DATA of the card image number.
    Cin,
    /// A GET STATUS page.
    Status { scope: StatusScope },
    /// A success answer.
    Success,
    /// DELETE: success, or "not found" (nothing to delete is also the goal met).
    Deleted,
    /// The last STORE DATA of a script with a key proof.
    Proof { certificate: Vec<u8> },
    /// The last STORE DATA of a wallet script.
    Wallet { updates: usize },
    /// The last STORE DATA of an on-card key generation.
    Generated,
    /// PUT KEY: the card's key version and key check values.
    KeyCheck { expected: Vec<u8> },
}

#[derive(Debug, Clone)]
struct Sent {
    name: String,
    plain_sha256: [u8; 32],
    expect: Expect,
    /// What checks the answer (none for EXTERNAL AUTHENTICATE).
    pending: Option<Pending>,
}

enum State {
    Idle,
    Authenticating(HostHandshake),
    Probing {
        session: SecureSession,
        sent: Vec<Sent>,
        load_files: Vec<RegistryEntry>,
        apps: Vec<RegistryEntry>,
    },
    Acting {
        session: SecureSession,
        sent: Vec<Sent>,
        queue: Vec<(String, Command, Expect)>,
    },
    Finished,
}

/// The engine of one operation on one card.
pub struct Engine {
    plan: Plan,
    nonce: [u8; 32],
    state: State,
    evidence: Evidence,
    /// The logical channel of the current session (the relay says which it opened).
    channel: u8,
    /// Sessions opened in this relay session.
    budget: u32,
    /// The keys the current session is opened with (the plan's, or the fallback).
    current: KeySet,
    /// The card's key diversification data, from the current session's INITIALIZE UPDATE.
    kdd: Option<[u8; 10]>,
    /// The probe running after deletions, to confirm on the card (under R-MAC) that what was
    /// deleted is gone: a `6A88` answer to DELETE carries no R-MAC and proves nothing.
    confirming: bool,
}

fn report(layer: Layer, code: &str, retryable: bool, detail: impl Into<String>) -> ErrorReport {
    ErrorReport::new(layer, code, retryable, detail)
}

fn sha(cmd: &Command) -> [u8; 32] {
    Sha256::digest(cmd.to_bytes()).into()
}

fn options(kvn: u8) -> HostOptions {
    HostOptions {
        kvn,
        level: SecurityLevel::FULL,
        ..HostOptions::default()
    }
}

/// The responses of the batch `batch_id` in a report.
fn batch(results: &[BatchResult], batch_id: u32) -> Option<&BatchResult> {
    results.iter().find(|r| r.batch_id == batch_id)
}

const BATCH_OPEN: u32 = 0;
const BATCH_IU: u32 = 1;
const BATCH_PROBE: u32 = 2;
const BATCH_ACT: u32 = 3;

impl Engine {
    /// An engine for `plan`, with the security domain's keys for the card from `keys` and
    /// the TSM's key-proof nonce.
    pub fn new(plan: Plan, keys: Arc<dyn CardKeys>, nonce: [u8; 32]) -> Engine {
        let current = KeySet {
            source: keys.clone(),
            kvn: plan.kvn,
        };
        Engine {
            plan,
            current,
            kdd: None,
            confirming: false,
            nonce,
            state: State::Idle,
            evidence: Evidence::default(),
            channel: 0,
            budget: 0,
        }
    }

    /// A new relay session for the same operation (after an interruption): the session
    /// budget starts again; the next step is [`Engine::open`].
    pub fn resume(&mut self) {
        self.budget = 0;
        self.confirming = false;
        self.state = State::Idle;
    }

    /// `cmd` on the session's channel (the class byte is part of the MAC).
    pub(super) fn here(&self, cmd: Command) -> Result<Command, String> {
        let class = cmd
            .class()
            .with_channel(self.channel)
            .map_err(|e| e.to_string())?;
        Ok(cmd.with_class(class))
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Opens a new secure session: the security domain selected on a logical channel, then
    /// INITIALIZE UPDATE with a fresh challenge. Every session starts here, including after
    /// an interruption.
    pub fn open(&mut self) -> Next {
        if self.budget >= MAX_SESSIONS {
            self.state = State::Idle;
            return Next::Interrupted(report(
                Layer::Relay,
                "relay.too-many-sessions",
                true,
                format!(
                    "{MAX_SESSIONS} secure sessions did not complete the operation; it continues with a new relay session"
                ),
            ));
        }
        let hs = match HostHandshake::with_source(
            self.current.source.clone(),
            options(self.current.kvn),
        ) {
            Ok(h) => h,
            Err(e) => return Next::Failed(report(Layer::Tsm, "tsm.keys", true, e.to_string())),
        };
        let iu = match hs.initialize_update() {
            Ok(c) => c,
            Err(e) => return Next::Failed(report(Layer::Tsm, "tsm.script", false, e.to_string())),
        };
        self.evidence.sessions += 1;
        self.budget += 1;
        self.confirming = false;
        self.state = State::Authenticating(hs);
        Next::Order(vec![
            AgentCmd::OpenChannel {
                aid: self.plan.sd_aid.clone(),
            },
            AgentCmd::Apdus {
                batch_id: BATCH_IU,
                capdus: vec![iu.to_bytes()],
                stop_on_error: true,
            },
        ])
    }

    /// Judges a report and says what comes next.
    pub fn on_report(&mut self, status: AgentStatus, results: &[BatchResult]) -> Next {
        if status != AgentStatus::Processed {
            self.state = State::Idle;
            return Next::Interrupted(report(
                Layer::Relay,
                "relay.unavailable",
                true,
                format!("the relay could not reach the card ({status:?})"),
            ));
        }
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle | State::Finished => Next::Failed(report(
                Layer::Protocol,
                "protocol.unexpected-report",
                false,
                "a report without an order outstanding",
            )),
            State::Authenticating(hs) => self.authenticated(hs, results),
            State::Probing {
                session,
                sent,
                load_files,
                apps,
            } => self.probed(session, sent, load_files, apps, results),
            State::Acting {
                session,
                sent,
                queue,
            } => self.acted(session, sent, queue, results),
        }
    }
}
