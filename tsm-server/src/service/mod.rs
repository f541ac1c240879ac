//! The TSM's behaviour behind its two endpoints: signed control requests from providers and
//! the operator, and the relay's messages. Every state change is written to the database —
//! with its audit event, in one transaction, compare-and-swap on the operation's version —
//! before the answer leaves; the only state kept in memory is the SCP03 session of a running
//! relay session, which is never resumed: after a restart (or on another instance) the next
//! report gets a new session and a new probe.
//!
//! The methods of [`Tsm`] are split by job: `control` (the control API and the providers'
//! requests), `create` (operations a request creates), `operator` (the operator's notices),
//! `relay` (the relay endpoint, device tickets and access entries), `plan` (what a session
//! runs) and `engine` (a running session and the end of an operation).

mod control;
mod create;
mod domain_delete;
mod engine;
mod issuer_link;
mod mail;
pub mod mno_links;
mod operator;
mod outbox;
mod pin_reset;
mod plan;
mod prepare;
mod registry;
mod relay;
mod retire;
mod sim_notice;
mod suspend;
mod transfer;
mod withdraw;

pub use issuer_link::IssuerLink;
pub use prepare::{INITIAL_KVN, MnoLink};
pub use retire::RETIRE_VALID_MS;
pub use sim_notice::{SpTsmLink, SpTsmLinks};

use crate::store::ops::OpRow;
use crate::store::{Store, StoreError};
use card_wire::scp03::{AesKey, CardKeys};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tsm_protocol::codec::CodecError;
use tsm_protocol::control::{
    CardTarget, ControlRequest, ControlResponse, CredentialBundle, OpState, OperationView,
};
use tsm_protocol::script::Engine;
use tsm_protocol::signing::{self, Policy, ProtocolError, SignError, Signer, Trust};
use tsm_protocol::{ErrorReport, Layer, OpId, PartyId, SessionId};

/// A service provider the TSM acts for: its security domain on the cards and the keys of it.
pub struct Provider {
    /// The domain's AID.
    pub sd_aid: Vec<u8>,
    /// Its key version.
    pub kvn: u8,
    /// Each card's domain keys (diversified from the provider's master keys, in an HSM or
    /// the development file store).
    pub keys: Arc<dyn CardKeys>,
}

/// A provider an MNO-TSM prepares SIMs for (its trust list): the domain's AID, and the SP-TSM
/// that may ask for it.
pub struct Hosted {
    /// The provider's security domain AID.
    pub sd_aid: Vec<u8>,
    /// The SP-TSM acting for the provider (its requests are signed with a key in the trust).
    pub sp_tsm: PartyId,
}

/// A mobile operator whose issuer security domains the TSM may open (its MNO-TSM role).
pub struct Operator {
    /// The issuer domain's AID.
    pub isd_aid: Vec<u8>,
    /// Its key version.
    pub kvn: u8,
    /// Each card's issuer-domain keys.
    pub keys: Arc<dyn CardKeys>,
}

/// How the TSM is set up.
pub struct Config {
    /// Signs every answer and receipt.
    pub signer: Signer,
    /// The providers' and operators' public keys.
    pub trust: Trust,
    /// What requests are accepted (this TSM's name, clock skew, validity).
    pub policy: Policy,
    /// The providers, by party.
    pub providers: BTreeMap<PartyId, Provider>,
    /// The operators whose issuer domains this TSM opens (to create providers' domains):
    /// filled on an MNO-TSM only (`kagi mno-tsm`); an SP-TSM holds no issuer-domain key.
    pub operators: BTreeMap<PartyId, Operator>,
    /// On an MNO-TSM: the providers it prepares SIMs for, by party.
    pub hosted: BTreeMap<PartyId, Hosted>,
    /// On an SP-TSM: the MNO-TSMs that prepare SIMs (seed 004 ⑭⑮), each serving the SIMs of
    /// its ICCID prefixes ([`mno_links`]; checked by [`mno_links::check`] at load); empty when
    /// the providers' domains and applets are already on the SIMs.
    pub mno: Vec<MnoLink>,
    /// On an SP-TSM: the JPKI issuer that makes credentials for applications (seed 004
    /// ⑯⑰); `None` when providers bring their credentials sealed themselves.
    pub issuer: Option<IssuerLink>,
    /// Seals the access codes and tickets kept for idempotent answers.
    pub state_key: AesKey,
    /// Where to write the revocation list (one serial per line) after every revocation.
    pub revocation_list: Option<std::path::PathBuf>,
    /// On an SP-TSM: the outbox the access codes of applications go to their users through
    /// (seed 004 ⑪; `[notify]` in tsm.toml, a maildir by default); `None`: applications are
    /// refused (`business.no-outbox`).
    pub outbox: Option<Arc<kagi_notify::Outbox>>,
}

