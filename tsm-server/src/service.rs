//! The TSM's behaviour behind its two endpoints: signed control requests from providers and
//! the operator, and the relay's messages. Every state change is written to the database —
//! with its audit event, in one transaction, compare-and-swap on the operation's version —
//! before the answer leaves; the only state kept in memory is the SCP03 session of a running
//! relay session, which is never resumed: after a restart (or on another instance) the next
//! report gets a new session and a new probe.

use crate::store::ops::{CardRow, Created, CredentialRow, OpData, OpRow};
use crate::store::{Stmt, Store, StoreError};
use card_wire::jpki;
use card_wire::scp03::{AesKey, CardKeys};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tsm_protocol::access;
use tsm_protocol::control::{
    CardTarget, ControlRequest, ControlResponse, CredentialBundle, CredentialStatus, OpState,
    OperationView, RevokeReason,
};
use tsm_protocol::receipt::{ExecutionReceipt, StepRecord};
use tsm_protocol::recipes;
use tsm_protocol::relay::{AgentMsg, ServerMsg, StopOutcome, UserCredentials};
use tsm_protocol::script::{Engine, Evidence, Goal, Next, Plan};
use tsm_protocol::signing::{self, Kind, Policy, Signer, Trust};
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
    /// The provider's content key, given to its applets at installation: the layer that
    /// keeps credentials sealed end to end.
    pub content_key: AesKey,
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
    /// The operators whose issuer domains this TSM opens (to create providers' domains).
    pub operators: BTreeMap<PartyId, Operator>,
    /// Seals the access codes and tickets kept for idempotent answers.
    pub state_key: AesKey,
    /// Where to write the revocation list (one serial per line) after every revocation.
    pub revocation_list: Option<std::path::PathBuf>,
}

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
    /// Not a message.
    #[error("{0}")]
    BadRequest(String),
    /// Another instance changed the operation meanwhile: send the same message again.
    #[error("the operation changed meanwhile: send the same message again")]
    Conflict,
    /// The database failed.
    #[error("{0}")]
    Store(StoreError),
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

fn credential_of(req: &ControlRequest) -> Option<&CredentialBundle> {
    match req {
        ControlRequest::Issue { credential, .. } => Some(credential),
        ControlRequest::Transfer { new_credential, .. } => Some(new_credential),
        _ => None,
    }
}

/// Serial (hex) and notAfter (Unix seconds) of a DER certificate.
fn cert_facts(der: &[u8]) -> std::result::Result<(String, i64), String> {
    use der::Decode;
    let c = x509_cert::Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))?;
    let tbs = c.tbs_certificate();
    let not_after = tbs
        .validity()
        .not_after
        .to_system_time()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok((kagi_certs::serial_hex(&c), not_after))
}

