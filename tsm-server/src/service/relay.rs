//! The relay endpoint: a phone app's hello with its device ticket, the user's access code
//! and password (attempts counted before they are checked), and the stops that end a
//! session.

use crate::store::ops::OpRow;
use crate::store::{Stmt, Store};
use tsm_protocol::access;
use tsm_protocol::control::{ControlRequest, GrantVerifier, OpState, PREPARE_SIM};
use tsm_protocol::relay::{AgentMsg, PasswordEntry, ServerMsg, StopOutcome, UserCredentials};
use tsm_protocol::{Layer, OpId, Sealed, SessionId};

use super::{Result, ServiceError, Tsm, encode, err, now};

impl Tsm {
    /// Handles a relay message.
    pub async fn relay(&self, body: &[u8]) -> Result<Vec<u8>> {
        let msg: AgentMsg =
            tsm_protocol::codec::decode(body).map_err(|e| ServiceError::BadRequest(e.into()))?;
        let reply = match msg {
            AgentMsg::Hello {
                ticket,
                agent,
                resume,
                credentials,
                prepared,
            } => {
                self.hello(&ticket, &agent, resume, credentials, prepared)
                    .await?
            }
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
        Ok(tsm_protocol::codec::encode(&reply)?)
    }

    pub(super) fn stop(
        session: SessionId,
        outcome: StopOutcome,
        message: impl Into<String>,
    ) -> ServerMsg {
        ServerMsg::Stop {
            session,
            outcome,
            message: message.into(),
            receipt: None,
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
        let mut stop = Self::stop(session, outcome, msg);
        Self::with_receipt(&mut stop, op, op.data.receipt.as_ref());
        stop
    }

    /// A completed SIM preparation's stop carries its signed receipt: the relay hands it
    /// to the SP-TSM, which checks it instead of asking (`Tsm::after_mno`).
    pub(super) fn with_receipt(stop: &mut ServerMsg, op: &OpRow, sealed: Option<&Sealed>) {
        if let ServerMsg::Stop {
            outcome: StopOutcome::Completed,
            receipt,
            ..
        } = stop
            && op.kind == PREPARE_SIM
        {
            *receipt = sealed.cloned();
        }
    }

    async fn hello(
        &self,
        ticket: &str,
        agent: &str,
        resume: Option<SessionId>,
        credentials: Option<UserCredentials>,
        prepared: Option<Sealed>,
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
            _ => SessionId::random()?,
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
            // A new secure session continues from a probe; order numbers go on. Back from
            // the MNO-TSM, with its receipt for the SIM's preparation (checked there).
            return self
                .start_engine_relayed(op, session, last_seq, batch, prepared.as_ref())
                .await;
        }
        if op.kind == PREPARE_SIM || op.kind == super::retire::KIND {
            // The MNO-TSM's part of a download: the ticket alone opens it (it reached the
            // phone only through the SP-TSM, which checked the user's entries); the same for
            // a retire operation's (it reached the phone only through the operator).
            op.state = OpState::Running;
            batch.push(Store::audit(&op.id, t, "relay", "authorised", "ticket"));
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
                    derive: Self::derivation(&op),
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
    pub(super) async fn bound(
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
            | ControlRequest::Apply { access, .. }
            | ControlRequest::ApplyTransfer { access, .. }
            | ControlRequest::Transfer { access, .. }
            | ControlRequest::ResetPin { access, .. }
            | ControlRequest::WalletUpdate { access, .. }
            | ControlRequest::CreateSecurityDomain { access, .. } => Some(access),
            _ => None,
        }
    }

    /// What the app derives the password with, for a server-relief grant.
    fn derivation(op: &OpRow) -> Option<tsm_protocol::relief::Derivation> {
        Self::grant(op).and_then(|g| g.password.derivation().cloned())
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
        let (id, code_hash, policy) = (op.id, op.data.code_hash, self.password_policy);
        let relieved = matches!(
            (&grant.password, &creds.password),
            (GrantVerifier::Argon2idRelief(_), PasswordEntry::Derived(_))
        );
        let ok = if relieved {
            // The device did the Argon2id work: a digest and a comparison.
            access::check_entries(&id, &code_hash, &grant, &creds, &policy)
        } else {
            // Argon2id takes tens of milliseconds: off the async runtime.
            tokio::task::spawn_blocking(move || {
                access::check_entries(&id, &code_hash, &grant, &creds, &policy)
            })
            .await
            .map_err(|e| ServiceError::Hashing(e.to_string()))?
        };
        if !ok {
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
                    derive: Self::derivation(&op),
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
        if self.needs_mno(&op) && op.data.phase == 0 {
            return self.continue_at_mno(op, session, batch).await;
        }
        self.start_engine(op, session, 0, batch).await
    }
}