/// How long a running operation past its deadline may go without progress before the sweeper
/// ends it (its relay vanished mid-session): five minutes.
pub const RUNNING_STALL_MS: i64 = 300_000;

/// Milliseconds since the Unix epoch.
fn now() -> i64 {
    signing::now_ms() as i64
}

fn err(layer: Layer, code: &str, detail: impl Into<String>) -> ErrorReport {
    ErrorReport::new(layer, code, false, detail)
}

/// The refusal for a credential that does not exist or is not the asking party's: the same
/// code and words either way, so nobody learns about credentials that are not theirs.
fn unknown_credential(credential: &OpId, party: &PartyId) -> ControlResponse {
    ControlResponse::Rejected(err(
        Layer::Business,
        "business.unknown-credential",
        format!("no credential {credential} of {party}"),
    ))
}

/// The refusal for an operation that does not exist or is not the asking party's.
fn unknown_operation(op: &OpId, party: &PartyId) -> ControlResponse {
    ControlResponse::Rejected(err(
        Layer::Business,
        "business.unknown-operation",
        format!("no operation {op} of {party}"),
    ))
}

/// The refusal for a SIM that is not registered or is another operator's.
fn unknown_card(iccid: &str, party: &PartyId) -> ControlResponse {
    ControlResponse::Rejected(err(
        Layer::Business,
        "business.unknown-card",
        format!("no SIM {iccid} registered by {party}"),
    ))
}

/// Why a request could not be handled at all (the HTTP layer maps these).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Not a message: the body does not decode, or its signed envelope cannot be read (a
    /// 400; the sender must send a well-formed message).
    #[error(transparent)]
    BadRequest(ProtocolError),
    /// Another instance changed the operation meanwhile: send the same message again.
    #[error("the operation changed meanwhile: send the same message again")]
    Conflict,
    /// The database failed, or holds a row that does not decode.
    #[error("{0}")]
    Store(StoreError),
    /// The system's random numbers failed (ids, nonces, access codes): not the sender's
    /// fault; retry later, and check the host's entropy source if it persists.
    #[error("the TSM's random numbers failed: {0}")]
    Random(#[from] getrandom::Error),
    /// A message of the TSM's own could not be encoded (too large): not the sender's fault.
    #[error("the TSM cannot encode its own message: {0}")]
    Encode(#[from] CodecError),
    /// A lock of this instance was poisoned by a panic: restart the instance (its state is in
    /// the database; a running session continues on another instance or after the restart).
    #[error("a lock of this TSM instance is poisoned: restart it")]
    Poisoned,
    /// The worker thread checking a password failed (it panicked or the runtime is shutting
    /// down): not the sender's fault; the attempt is spent, enter the code and password again.
    #[error("the TSM could not check the password: {0}; enter it again")]
    Hashing(String),
}

impl From<SignError> for ServiceError {
    fn from(e: SignError) -> Self {
        match e {
            SignError::Random(e) => ServiceError::Random(e),
            SignError::Encode(e) => ServiceError::Encode(e),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(_) => ServiceError::Conflict,
            e => ServiceError::Store(e),
        }
    }
}

type Result<T> = std::result::Result<T, ServiceError>;

/// A running relay session's engine (in memory only).
struct Running {
    op: OpId,
    engine: Engine,
    /// Goals that delete revoked applets riding along (their credentials, cleared at the
    /// end).
    deletions: Vec<OpId>,
}

/// The TSM.
pub struct Tsm {
    config: Config,
    store: Store,
    engines: Mutex<HashMap<SessionId, Running>>,
    entry_checks: std::sync::atomic::AtomicU64,
    /// The in-memory count of refused messages in front of the trail ([`crate::refusals`]).
    refusal_gate: crate::refusals::Gate,
    password_policy: tsm_protocol::password::Policy,
    /// On an MNO-TSM: the SP-TSMs it notifies of lost and changed SIMs.
    sp_tsm_links: SpTsmLinks,
}

/// The access code and ticket of an operation, kept sealed.
#[derive(serde::Serialize, serde::Deserialize)]
struct Secrets {
    code: String,
    ticket: String,
}

impl Drop for Secrets {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.code);
        zeroize::Zeroize::zeroize(&mut self.ticket);
    }
}