impl Tsm {
    /// A TSM over an open store.
    pub fn new(config: Config, store: Store) -> Tsm {
        Tsm {
            config,
            store,
            engines: Mutex::new(HashMap::new()),
            entry_checks: std::sync::atomic::AtomicU64::new(0),
        }
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

    // ---------------------------------------------------------------- control API

    /// Handles a signed control request; the answer is signed.
    pub async fn control(&self, body: &[u8]) -> Result<Vec<u8>> {
        let (header, verified) = signing::receive_request::<ControlRequest>(
            body,
            &self.config.trust,
            &self.config.policy,
            now() as u64,
        )
        .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let answer = match verified {
            Err(e) => {
                tracing::warn!(sender = %header.sender, error = %e, "control request refused");
                ControlResponse::Rejected(ErrorReport::from(&e))
            }
            Ok(env) => {
                let h = &env.header;
                let keep = h.expires_at.saturating_add(self.config.policy.max_skew_ms) as i64;
                if !self.store.first_seen(&h.sender.0, &h.msg_id, keep).await? {
                    let e = signing::ProtocolError::Replayed(h.msg_id, h.sender.clone());
                    tracing::warn!(sender = %h.sender, "replayed control request");
                    ControlResponse::Rejected(ErrorReport::from(&e))
                } else {
                    tracing::info!(sender = %h.sender, request = env.body.name(), "control request");
                    self.handle(&env.header, env.body).await?
                }
            }
        };
        self.config
            .signer
            .answer(&header, &answer, now() as u64)
            .map_err(ServiceError::BadRequest)
    }

    async fn handle(&self, h: &signing::Header, req: ControlRequest) -> Result<ControlResponse> {
        let party = &h.sender;
        let role = party.role();
        let reject = |code: &str, detail: String| {
            Ok(ControlResponse::Rejected(err(
                Layer::Business,
                code,
                detail,
            )))
        };
        match (&req, role) {
            (ControlRequest::CreateSecurityDomain { .. }, "mno") => self.create(h, req).await,
            (
                ControlRequest::RegisterCard { .. }
                | ControlRequest::SimChanged { .. }
                | ControlRequest::CardLost { .. }
                | ControlRequest::CheckEligibility { .. },
                "mno",
            ) => self.mno(party, req).await,
            (
                ControlRequest::RegisterCard { .. }
                | ControlRequest::SimChanged { .. }
                | ControlRequest::CardLost { .. }
                | ControlRequest::CheckEligibility { .. }
                | ControlRequest::CreateSecurityDomain { .. },
                _,
            ) => reject(
                "business.not-an-operator",
                format!("{party} may not send operator notices"),
            ),
            (_, "sp") => self.provider_request(h, req).await,
            _ => reject(
                "business.not-a-provider",
                format!("{party} is not a service provider"),
            ),
        }
    }

    async fn provider_request(
        &self,
        h: &signing::Header,
        req: ControlRequest,
    ) -> Result<ControlResponse> {
        let party = &h.sender;
        match req {
            ControlRequest::Issue { .. }
            | ControlRequest::ResetPin { .. }
            | ControlRequest::WalletUpdate { .. }
            | ControlRequest::Transfer { .. } => self.create(h, req).await,
            ControlRequest::Revoke { credential, reason } => {
                self.revoke(party, &credential, reason).await
            }
            ControlRequest::CheckStatus { credential } => {
                match self.store.credential(&credential).await? {
                    Some(c) if c.party == party.0 => {
                        Ok(ControlResponse::Credential(self.status_of(&c)))
                    }
                    _ => Ok(unknown_credential(&credential, party)),
                }
            }
            ControlRequest::GetOperation { op } => match self.store.op(&op).await? {
                Some(o) if o.party == party.0 => Ok(ControlResponse::Operation(view(&o))),
                _ => Ok(unknown_operation(&op, party)),
            },
            ControlRequest::Cancel { op } => match self.store.op(&op).await? {
                Some(o) if o.party == party.0 => {
                    if !o.state.is_final() {
                        // Whatever the relay does meanwhile, the cancellation lands: the
                        // database cancels the operation if it is not over when this commits.
                        let t = now();
                        self.store
                            .commit(vec![
                                Store::cancel_op(&o.id, t),
                                Store::audit(&o.id, t, &party.0, "cancelled", ""),
                            ])
                            .await?;
                    }
                    match self.store.op(&op).await? {
                        Some(o) => Ok(ControlResponse::Operation(view(&o))),
                        None => Ok(unknown_operation(&op, party)),
                    }
                }
                _ => Ok(unknown_operation(&op, party)),
            },
            _ => Ok(ControlResponse::Rejected(err(
                Layer::Protocol,
                "protocol.unsupported",
                "not a provider request",
            ))),
        }
    }

    fn status_of(&self, c: &CredentialRow) -> CredentialStatus {
        let reason = c.reason.as_deref().and_then(|r| match r {
            "card-lost" => Some(RevokeReason::CardLost),
            "superseded" => Some(RevokeReason::Superseded),
            "user-request" => Some(RevokeReason::UserRequest),
            "expired" => Some(RevokeReason::Expired),
            _ => None,
        });
        CredentialStatus {
            credential: c.op_id,
            iccid: c.iccid.clone(),
            state: c.state.clone(),
            revoked: reason,
            serial: c.serial.clone(),
            not_after: c.not_after.max(0) as u64,
            expired: c.not_after < now() / 1000,
            my_number_sign_serial: c.my_number_serial.clone(),
            card_deletion_pending: c.deletion_pending,
        }
    }

    /// Creates an operation that needs the card (issue, transfer, PIN reset, wallet update).
    async fn create(&self, h: &signing::Header, req: ControlRequest) -> Result<ControlResponse> {
        let party = &h.sender;
        let reject = |code: &str, detail: String| {
            Ok(ControlResponse::Rejected(err(
                Layer::Business,
                code,
                detail,
            )))
        };
        let Some(idem) = h.idempotency_key else {
            return Ok(ControlResponse::Rejected(err(
                Layer::Protocol,
                "protocol.idempotency-key-missing",
                "a request that creates an operation needs an idempotency key",
            )));
        };
        let provider = match &req {
            ControlRequest::CreateSecurityDomain { provider, .. } => {
                if !self.config.operators.contains_key(party) {
                    return reject(
                        "business.unknown-operator",
                        format!("this TSM holds no issuer-domain keys of {party}"),
                    );
                }
                provider.clone()
            }
            _ => party.clone(),
        };
        if !self.config.providers.contains_key(&provider) {
            return reject(
                "business.unknown-provider",
                format!("this TSM holds no security-domain keys for {provider}"),
            );
        }
        let request_hash = Sha256::digest(
            tsm_protocol::codec::encode(&req)
                .map_err(|e| ServiceError::BadRequest(e.to_string()))?,
        )
        .to_vec();
        // Idempotency first: the same key and request answer as before, another request is
        // a conflict.
        if let Some(existing) = self.store.op_by_idem(&party.0, &idem.to_hex()).await? {
            return self.again(existing, &request_hash);
        }
        let (kind, iccid, access, credential_row, supersedes) = match &req {
            ControlRequest::Issue {
                card,
                credential,
                access,
                applet,
                ..
            } => {
                let (serial, not_after) = match cert_facts(&credential.certificate) {
                    Ok(f) => f,
                    Err(e) => return reject("business.bad-certificate", e),
                };
                if not_after < now() / 1000 {
                    return reject(
                        "business.expired-certificate",
                        "the certificate has already expired".into(),
                    );
                }
                (
                    "issue",
                    card.iccid.clone(),
                    access.clone(),
                    Some((
                        serial,
                        not_after,
                        credential.my_number_sign_serial.clone(),
                        applet.instance.clone(),
                    )),
                    None,
                )
            }
            ControlRequest::Transfer {
                credential,
                card,
                new_credential,
                access,
            } => {
                let old = match self.store.credential(credential).await? {
                    Some(c) if c.party == party.0 => c,
                    _ => return Ok(unknown_credential(credential, party)),
                };
                if old.state != "active" {
                    return reject(
                        "business.not-transferable",
                        format!(
                            "credential {credential} is {} (only an active credential moves)",
                            old.state
                        ),
                    );
                }
                let (serial, not_after) = match cert_facts(&new_credential.certificate) {
                    Ok(f) => f,
                    Err(e) => return reject("business.bad-certificate", e),
                };
                (
                    "transfer",
                    card.iccid.clone(),
                    access.clone(),
                    Some((
                        serial,
                        not_after,
                        new_credential.my_number_sign_serial.clone(),
                        old.instance.clone(),
                    )),
                    Some(*credential),
                )
            }
            ControlRequest::ResetPin {
                credential, access, ..
            } => {
                let c = match self.store.credential(credential).await? {
                    Some(c) if c.party == party.0 => c,
                    _ => return Ok(unknown_credential(credential, party)),
                };
                if c.state != "active" {
                    return reject(
                        "business.not-active",
                        format!("credential {credential} is {}", c.state),
                    );
                }
                ("reset-pin", c.iccid.clone(), access.clone(), None, None)
            }
            ControlRequest::CreateSecurityDomain {
                iccid,
                access,
                privileges,
                ..
            } => {
                if privileges.first().is_none_or(|p| p & 0x80 == 0) {
                    return reject(
                        "business.bad-privileges",
                        "a security domain needs the Security Domain privilege (80)".into(),
                    );
                }
                ("create-sd", iccid.clone(), access.clone(), None, None)
            }
            ControlRequest::WalletUpdate {
                card,
                access,
                updates,
                ..
            } => {
                if updates.is_empty() {
                    return reject("business.nothing-to-do", "no updates".into());
                }
                (
                    "wallet-update",
                    card.iccid.clone(),
                    access.clone(),
                    None,
                    None,
                )
            }
            _ => return reject("protocol.unsupported", "not an operation".into()),
        };
        if access.password_iterations < 1000 || access.max_attempts == 0 || access.max_attempts > 10
        {
            return reject(
                "business.weak-access",
                "the access grant needs at least 1000 PBKDF2 iterations and 1 to 10 attempts"
                    .into(),
            );
        }
        let valid_for = access.valid_for_ms.clamp(60_000, 7 * 86_400_000) as i64;
        let operator_request = matches!(req, ControlRequest::CreateSecurityDomain { .. });
        match self.store.card(&iccid).await? {
            // An operator acts on its own SIMs only; another operator's is as unknown.
            Some(c) if operator_request && c.mno != party.0 => {
                return Ok(unknown_card(&iccid, party));
            }
            None if operator_request => return Ok(unknown_card(&iccid, party)),
            None => {
                return reject(
                    "business.unknown-card",
                    format!("SIM {iccid} is not registered (the operator registers it)"),
                );
            }
            Some(c) if c.state != "active" => {
                return reject(
                    "business.card-not-active",
                    format!("SIM {iccid} is {}", c.state),
                );
            }
            Some(_) => {}
        }
        // One live operation per card and provider at a time.
        if let Some(live) = self
            .store
            .live_ops_on(&iccid)
            .await?
            .into_iter()
            .find(|o| o.party == party.0)
        {
            return reject(
                "business.in-progress",
                format!(
                    "operation {} is still running on SIM {iccid}: cancel it or wait",
                    live.id
                ),
            );
        }
        let id = OpId::random().map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let code =
            access::new_access_code().map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let ticket = access::new_ticket().map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let mut proof_nonce = [0u8; 32];
        getrandom::fill(&mut proof_nonce).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let secrets = Secrets {
            code: code.to_string(),
            ticket: ticket.to_string(),
        };
        let plain = zeroize::Zeroizing::new(
            tsm_protocol::codec::encode(&secrets)
                .map_err(|e| ServiceError::BadRequest(e.to_string()))?,
        );
        let sealed_secrets = card_wire::content::seal(&self.config.state_key, &id.0, &plain);
        let t = now();
        let mut children = Vec::new();
        if let Some(old) = supersedes {
            children.push(old);
        }
        let op = OpRow {
            id,
            kind: kind.into(),
            party: party.0.clone(),
            state: OpState::AwaitingDevice,
            iccid: iccid.clone(),
            idem_key: Some(idem.to_hex()),
            request_hash,
            parent: None,
            created_at: t,
            expires_at: t + valid_for,
            updated_at: t,
            version: 0,
            data: OpData {
                request: req,
                request_id: (h.msg_id, h.nonce),
                code_hash: access::code_hash(&id, &code),
                attempts_left: access.max_attempts,
                steps: Vec::new(),
                receipt: None,
                error: None,
                proof_nonce,
                children,
                sealed_secrets,
                cin: String::new(),
                session: None,
                phase: 0,
            },
        };
        // The card must still be active when this commits (a card reported lost meanwhile
        // gets no new operation).
        let mut extra = vec![
            Store::require_active_card(&iccid),
            Store::insert_ticket(&access::ticket_hash(&ticket), &id),
            Store::audit(&id, t, &party.0, "accepted", kind),
        ];
        if let Some((serial, not_after, my_number, instance)) = credential_row {
            extra.push(Store::insert_credential(
                &CredentialRow {
                    op_id: id,
                    iccid: iccid.clone(),
                    party: party.0.clone(),
                    state: "pending".into(),
                    reason: None,
                    serial,
                    not_after,
                    my_number_serial: my_number,
                    instance,
                    deletion_pending: false,
                },
                t,
            ));
        }
        let created = match self.store.create_op(&op, extra).await {
            // Statement 1 is the card check.
            Err(StoreError::Conflict(1)) => {
                return reject(
                    "business.card-not-active",
                    format!("SIM {iccid} is no longer active"),
                );
            }
            r => r?,
        };
        match created {
            Created::New => {
                tracing::info!(op = %id, kind, iccid = %iccid, "operation accepted");
                Ok(ControlResponse::Accepted {
                    op: id,
                    state: op.state,
                    device_ticket: Some(ticket.to_string()),
                    access_code: Some(code.to_string()),
                    expires_at: op.expires_at as u64,
                })
            }
            Created::Existing(e) => self.again(*e, &op.request_hash),
        }
    }

    /// The answer to a request whose idempotency key names an existing operation.
    fn again(&self, existing: OpRow, request_hash: &[u8]) -> Result<ControlResponse> {
        if existing.request_hash != request_hash {
            return Ok(ControlResponse::Rejected(err(
                Layer::Protocol,
                "protocol.idempotency-conflict",
                format!(
                    "the idempotency key is already used for operation {} with another request",
                    existing.id
                ),
            )));
        }
        let secrets = card_wire::content::open(
            &self.config.state_key,
            &existing.id.0,
            &existing.data.sealed_secrets,
        )
        .ok()
        .and_then(|p| {
            let p = zeroize::Zeroizing::new(p);
            tsm_protocol::codec::decode::<Secrets>(&p).ok()
        });
        let live = !existing.state.is_final();
        Ok(ControlResponse::Accepted {
            op: existing.id,
            state: existing.state,
            device_ticket: secrets.as_ref().filter(|_| live).map(|s| s.ticket.clone()),
            access_code: secrets.as_ref().filter(|_| live).map(|s| s.code.clone()),
            expires_at: existing.expires_at as u64,
        })
    }

    async fn revoke(
        &self,
        party: &PartyId,
        credential: &OpId,
        reason: RevokeReason,
    ) -> Result<ControlResponse> {
        let c = match self.store.credential(credential).await? {
            Some(c) if c.party == party.0 => c,
            _ => return Ok(unknown_credential(credential, party)),
        };
        let c = self.revoke_row(c, reason, &party.0).await?;
        Ok(ControlResponse::Credential(self.status_of(&c)))
    }

    /// Revokes a credential at once; a live issuing operation is cancelled; the applet is
    /// deleted from the card the next time one of the provider's sessions reaches it. The
    /// database decides on the rows as they are when this commits, so a download finishing
    /// meanwhile cannot undo it: the revocation always lands.
    async fn revoke_row(
        &self,
        c: CredentialRow,
        reason: RevokeReason,
        actor: &str,
    ) -> Result<CredentialRow> {
        if c.state == "revoked" {
            return Ok(c);
        }
        let t = now();
        let reason_text = match reason {
            RevokeReason::CardLost => "card-lost",
            RevokeReason::Superseded => "superseded",
            RevokeReason::UserRequest => "user-request",
            RevokeReason::Expired => "expired",
        };
        // The credential first, then its operation: the order every writer of both takes.
        self.store
            .commit(vec![
                Store::revoke_credential(&c.op_id, reason_text, t),
                Store::cancel_op(&c.op_id, t),
                Store::audit(&c.op_id, t, actor, "revoked", reason_text),
            ])
            .await?;
        let c =
            self.store.credential(&c.op_id).await?.ok_or_else(|| {
                ServiceError::Store(StoreError::Db("a credential vanished".into()))
            })?;
        tracing::info!(credential = %c.op_id, serial = %c.serial, reason = ?reason, "credential revoked");
        self.write_revocation_list().await?;
        Ok(c)
    }

    /// Rewrites the revocation list file (atomically).
    async fn write_revocation_list(&self) -> Result<()> {
        let Some(path) = &self.config.revocation_list else {
            return Ok(());
        };
        let text = self.revocation_list().await?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| ServiceError::Store(StoreError::Db(format!("{}: {e}", path.display()))))
    }

