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

use crate::error::{ErrorReport, Layer};
use crate::ids::OpId;
use crate::receipt::{CertKey, StepRecord, key_proof_message};
use crate::relay::{AgentCmd, AgentStatus, BatchResult};
use card_wire::apdu::{Command, Response};
use card_wire::gp::{self, RegistryEntry, StatusScope};
use card_wire::scp03::{
    CardKeys, HostHandshake, HostOptions, Pending, Scp03Error, SecureSession, SecurityLevel,
};
use card_wire::sw::StatusWord;
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
        self.state = State::Idle;
    }

    /// `cmd` on the session's channel (the class byte is part of the MAC).
    fn here(&self, cmd: Command) -> Result<Command, String> {
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

    fn authenticated(&mut self, hs: HostHandshake, results: &[BatchResult]) -> Next {
        let opened = batch(results, BATCH_OPEN);
        let select = opened.and_then(|b| b.rapdus.first());
        let iu = batch(results, BATCH_IU).and_then(|b| b.rapdus.first());
        self.channel = opened.and_then(|b| b.channel).unwrap_or(0);
        let (Some(select), Some(iu)) = (select, iu) else {
            return self.open();
        };
        let select = match Response::parse(select) {
            Ok(r) => r,
            Err(_) => return self.open(),
        };
        if !select.sw.is_success() {
            return Next::Failed(ErrorReport {
                card_sw: Some(select.sw.0),
                ..report(
                    Layer::Card,
                    "card.no-security-domain",
                    false,
                    format!(
                        "the card has no security domain {} (SELECT answered {})",
                        hex::encode_upper(&self.plan.sd_aid),
                        select.sw
                    ),
                )
            });
        }
        let iu = match Response::parse(iu) {
            Ok(r) => r,
            Err(_) => return self.open(),
        };
        let (ea, session, info) = match hs
            .on_channel(self.channel)
            .complete(&iu, Some(&self.plan.sd_aid))
        {
            Ok(x) => x,
            Err(Scp03Error::InitializeUpdateRefused(StatusWord::REFERENCED_DATA_NOT_FOUND))
                if self
                    .plan
                    .fallback
                    .as_ref()
                    .is_some_and(|f| f.kvn != self.current.kvn) =>
            {
                // The domain has no key set of that version: its keys were replaced already.
                // Nothing was authenticated, so opening with the other key set is no retry.
                if let Some(f) = self.plan.fallback.clone() {
                    self.current = f;
                }
                return self.open();
            }
            Err(e) => {
                let sw = match &e {
                    Scp03Error::InitializeUpdateRefused(sw) => Some(sw.0),
                    _ => None,
                };
                return Next::Failed(ErrorReport {
                    card_sw: sw,
                    ..report(
                        Layer::Card,
                        "card.authentication",
                        false,
                        format!(
                            "mutual authentication failed, not retried (a card locks its keys after a few failures): {e}"
                        ),
                    )
                });
            }
        };
        self.kdd = Some(info.init_update.kdd);
        self.probe(session, Some(ea), Vec::new(), Vec::new(), None)
    }

    /// Sends the probe round: EXTERNAL AUTHENTICATE (first round of a session), the card
    /// image number, and the registry pages still to read (`next_pages`: the scopes that
    /// answered `6310`).
    fn probe(
        &mut self,
        mut session: SecureSession,
        ea: Option<Command>,
        load_files: Vec<RegistryEntry>,
        apps: Vec<RegistryEntry>,
        next_pages: Option<Vec<StatusScope>>,
    ) -> Next {
        let tsm = |e: String| Next::Failed(report(Layer::Tsm, "tsm.script", false, e));
        let mut cmds = Vec::new();
        let mut sent = Vec::new();
        if let Some(ea) = ea {
            sent.push(Sent {
                name: "external-authenticate".into(),
                plain_sha256: sha(&ea),
                expect: Expect::Authenticate,
                pending: None,
            });
            cmds.push(ea);
        }
        let first = next_pages.is_none();
        let mut plain: Vec<(&str, Command, Expect)> = Vec::new();
        if first {
            match gp::get_cin() {
                Ok(c) => plain.push(("get-data-cin", c, Expect::Cin)),
                Err(e) => return tsm(e.to_string()),
            }
        }
        let scopes =
            next_pages.unwrap_or_else(|| vec![StatusScope::LoadFiles, StatusScope::Applications]);
        for scope in scopes {
            match gp::get_status(scope, true, !first) {
                Ok(c) => plain.push(("get-status", c, Expect::Status { scope })),
                Err(e) => return tsm(e.to_string()),
            }
        }
        for (name, cmd, expect) in plain {
            let cmd = match self.here(cmd) {
                Ok(c) => c,
                Err(e) => return tsm(e),
            };
            let h = sha(&cmd);
            let pending = match session.wrap_command_pending(&cmd) {
                Ok((w, p)) => {
                    cmds.push(w);
                    p
                }
                Err(e) => return tsm(e.to_string()),
            };
            sent.push(Sent {
                name: name.into(),
                plain_sha256: h,
                expect,
                pending: Some(pending),
            });
        }
        self.state = State::Probing {
            session,
            sent,
            load_files,
            apps,
        };
        // Reads change nothing: an empty registry (`6A88`) must not stop the round.
        Next::Order(vec![AgentCmd::Apdus {
            batch_id: BATCH_PROBE,
            capdus: cmds.iter().map(|c| c.to_bytes()).collect(),
            stop_on_error: false,
        }])
    }

    /// Unwraps the answers of a round in order. `Ok(answers)` when every command was answered
    /// and every answer verified; `Err(next)` says what to do instead.
    fn unwrap_round(
        &mut self,
        session: &mut SecureSession,
        sent: &[Sent],
        result: Option<&BatchResult>,
    ) -> Result<Vec<Response>, Next> {
        let Some(result) = result else {
            return Err(self.open());
        };
        let mut answers = Vec::new();
        for (s, raw) in sent.iter().zip(&result.rapdus) {
            let Ok(resp) = Response::parse(raw) else {
                return Err(self.open());
            };
            let resp = match s.expect {
                Expect::Authenticate => {
                    if !resp.sw.is_success() {
                        // The card refused our host cryptogram: a fact only if it is one, but
                        // never worth a retry either way.
                        return Err(Next::Failed(ErrorReport {
                            card_sw: Some(resp.sw.0),
                            ..report(
                                Layer::Card,
                                "card.authentication",
                                false,
                                format!("EXTERNAL AUTHENTICATE answered {}: not retried", resp.sw),
                            )
                        }));
                    }
                    resp
                }
                _ => match s
                    .pending
                    .as_ref()
                    .map(|p| session.unwrap_response_for(p, &resp))
                {
                    Some(Ok(r)) => r,
                    // An R-MAC that does not verify: the relay altered the answer, or it is
                    // not from this session. Probe again in a new one.
                    _ => return Err(self.open()),
                },
            };
            answers.push(resp);
        }
        Ok(answers)
    }

    fn probed(
        &mut self,
        mut session: SecureSession,
        sent: Vec<Sent>,
        mut load_files: Vec<RegistryEntry>,
        mut apps: Vec<RegistryEntry>,
        results: &[BatchResult],
    ) -> Next {
        let answers = match self.unwrap_round(&mut session, &sent, batch(results, BATCH_PROBE)) {
            Ok(a) => a,
            Err(next) => return next,
        };
        let mut more = Vec::new();
        for (s, resp) in sent.iter().zip(&answers) {
            match &s.expect {
                Expect::Authenticate => {}
                Expect::Cin => {
                    let cin = gp::parse_cin(&resp.data);
                    if !resp.sw.is_success() || !cin.eq_ignore_ascii_case(&self.plan.expected_cin) {
                        return Next::Failed(report(
                            Layer::Card,
                            "card.identity",
                            false,
                            format!(
                                "the card is {cin}, not the card {} the operation is for",
                                self.plan.expected_cin
                            ),
                        ));
                    }
                    self.evidence.cin = cin;
                }
                Expect::Status { scope } => match resp.sw {
                    StatusWord::SUCCESS | StatusWord::MORE_DATA_AVAILABLE => {
                        let page = match gp::parse_status(*scope, true, &resp.data) {
                            Ok(p) => p,
                            Err(e) => {
                                return Next::Failed(report(
                                    Layer::Card,
                                    "card.malformed",
                                    false,
                                    format!("GET STATUS: {e}"),
                                ));
                            }
                        };
                        match scope {
                            StatusScope::LoadFiles => load_files.extend(page),
                            _ => apps.extend(page),
                        }
                        if resp.sw == StatusWord::MORE_DATA_AVAILABLE {
                            more.push(*scope);
                        }
                    }
                    StatusWord::REFERENCED_DATA_NOT_FOUND => {}
                    // An unauthenticated refusal of a read: probe again in a new session.
                    _ => return self.open(),
                },
                _ => {}
            }
        }
        if answers.len() < sent.len() {
            return self.open();
        }
        if !more.is_empty() {
            return self.probe(session, None, load_files, apps, Some(more));
        }
        let queue = match self.actions(&load_files, &apps) {
            Ok(q) => q,
            Err(e) => return Next::Failed(e),
        };
        if queue.is_empty() {
            self.state = State::Finished;
            return Next::Done(Box::new(std::mem::take(&mut self.evidence)));
        }
        self.act(session, queue)
    }

    /// The commands that bring the card from what the probe found to the plan.
    fn actions(
        &self,
        load_files: &[RegistryEntry],
        apps: &[RegistryEntry],
    ) -> Result<Vec<(String, Command, Expect)>, ErrorReport> {
        let bad =
            |e: card_wire::gp::GpError| report(Layer::Tsm, "tsm.script", false, e.to_string());
        let mut q = Vec::new();
        for goal in &self.plan.goals {
            match goal {
                Goal::LoadFile { package, modules } => {
                    if load_files.iter().any(|e| &e.aid == package) {
                        continue;
                    }
                    let file = gp::sim_load_file(package, modules);
                    let hash = gp::load_file_hash(&file).map_err(bad)?;
                    q.push((
                        format!("install-for-load:{}", hex::encode_upper(package)),
                        gp::install_for_load(package, &[], &hash).map_err(bad)?,
                        Expect::Success,
                    ));
                    for (i, c) in gp::load_blocks(&file).map_err(bad)?.into_iter().enumerate() {
                        q.push((format!("load:{i}"), c, Expect::Success));
                    }
                }
                Goal::Instance(spec) => {
                    if apps.iter().any(|e| e.aid == spec.instance) {
                        continue;
                    }
                    q.push((
                        format!("install:{}", hex::encode_upper(&spec.instance)),
                        gp::install(spec).map_err(bad)?,
                        Expect::Success,
                    ));
                }
                Goal::Personalize {
                    instance,
                    script,
                    check,
                } => {
                    let mut script = script.clone();
                    let last = match check {
                        Check::Success => Expect::Success,
                        Check::KeyProof {
                            key_fid,
                            certificate,
                        } => {
                            let mut v = key_fid.to_be_bytes().to_vec();
                            v.extend_from_slice(&self.plan.op.0);
                            v.extend_from_slice(&self.nonce);
                            script.extend(card_wire::tlv::tlv(card_wire::jpki::ITEM_KEY_PROOF, &v));
                            Expect::Proof {
                                certificate: certificate.clone(),
                            }
                        }
                        Check::Wallet { updates } => Expect::Wallet { updates: *updates },
                    };
                    q.push((
                        format!(
                            "install-for-personalization:{}",
                            hex::encode_upper(instance)
                        ),
                        gp::install_for_personalization(instance).map_err(bad)?,
                        Expect::Success,
                    ));
                    let stores = gp::store_data(&gp::blocks(&script), true).map_err(bad)?;
                    let n = stores.len();
                    for (i, c) in stores.into_iter().enumerate() {
                        let expect = if i + 1 == n {
                            last.clone()
                        } else {
                            Expect::Success
                        };
                        q.push((format!("store-data:{i}"), c, expect));
                    }
                }
                Goal::ReplaceKeys { replace } => {
                    let Some(new) = &self.plan.new_keys else {
                        return Err(report(
                            Layer::Tsm,
                            "tsm.script",
                            false,
                            "no new key set in the plan",
                        ));
                    };
                    if self.current.kvn == new.kvn {
                        continue;
                    }
                    let kdd = self
                        .kdd
                        .ok_or_else(|| report(Layer::Tsm, "tsm.script", false, "no KDD"))?;
                    let keys_err =
                        |e: Scp03Error| report(Layer::Tsm, "tsm.keys", true, e.to_string());
                    let mut new_keys = new.source.for_card(&kdd).map_err(keys_err)?;
                    new_keys.kvn = new.kvn;
                    let dek = self.current.source.for_card(&kdd).map_err(keys_err)?;
                    let mut pad = [0u8; 16];
                    getrandom::fill(&mut pad)
                        .map_err(|e| report(Layer::Tsm, "tsm.random", true, e.to_string()))?;
                    let (cmd, expected) =
                        gp::put_key(dek.dek(), &new_keys, Some(*replace), &pad).map_err(bad)?;
                    q.push((
                        format!("put-key:{:02X}", new.kvn),
                        cmd,
                        Expect::KeyCheck { expected },
                    ));
                }
                Goal::Absent { aid, related } => {
                    let present = apps.iter().chain(load_files).any(|e| &e.aid == aid);
                    if present {
                        q.push((
                            format!("delete:{}", hex::encode_upper(aid)),
                            gp::delete(aid, *related).map_err(bad)?,
                            Expect::Deleted,
                        ));
                    }
                }
            }
        }
        Ok(q)
    }

    /// Sends the next action round (at most [`MAX_BATCH`] commands).
    fn act(
        &mut self,
        mut session: SecureSession,
        mut queue: Vec<(String, Command, Expect)>,
    ) -> Next {
        let rest = queue.split_off(queue.len().min(MAX_BATCH));
        let mut sent = Vec::new();
        let mut capdus = Vec::new();
        for (name, cmd, expect) in queue {
            let cmd = match self.here(cmd) {
                Ok(c) => c,
                Err(e) => return Next::Failed(report(Layer::Tsm, "tsm.script", false, e)),
            };
            let h = sha(&cmd);
            let pending = match session.wrap_command_pending(&cmd) {
                Ok((w, p)) => {
                    capdus.push(w.to_bytes());
                    p
                }
                Err(e) => {
                    return Next::Failed(report(Layer::Tsm, "tsm.script", false, e.to_string()));
                }
            };
            sent.push(Sent {
                name,
                plain_sha256: h,
                expect,
                pending: Some(pending),
            });
        }
        self.state = State::Acting {
            session,
            sent,
            queue: rest,
        };
        Next::Order(vec![AgentCmd::Apdus {
            batch_id: BATCH_ACT,
            capdus,
            stop_on_error: true,
        }])
    }

    fn acted(
        &mut self,
        mut session: SecureSession,
        sent: Vec<Sent>,
        queue: Vec<(String, Command, Expect)>,
        results: &[BatchResult],
    ) -> Next {
        let answers = match self.unwrap_round(&mut session, &sent, batch(results, BATCH_ACT)) {
            Ok(a) => a,
            Err(next) => return next,
        };
        for (s, resp) in sent.iter().zip(&answers) {
            let ok = match &s.expect {
                Expect::Deleted => {
                    resp.sw.is_success() || resp.sw == StatusWord::REFERENCED_DATA_NOT_FOUND
                }
                _ => resp.sw.is_success(),
            };
            if !ok {
                // Unauthenticated: a hint. Probe again in a new session; what is done stays.
                return self.reopen_after_refusal(s, resp.sw);
            }
            match &s.expect {
                Expect::Proof { certificate } => {
                    let proof = card_wire::tlv::find(
                        &resp.data,
                        card_wire::tlv::Tag(card_wire::jpki::ITEM_KEY_PROOF),
                    )
                    .ok()
                    .flatten()
                    .map(|t| t.value.to_vec());
                    let Some(sig) = proof else {
                        return Next::Failed(report(
                            Layer::Card,
                            "card.no-key-proof",
                            false,
                            "the card did not answer the key proof: is the applet a kagi JPKI applet?",
                        ));
                    };
                    let checked = CertKey::from_certificate(certificate).and_then(|k| {
                        k.verify(&key_proof_message(&self.plan.op, &self.nonce), &sig)
                    });
                    if let Err(e) = checked {
                        return Next::Failed(report(
                            Layer::Card,
                            "card.key-proof",
                            false,
                            format!("the key on the card does not match the certificate: {e}"),
                        ));
                    }
                    self.evidence.key_proof = Some((sig, self.nonce));
                }
                Expect::KeyCheck { expected } if &resp.data != expected => {
                    return Next::Failed(report(
                        Layer::Card,
                        "card.put-key",
                        false,
                        "PUT KEY: the card's key check values differ from the keys sent",
                    ));
                }
                Expect::Wallet { updates } => match card_wire::wallet::Summary::parse(&resp.data) {
                    Some(w) if w.applied.len() == *updates => self.evidence.wallet = Some(w),
                    _ => {
                        return Next::Failed(report(
                            Layer::Card,
                            "card.wallet",
                            false,
                            "the wallet did not account for every update",
                        ));
                    }
                },
                _ => {}
            }
            self.evidence.steps.push(StepRecord {
                name: s.name.clone(),
                command_sha256: s.plain_sha256,
                sw: resp.sw.0,
            });
        }
        if answers.len() < sent.len() {
            return self.open();
        }
        if !queue.is_empty() {
            return self.act(session, queue);
        }
        self.state = State::Finished;
        Next::Done(Box::new(std::mem::take(&mut self.evidence)))
    }

    /// A refused action: re-open and probe (the refusal may be the relay's invention), until
    /// the sessions run out; then it is reported as the card's refusal.
    fn reopen_after_refusal(&mut self, s: &Sent, sw: StatusWord) -> Next {
        if self.budget >= MAX_SESSIONS {
            return Next::Failed(ErrorReport {
                card_sw: Some(sw.0),
                ..report(
                    Layer::Card,
                    "card.refused",
                    false,
                    format!(
                        "{} was refused with {sw} in {} sessions",
                        s.name, self.evidence.sessions
                    ),
                )
            });
        }
        self.open()
    }
}