/// A new operation's id and one-time values: its access code and device ticket (also sealed
/// under the state key, for answering a repeated request) and the nonce its key proof signs.
struct NewOp {
    id: OpId,
    code: zeroize::Zeroizing<String>,
    ticket: zeroize::Zeroizing<String>,
    proof_nonce: [u8; 32],
    sealed_secrets: Vec<u8>,
}

impl Tsm {
    fn new_op(&self) -> Result<NewOp> {
        let id = OpId::random()?;
        let code = tsm_protocol::access::new_access_code()?;
        let ticket = tsm_protocol::access::new_ticket()?;
        let mut proof_nonce = [0u8; 32];
        getrandom::fill(&mut proof_nonce)?;
        let secrets = Secrets {
            code: code.to_string(),
            ticket: ticket.to_string(),
        };
        let plain = zeroize::Zeroizing::new(tsm_protocol::codec::encode(&secrets)?);
        let sealed_secrets = card_wire::state_seal::seal(&self.config.state_key, &id.0, &plain);
        Ok(NewOp {
            id,
            code,
            ticket,
            proof_nonce,
            sealed_secrets,
        })
    }
}

fn credential_of(req: &ControlRequest) -> Option<&CredentialBundle> {
    match req {
        ControlRequest::Issue { credential, .. } => Some(credential),
        ControlRequest::Transfer { new_credential, .. } => Some(new_credential),
        _ => None,
    }
}

impl Tsm {
    /// A TSM over an open store, accepting password verifiers under the production policy
    /// ([`tsm_protocol::password::Policy::production`]: Argon2id, m=19456 KiB, t=2, p=1 at
    /// least).
    pub fn new(config: Config, store: Store) -> Tsm {
        Tsm {
            config,
            store,
            engines: Mutex::new(HashMap::new()),
            entry_checks: std::sync::atomic::AtomicU64::new(0),
            refusal_gate: Default::default(),
            password_policy: tsm_protocol::password::Policy::production(),
            sp_tsm_links: SpTsmLinks::new(),
        }
    }

    /// The same TSM with another password policy (the verifiers a grant may carry). Only
    /// tests weaken it ([`tsm_protocol::password::Policy::cheap_for_tests`]).
    pub fn with_password_policy(mut self, policy: tsm_protocol::password::Policy) -> Tsm {
        self.password_policy = policy;
        self
    }