    /// The revocation list: one serial per line as `0x` hex (what `kagi eligibility read
    /// --revoked` reads).
    pub async fn revocation_list(&self) -> Result<String> {
        let mut text = String::from("# revoked credential serials, kagi TSM\n");
        for s in self.store.revoked_serials().await? {
            text.push_str(&format!("0x{s}\n"));
        }
        Ok(text)
    }

    /// The card `iccid` if operator `party` registered it.
    async fn own_card(&self, party: &PartyId, iccid: &str) -> Result<Option<CardRow>> {
        Ok(self.store.card(iccid).await?.filter(|c| c.mno == party.0))
    }

    async fn mno(&self, party: &PartyId, req: ControlRequest) -> Result<ControlResponse> {
        let t = now();
        let bad_iccid = || {
            Ok(ControlResponse::Rejected(err(
                Layer::Business,
                "business.bad-card",
                "an ICCID (18-20 digits, Luhn) and a hex card image number are needed",
            )))
        };
        let valid = |iccid: &str| card_wire::uicc::Iccid::new(iccid).is_ok();
        match req {
            ControlRequest::RegisterCard {
                iccid,
                cin,
                sd_aid,
                free_memory,
            } => {
                if !valid(&iccid) || hex::decode(&cin).is_err() {
                    return bad_iccid();
                }
                let row = CardRow {
                    iccid: iccid.clone(),
                    cin: cin.to_ascii_uppercase(),
                    sd_aid,
                    free_memory: i64::from(free_memory),
                    state: "active".into(),
                    replaced_by: None,
                    mno: party.0.clone(),
                };
                // Another operator's SIM stays theirs: the write changes no row.
                match self.store.commit(vec![Store::register_card(&row, t)]).await {
                    Ok(()) => {}
                    Err(StoreError::Conflict(_)) => {
                        return Ok(ControlResponse::Rejected(err(
                            Layer::Business,
                            "business.card-taken",
                            format!("SIM {iccid} is registered by another operator"),
                        )));
                    }
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(iccid = %iccid, "card registered");
                Ok(ControlResponse::Ok)
            }
            ControlRequest::SimChanged {
                old_iccid,
                new_iccid,
            } => {
                if !valid(&old_iccid) || !valid(&new_iccid) {
                    return bad_iccid();
                }
                let stmt = Store::mark_card(&old_iccid, &party.0, "replaced", Some(&new_iccid), t);
                match self.store.commit(vec![stmt]).await {
                    Ok(()) => Ok(ControlResponse::Ok),
                    Err(StoreError::Conflict(_)) => Ok(unknown_card(&old_iccid, party)),
                    Err(e) => Err(e.into()),
                }
            }
            ControlRequest::CardLost { iccid } => {
                if !valid(&iccid) {
                    return bad_iccid();
                }
                let stmt = Store::mark_card(&iccid, &party.0, "lost", None, t);
                match self.store.commit(vec![stmt]).await {
                    Ok(()) => {}
                    Err(StoreError::Conflict(_)) => return Ok(unknown_card(&iccid, party)),
                    Err(e) => return Err(e.into()),
                }
                // The card is lost before its credentials are listed, so an operation
                // created meanwhile either failed its card check or is listed here.
                for cred in self.store.credentials_on(&iccid).await? {
                    self.revoke_row(cred, RevokeReason::CardLost, &party.0)
                        .await?;
                }
                Ok(ControlResponse::Ok)
            }
            ControlRequest::CheckEligibility {
                iccid,
                memory_needed,
            } => {
                // Another operator's SIM is as unregistered as an unknown one.
                let (eligible, reason, free) = match self.own_card(party, &iccid).await? {
                    None => (false, "not registered".to_string(), 0),
                    Some(c) if c.state != "active" => {
                        (false, format!("the SIM is {}", c.state), c.free_memory)
                    }
                    Some(c) if c.free_memory < i64::from(memory_needed) => (
                        false,
                        format!("{} bytes free, {memory_needed} needed", c.free_memory),
                        c.free_memory,
                    ),
                    Some(c) => (true, String::new(), c.free_memory),
                };
                Ok(ControlResponse::Eligibility {
                    eligible,
                    reason,
                    free_memory: free.clamp(0, i64::from(u32::MAX)) as u32,
                })
            }
            _ => Ok(ControlResponse::Rejected(err(
                Layer::Protocol,
                "protocol.unsupported",
                "not an operator notice",
            ))),
        }
    }

    // ---------------------------------------------------------------- relay

    /// Handles a relay message.
    pub async fn relay(&self, body: &[u8]) -> Result<Vec<u8>> {
        let msg: AgentMsg = tsm_protocol::codec::decode(body)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let reply = match msg {
            AgentMsg::Hello {
                ticket,
                agent,
                resume,
                credentials,
            } => self.hello(&ticket, &agent, resume, credentials).await?,
            AgentMsg::Credentials {
                session,
                credentials,
            } => self.credentials(session, credentials).await?,
            AgentMsg::Report {
                session,
                seq,
                status,
                results,
            } => self.report(session, seq, status, &results).await?,
        };
        tsm_protocol::codec::encode(&reply).map_err(|e| ServiceError::BadRequest(e.to_string()))
    }

    fn stop(session: SessionId, outcome: StopOutcome, message: impl Into<String>) -> ServerMsg {
        ServerMsg::Stop {
            session,
            outcome,
            message: message.into(),
        }
    }

    /// The stop for an operation that is over.
    fn stop_final(session: SessionId, op: &OpRow) -> ServerMsg {
        let (outcome, msg) = match op.state {
            OpState::Completed => (
                StopOutcome::Completed,
                "the download is complete".to_string(),
            ),
            OpState::Failed => (
                StopOutcome::Failed,
                op.data
                    .error
                    .as_ref()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "the operation failed".into()),
            ),
            OpState::Expired => (
                StopOutcome::Refused,
                "the download has expired: ask the provider again".into(),
            ),
            _ => (StopOutcome::Refused, "the operation was cancelled".into()),
        };
        Self::stop(session, outcome, msg)
    }

    async fn hello(
        &self,
        ticket: &str,
        agent: &str,
        resume: Option<SessionId>,
        credentials: Option<UserCredentials>,
    ) -> Result<ServerMsg> {
        let none = SessionId([0; 16]);
        let Some(mut op) = self
            .store
            .op_by_ticket(&access::ticket_hash(ticket))
            .await?
        else {
            return Ok(Self::stop(
                none,
                StopOutcome::Refused,
                "unknown device ticket",
            ));
        };
        let t = now();
        if !op.state.is_final() && t > op.expires_at {
            op.state = OpState::Expired;
            op.updated_at = t;
            self.store
                .save_op(&op, vec![Store::audit(&op.id, t, "tsm", "expired", "")])
                .await?;
        }
        if op.state.is_final() {
            return Ok(Self::stop_final(none, &op));
        }
        // A ticket binds one session at a time: the same session may be resumed (after a
        // lost connection); a new session (the app restarted) supersedes the old one and
        // must give the access code and password again.
        let resumed = resume.is_some() && resume == op.data.session;
        let session = match resume {
            Some(r) if resumed => r,
            _ => SessionId::random().map_err(|e| ServiceError::BadRequest(e.to_string()))?,
        };
        let last_seq = match self.store.session(&session.to_hex()).await? {
            Some((_, seq, _)) if resumed => seq,
            _ => 0,
        };
        if !resumed {
            op.state = OpState::DeviceBound;
            op.data.session = Some(session);
        }
        op.updated_at = t;
        let mut batch = vec![Store::audit(
            &op.id,
            t,
            "relay",
            if resumed {
                "session-resumed"
            } else {
                "session-opened"
            },
            agent,
        )];
        tracing::info!(op = %op.id, session = %session, resumed, "relay session");
        if resumed && matches!(op.state, OpState::Running | OpState::Interrupted) {
            // A new secure session continues from a probe; order numbers go on.
            return self.start_engine(op, session, last_seq, batch).await;
        }
        match credentials {
            Some(c) if op.state == OpState::DeviceBound => {
                self.check_credentials(op, session, c, batch).await
            }
            _ => {
                let reply = ServerMsg::AskCredentials {
                    session,
                    attempts_left: op.data.attempts_left,
                };
                batch.push(Store::put_session(
                    &session.to_hex(),
                    &op.id,
                    last_seq,
                    encode(&reply)?,
                    t,
                ));
                self.store.save_op(&op, batch).await?;
                Ok(reply)
            }
        }
    }