    /// How many access-code and password entries this instance has checked since it
    /// started (each one spent an attempt first), for monitoring.
    pub fn entry_checks(&self) -> u64 {
        self.entry_checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This TSM's party.
    pub fn party(&self) -> &PartyId {
        &self.config.policy.me
    }

    /// The TSM's public key (what providers trust its answers and receipts with).
    pub fn verifying_key(&self) -> p256::ecdsa::VerifyingKey {
        *self.config.signer.verifying_key()
    }

    /// Marks operations past their time as expired — waiting ones, and running ones whose
    /// session made no progress for [`RUNNING_STALL_MS`] — by a conditional update on each
    /// operation's version; forgets old replay entries.
    pub async fn sweep(&self) -> Result<usize> {
        self.flush_refusals().await;
        let t = now();
        let rows = self
            .store
            .query(
                "SELECT id FROM ops WHERE expires_at < $1 AND (state IN ('awaiting-device', 'device-bound', 'interrupted')
                 OR (state = 'running' AND updated_at < $2))",
                vec![t.into(), (t - RUNNING_STALL_MS).into()],
            )
            .await?;
        let mut n = 0;
        for r in rows {
            let Some(id) = OpId::from_hex(&r[0].text()) else {
                continue;
            };
            // Read again: only an operation still waiting and past its time expires (its
            // version then guards the write).
            if let Some(mut op) = self.store.op(&id).await?
                && (matches!(
                    op.state,
                    OpState::AwaitingDevice | OpState::DeviceBound | OpState::Interrupted
                ) || (op.state == OpState::Running && op.updated_at < t - RUNNING_STALL_MS))
                && op.expires_at < t
            {
                if op.state == OpState::Running {
                    // Its relay vanished mid-session: the operation ends at its deadline
                    // (the version guard loses to a session that moved meanwhile).
                    op.data.error = Some(ErrorReport::new(
                        Layer::Tsm,
                        "tsm.deadline",
                        false,
                        "the download stopped mid-session and its time ran out: issue it again",
                    ));
                }
                op.state = OpState::Expired;
                op.updated_at = t;
                let batch = vec![
                    Store::credential_state(&id, "pending", "expired", t),
                    Store::update_op(&op)?,
                    Store::audit(&id, t, "tsm", "expired", ""),
                    Store::erase_sealed_if_over(&id),
                ];
                match self.store.commit(batch).await {
                    Ok(()) => n += 1,
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.store.purge_replay(t).await?;
        let mailed = self.retry_code_mails().await?;
        if mailed > 0 {
            tracing::info!(mailed, "access codes sent on retry");
        }
        let notified = self.deliver_sim_notices(None).await?;
        if notified > 0 {
            tracing::info!(notified, "SIM notices acknowledged on retry");
        }
        let deleted = self.deliver_domain_deletions(None).await?;
        if deleted > 0 {
            tracing::info!(
                deleted,
                "old SIMs' provider domain deletions acknowledged on retry"
            );
        }
        let withdrawn = self.retry_withdrawals().await?;
        if withdrawn > 0 {
            tracing::info!(withdrawn, "undelivered phone certificates withdrawn");
        }
        Ok(n)
    }
}

/// The canonical encoding of a relay message.
fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    Ok(tsm_protocol::codec::encode(v)?)
}

/// What a provider sees of an operation.
fn view(o: &OpRow) -> OperationView {
    OperationView {
        op: o.id,
        kind: o.kind.clone(),
        state: o.state,
        steps: o.data.steps.clone(),
        receipt: o.data.receipt.clone(),
        error: o.data.error.clone(),
        children: o.data.children.clone(),
    }
}

/// The card a request is for (for logs).
pub fn card_of(req: &ControlRequest) -> Option<&CardTarget> {
    match req {
        ControlRequest::Issue { card, .. }
        | ControlRequest::Apply { card, .. }
        | ControlRequest::Transfer { card, .. }
        | ControlRequest::ApplyTransfer { card, .. }
        | ControlRequest::WalletUpdate { card, .. } => Some(card),
        _ => None,
    }
}

/// Another service this one sends signed requests to (the MNO-TSM, the JPKI issuer).
pub(crate) struct Peer<'a> {
    /// Its party (the requests' recipient, the answers' signer).
    pub party: &'a PartyId,
    /// Its client.
    pub http: &'a reqwest::Client,
    /// The endpoint (full URL).
    pub url: String,
    /// What it is, for messages ("the JPKI issuer at …").
    pub who: String,
    /// The error code when it cannot be reached (retryable).
    pub unreachable: &'static str,
    /// The error code when its answer does not verify.
    pub bad_answer: &'static str,
}

impl Tsm {
    /// Signs `req` for `peer` (a fresh message id and nonce, `idem` if given), POSTs it and
    /// opens its signed answer as `A`; or why there is none (`peer.unreachable`, which may
    /// succeed later, or `peer.bad_answer`).
    pub(crate) async fn exchange<Q, A>(
        &self,
        peer: Peer<'_>,
        req: &Q,
        idem: Option<tsm_protocol::IdempotencyKey>,
    ) -> Result<std::result::Result<A, ErrorReport>>
    where
        Q: serde::Serialize,
        A: serde::Serialize + serde::de::DeserializeOwned,
    {
        let out = tsm_protocol::control::sign_request(
            &self.config.signer,
            peer.party,
            req,
            idem,
            signing::now_ms(),
            120_000,
        )?;
        let unreachable = |e: String| {
            ErrorReport::new(
                Layer::Tsm,
                peer.unreachable,
                true,
                format!("{} cannot be reached ({e}): try again later", peer.who),
            )
        };
        let sent = peer
            .http
            .post(&peer.url)
            .header("content-type", "application/octet-stream")
            .body(out.bytes)
            .send()
            .await;
        let bytes = match sent {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(b) => b,
                Err(e) => return Ok(Err(unreachable(e.to_string()))),
            },
            Ok(r) => return Ok(Err(unreachable(format!("HTTP {}", r.status())))),
            Err(e) => return Ok(Err(unreachable(e.to_string()))),
        };
        match tsm_protocol::control::open_answer_as::<A>(
            &bytes,
            &out.header,
            &self.config.trust,
            signing::now_ms(),
        ) {
            Ok(a) => Ok(Ok(a)),
            Err(e) => {
                // Audited (bounded, `answer-refused`), the body never.
                self.audit_refusal(crate::refusals::Refusal::of_bytes(
                    crate::refusals::ANSWER_REFUSED,
                    &bytes,
                    &e,
                    &self.config.trust,
                ))
                .await;
                Ok(Err(err(
                    Layer::Protocol,
                    peer.bad_answer,
                    format!("the answer of {} does not verify: {e}", peer.who),
                )))
            }
        }
    }
}