    /// The operation a relay session is bound to, if the session may act on it in `state`;
    /// otherwise the stop to send.
    async fn bound(
        &self,
        session: SessionId,
        op_id: &OpId,
        state: OpState,
    ) -> Result<std::result::Result<OpRow, ServerMsg>> {
        let Some(op) = self.store.op(op_id).await? else {
            return Ok(Err(Self::stop(
                session,
                StopOutcome::Refused,
                "unknown session",
            )));
        };
        if op.state.is_final() {
            return Ok(Err(Self::stop_final(session, &op)));
        }
        if op.data.session != Some(session) {
            return Ok(Err(Self::stop(
                session,
                StopOutcome::Refused,
                "a newer session took over this download",
            )));
        }
        if op.state != state {
            return Ok(Err(Self::stop(
                session,
                StopOutcome::Interrupted,
                format!(
                    "the operation is {}, not {}: open the session again",
                    op.state.name(),
                    state.name()
                ),
            )));
        }
        Ok(Ok(op))
    }

    async fn credentials(&self, session: SessionId, creds: UserCredentials) -> Result<ServerMsg> {
        let Some((op_id, _, _)) = self.store.session(&session.to_hex()).await? else {
            return Ok(Self::stop(session, StopOutcome::Refused, "unknown session"));
        };
        match self.bound(session, &op_id, OpState::DeviceBound).await? {
            Ok(op) => self.check_credentials(op, session, creds, Vec::new()).await,
            Err(stop) => Ok(stop),
        }
    }

    fn grant(op: &OpRow) -> Option<&tsm_protocol::control::AccessGrant> {
        match &op.data.request {
            ControlRequest::Issue { access, .. }
            | ControlRequest::Transfer { access, .. }
            | ControlRequest::ResetPin { access, .. }
            | ControlRequest::WalletUpdate { access, .. }
            | ControlRequest::CreateSecurityDomain { access, .. } => Some(access),
            _ => None,
        }
    }

    async fn check_credentials(
        &self,
        mut op: OpRow,
        session: SessionId,
        creds: UserCredentials,
        mut batch: Vec<Stmt>,
    ) -> Result<ServerMsg> {
        let t = now();
        let Some(grant) = Self::grant(&op).cloned() else {
            return Ok(Self::stop(
                session,
                StopOutcome::Refused,
                "this operation takes no credentials",
            ));
        };
        if op.data.attempts_left == 0 {
            return Ok(Self::stop(
                session,
                StopOutcome::Refused,
                "too many wrong entries: the download is locked",
            ));
        }
        // An entry is checked only after the attempt it spends is written (compare-and-swap
        // on the operation): racing entries cannot check more than the attempts left, and a
        // crash after the check costs the attempt rather than giving it back.
        op.data.attempts_left -= 1;
        op.updated_at = t;
        self.store.save_op(&op, std::mem::take(&mut batch)).await?;
        op.version += 1;
        self.entry_checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !access::check_entries(&op.id, &op.data.code_hash, &grant, &creds) {
            let left = op.data.attempts_left;
            let reply = if left == 0 {
                op.state = OpState::Failed;
                op.data.error = Some(err(
                    Layer::Business,
                    "business.locked",
                    "too many wrong access codes or passwords: the provider must start again",
                ));
                Self::stop(
                    session,
                    StopOutcome::Refused,
                    "too many wrong entries: the download is locked",
                )
            } else {
                ServerMsg::AskCredentials {
                    session,
                    attempts_left: left,
                }
            };
            batch.push(Store::put_session(
                &session.to_hex(),
                &op.id,
                0,
                encode(&reply)?,
                t,
            ));
            batch.push(Store::audit(
                &op.id,
                t,
                "relay",
                "wrong-entries",
                &format!("{left} left"),
            ));
            if left == 0 {
                // The lock: only a cancellation or expiry can have changed the operation
                // since the attempt was spent (no attempt is left to spend).
                self.store.save_op(&op, batch).await?;
            } else {
                // The attempt is already counted: the answer and the audit event need no
                // compare-and-swap (racing entries spend their attempts meanwhile).
                self.store.commit(batch).await?;
            }
            tracing::warn!(op = %op.id, left, "wrong access code or password");
            return Ok(reply);
        }
        // Right: the attempt is given back with the move to running.
        op.data.attempts_left += 1;
        op.state = OpState::Running;
        op.updated_at = t;
        batch.push(Store::audit(&op.id, t, "relay", "authorised", ""));
        self.start_engine(op, session, 0, batch).await
    }

    /// The plan of an operation: what its provider's domain on the card must hold, with the
    /// deletions of the provider's revoked applets on that card riding along.
    async fn plan(
        &self,
        op: &OpRow,
    ) -> Result<std::result::Result<(Plan, Arc<dyn CardKeys>, Vec<OpId>), ErrorReport>> {
        if let ControlRequest::CreateSecurityDomain { .. } = &op.data.request {
            return self.domain_plan(op).await;
        }
        let party = PartyId(op.party.clone());
        let Some(p) = self.config.providers.get(&party) else {
            return Ok(Err(err(
                Layer::Tsm,
                "tsm.unknown-provider",
                "no keys for the provider",
            )));
        };
        let Some(card) = self.store.card(&op.iccid).await? else {
            return Ok(Err(err(
                Layer::Business,
                "business.unknown-card",
                "the SIM is not registered",
            )));
        };
        let mut goals = match &op.data.request {
            ControlRequest::Issue {
                applet, credential, ..
            } => recipes::jpki_credential(&applet.instance, &p.content_key, credential),
            ControlRequest::Transfer {
                credential: old,
                new_credential,
                ..
            } => {
                let instance = self
                    .store
                    .credential(old)
                    .await?
                    .map(|c| c.instance)
                    .unwrap_or_else(|| jpki::JPKI_AID.to_vec());
                recipes::jpki_credential(&instance, &p.content_key, new_credential)
            }
            ControlRequest::ResetPin {
                credential,
                sealed_pin,
                ..
            } => {
                let Some(issue) = self.store.op(credential).await? else {
                    return Ok(Err(err(
                        Layer::Business,
                        "business.unknown-credential",
                        "no such credential",
                    )));
                };
                let Some(bundle) = credential_of(&issue.data.request) else {
                    return Ok(Err(err(
                        Layer::Business,
                        "business.unknown-credential",
                        "no such credential",
                    )));
                };
                let instance = self
                    .store
                    .credential(credential)
                    .await?
                    .map(|c| c.instance)
                    .unwrap_or_else(|| jpki::JPKI_AID.to_vec());
                recipes::pin_reset(&instance, sealed_pin, &bundle.certificate)
            }
            ControlRequest::WalletUpdate {
                instance, updates, ..
            } => recipes::wallet(instance, updates),
            _ => Vec::new(),
        };
        // The provider's revoked applets still on this card go now.
        let mut deletions = Vec::new();
        for c in self.store.credentials_on(&op.iccid).await? {
            if c.deletion_pending && c.party == op.party {
                let keep = goals
                    .iter()
                    .any(|g| matches!(g, Goal::Instance(s) if s.instance == c.instance));
                if !keep {
                    goals.insert(
                        0,
                        Goal::Absent {
                            aid: c.instance.clone(),
                            related: false,
                        },
                    );
                }
                deletions.push(c.op_id);
            }
        }
        Ok(Ok((
            Plan {
                op: op.id,
                sd_aid: if card.sd_aid.is_empty() {
                    p.sd_aid.clone()
                } else {
                    card.sd_aid.clone()
                },
                kvn: p.kvn,
                expected_cin: card.cin.clone(),
                goals,
                new_keys: None,
                fallback: None,
            },
            p.keys.clone(),
            deletions,
        )))
    }

    /// Creating a provider's domain (the MNO-TSM's part): phase 0 installs it through the
    /// issuer domain; phase 1 opens it with its initial keys (a copy of the issuer's) and
    /// replaces them with the provider's — or, when that already happened, finds the
    /// provider's keys in place.
    async fn domain_plan(
        &self,
        op: &OpRow,
    ) -> Result<std::result::Result<(Plan, Arc<dyn CardKeys>, Vec<OpId>), ErrorReport>> {
        let ControlRequest::CreateSecurityDomain {
            sd_aid,
            privileges,
            provider,
            ..
        } = &op.data.request
        else {
            return Ok(Err(err(Layer::Tsm, "tsm.script", "not a domain creation")));
        };
        let (Some(mno), Some(p)) = (
            self.config.operators.get(&PartyId(op.party.clone())),
            self.config.providers.get(provider),
        ) else {
            return Ok(Err(err(
                Layer::Tsm,
                "tsm.keys",
                "no keys for the operator or provider",
            )));
        };
        let Some(card) = self.store.card(&op.iccid).await? else {
            return Ok(Err(err(
                Layer::Business,
                "business.unknown-card",
                "the SIM is not registered",
            )));
        };
        let mut plan = Plan {
            op: op.id,
            sd_aid: mno.isd_aid.clone(),
            kvn: mno.kvn,
            expected_cin: card.cin.clone(),
            goals: vec![recipes::provider_domain(sd_aid, privileges)],
            new_keys: None,
            fallback: None,
        };
        if op.data.phase >= 1 {
            let provider_keys = tsm_protocol::script::KeySet {
                source: p.keys.clone(),
                kvn: p.kvn,
            };
            plan.sd_aid = sd_aid.clone();
            plan.goals = vec![Goal::ReplaceKeys { replace: mno.kvn }];
            plan.new_keys = Some(provider_keys.clone());
            plan.fallback = Some(provider_keys);
        }
        Ok(Ok((plan, mno.keys.clone(), Vec::new())))
    }

    /// A new engine for the operation's plan, and its first order (`seq` + 1).
    async fn start_engine(
        &self,
        op: OpRow,
        session: SessionId,
        seq: i64,
        batch: Vec<Stmt>,
    ) -> Result<ServerMsg> {
        let (plan, keys, deletions) = match self.plan(&op).await? {
            Ok(p) => p,
            Err(e) => return self.finish_failed(op, session, e, batch).await,
        };
        let mut engine = Engine::new(plan, keys, op.data.proof_nonce);
        let next = engine.open();
        let running = Running {
            op: op.id,
            engine,
            deletions,
        };
        self.advance(op, session, seq, running, next, batch).await
    }

    async fn report(
        &self,
        session: SessionId,
        seq: u32,
        status: tsm_protocol::relay::AgentStatus,
        results: &[tsm_protocol::relay::BatchResult],
    ) -> Result<ServerMsg> {
        let Some((op_id, last_seq, reply)) = self.store.session(&session.to_hex()).await? else {
            return Ok(Self::stop(session, StopOutcome::Refused, "unknown session"));
        };
        let seq = i64::from(seq);
        if seq + 1 == last_seq {
            // The report of an order already answered: the same answer again (exactly once).
            return tsm_protocol::codec::decode(&reply)
                .map_err(|e| ServiceError::BadRequest(e.to_string()));
        }
        if seq != last_seq {
            return Ok(Self::stop(
                session,
                StopOutcome::Interrupted,
                "report out of sequence",
            ));
        }
        let op = match self.bound(session, &op_id, OpState::Running).await? {
            Ok(op) => op,
            Err(stop) => return Ok(stop),
        };
        let running = self
            .engines
            .lock()
            .map_err(|_| ServiceError::BadRequest("engine lock poisoned".into()))?
            .remove(&session);
        match running {
            Some(mut r) if r.op == op.id => {
                let next = r.engine.on_report(status, results);
                self.advance(op, session, seq, r, next, Vec::new()).await
            }
            // This process has no secure session for it (a restart, another instance): a new
            // session and a new probe continue the operation.
            _ => {
                tracing::info!(op = %op.id, session = %session, "no live secure session here: re-opening");
                self.start_engine(op, session, seq, Vec::new()).await
            }
        }
    }

    /// Persists what the engine decided, then answers.
    async fn advance(
        &self,
        mut op: OpRow,
        session: SessionId,
        seq: i64,
        running: Running,
        next: Next,
        mut batch: Vec<Stmt>,
    ) -> Result<ServerMsg> {
        let t = now();
        match next {
            Next::Order(cmds) => {
                let order = ServerMsg::Order {
                    session,
                    seq: (seq + 1) as u32,
                    delay_ms: 0,
                    cmds,
                };
                let bytes = tsm_protocol::codec::encode(&order)
                    .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
                op.state = OpState::Running;
                op.updated_at = t;
                // Written before it is sent: a report for it finds the session where it left.
                batch.push(Store::put_session(
                    &session.to_hex(),
                    &op.id,
                    seq + 1,
                    bytes,
                    t,
                ));
                self.store.save_op(&op, batch).await?;
                self.engines
                    .lock()
                    .map_err(|_| ServiceError::BadRequest("engine lock poisoned".into()))?
                    .insert(session, running);
                Ok(order)
            }
            Next::Done(_) if op.kind == "create-sd" && op.data.phase == 0 => {
                // The domain exists: now its keys, in a session of its own.
                op.data.phase = 1;
                batch.push(Store::audit(&op.id, t, "tsm", "domain-installed", ""));
                Box::pin(self.start_engine(op, session, seq, batch)).await
            }
            Next::Done(evidence) => {
                self.finish_done(op, session, seq, &running, *evidence, batch)
                    .await
            }
            Next::Failed(e) => self.finish_failed(op, session, e, batch).await,
            Next::Interrupted(e) => {
                op.state = OpState::Interrupted;
                op.updated_at = t;
                let stop = Self::stop(session, StopOutcome::Interrupted, e.detail.clone());
                batch.push(Store::put_session(
                    &session.to_hex(),
                    &op.id,
                    seq + 1,
                    encode(&stop)?,
                    t,
                ));
                batch.push(Store::audit(&op.id, t, "tsm", "interrupted", &e.code));
                self.store.save_op(&op, batch).await?;
                tracing::warn!(op = %op.id, code = %e.code, "operation interrupted");
                Ok(stop)
            }
        }
    }

    async fn finish_failed(
        &self,
        mut op: OpRow,
        session: SessionId,
        e: ErrorReport,
        mut batch: Vec<Stmt>,
    ) -> Result<ServerMsg> {
        let t = now();
        op.state = OpState::Failed;
        op.updated_at = t;
        op.data.error = Some(e.clone());
        batch.push(Store::audit(&op.id, t, "tsm", "failed", &e.code));
        // A pending credential fails with it (a revoked one stays revoked); the credential
        // first, then the operation: the order every writer of both takes.
        let mut all = vec![Store::credential_state(&op.id, "pending", "failed", t)];
        all.push(Store::update_op(&op)?);
        all.extend(batch);
        self.store.commit(all).await?;
        tracing::warn!(op = %op.id, code = %e.code, detail = %e.detail, "operation failed");
        Ok(Self::stop(session, StopOutcome::Failed, e.to_string()))
    }

    async fn finish_done(
        &self,
        mut op: OpRow,
        session: SessionId,
        seq: i64,
        running: &Running,
        ev: Evidence,
        mut batch: Vec<Stmt>,
    ) -> Result<ServerMsg> {
        let t = now();
        let cert = credential_of(&op.data.request).map(|c| c.certificate.clone());
        let my_number = credential_of(&op.data.request)
            .map(|c| c.my_number_sign_serial.clone())
            .unwrap_or_default();
        let (key_proof, nonce) = ev.key_proof.clone().unwrap_or_default();
        let receipt = ExecutionReceipt {
            op: op.id,
            kind: op.kind.clone(),
            request: op.data.request_id,
            iccid: op.iccid.clone(),
            cin: ev.cin.clone(),
            certificate_sha256: cert
                .as_deref()
                .map(|c| Sha256::digest(c).into())
                .unwrap_or([0; 32]),
            my_number_sign_serial: my_number,
            key_proof_nonce: nonce,
            key_proof,
            steps: ev
                .steps
                .iter()
                .map(|s| StepRecord {
                    name: s.name.clone(),
                    command_sha256: s.command_sha256,
                    sw: s.sw,
                })
                .collect(),
            completed_at: t as u64,
        };
        let h = self
            .config
            .signer
            .header(
                Kind::Receipt,
                &PartyId(op.party.clone()),
                t as u64,
                86_400_000,
            )
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let sealed = self
            .config
            .signer
            .seal(h, &receipt)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        op.state = OpState::Completed;
        op.updated_at = t;
        op.data.receipt = Some(sealed);
        op.data.steps = ev.steps.iter().map(|s| s.name.clone()).collect();
        op.data.cin = ev.cin.clone();
        // The one-time code is consumed only now, at completion.
        op.data.code_hash = [0; 32];
        op.data.sealed_secrets.clear();
        let stop = Self::stop(session, StopOutcome::Completed, "the download is complete");
        let bytes = tsm_protocol::codec::encode(&stop)
            .map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        batch.extend([
            Store::put_session(&session.to_hex(), &op.id, seq + 1, bytes, t),
            // The device ticket is spent.
            crate::store::Stmt::any(
                "DELETE FROM tickets WHERE op_id = $1",
                vec![op.id.to_hex().into()],
            ),
            Store::audit(
                &op.id,
                t,
                "tsm",
                "completed",
                &format!(
                    "{} card commands, {} secure session(s)",
                    ev.steps.len(),
                    ev.sessions
                ),
            ),
        ]);
        // Credentials first, then the operation (compare-and-swap: a cancellation or
        // revocation that landed first wins and nothing here is written), then the card.
        let mut all = vec![Store::credential_state(&op.id, "pending", "active", t)];
        for d in &running.deletions {
            all.push(Store::credential_deleted(d, t));
            batch.push(Store::audit(
                d,
                t,
                "tsm",
                "deleted-from-card",
                &op.id.to_hex(),
            ));
        }
        all.push(Store::update_op(&op)?);
        if let ControlRequest::CreateSecurityDomain { sd_aid, .. } = &op.data.request {
            batch.push(Store::set_card_domain(&op.iccid, sd_aid, t));
        }
        all.extend(batch);
        self.store.commit(all).await?;
        tracing::info!(op = %op.id, kind = %op.kind, sessions = ev.sessions, "operation completed");
        // A transfer completes by revoking the credential it replaces.
        if let ControlRequest::Transfer { credential, .. } = &op.data.request
            && let Some(old) = self.store.credential(credential).await?
        {
            self.revoke_row(old, RevokeReason::Superseded, &op.party)
                .await?;
        }
        Ok(stop)
    }

    /// Marks operations past their time as expired; forgets old replay entries.
    pub async fn sweep(&self) -> Result<usize> {
        let t = now();
        let rows = self
            .store
            .query(
                "SELECT id FROM ops WHERE expires_at < $1 AND state IN ('awaiting-device', 'device-bound', 'interrupted')",
                vec![t.into()],
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
                && matches!(
                    op.state,
                    OpState::AwaitingDevice | OpState::DeviceBound | OpState::Interrupted
                )
                && op.expires_at < t
            {
                op.state = OpState::Expired;
                op.updated_at = t;
                let batch = vec![
                    Store::credential_state(&id, "pending", "expired", t),
                    Store::update_op(&op)?,
                    Store::audit(&id, t, "tsm", "expired", ""),
                ];
                match self.store.commit(batch).await {
                    Ok(()) => n += 1,
                    Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        self.store.purge_replay(t).await?;
        Ok(n)
    }
}

/// The canonical encoding of a relay message.
fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>> {
    tsm_protocol::codec::encode(v).map_err(|e| ServiceError::BadRequest(e.to_string()))
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
        | ControlRequest::Transfer { card, .. }
        | ControlRequest::WalletUpdate { card, .. } => Some(card),
        _ => None,
    }
}
