//! A running session: the relay's reports fed to the engine, the next orders, and the end
//! of an operation (failed, or done with its receipt).

use crate::store::ops::OpRow;
use crate::store::{Stmt, Store};
use sha2::{Digest, Sha256};
use tsm_protocol::control::{ControlRequest, OpState, PREPARE_SIM};
use tsm_protocol::receipt::{ExecutionReceipt, StepRecord};
use tsm_protocol::relay::{ServerMsg, StopOutcome};
use tsm_protocol::script::{Evidence, Next};
use tsm_protocol::signing::Kind;
use tsm_protocol::{ErrorReport, PartyId, SessionId};

use super::{Result, Running, ServiceError, Tsm, credential_of, encode, now};

impl Tsm {
    pub(super) async fn report(
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
            return tsm_protocol::codec::decode(&reply).map_err(|e| {
                ServiceError::Store(crate::store::StoreError::Db(format!(
                    "a stored session answer does not decode: {e}"
                )))
            });
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
            .map_err(|_| ServiceError::Poisoned)?
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
    pub(super) async fn advance(
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
                let bytes = tsm_protocol::codec::encode(&order)?;
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
                    .map_err(|_| ServiceError::Poisoned)?
                    .insert(session, running);
                Ok(order)
            }
            Next::Done(_)
                if (op.kind == "create-sd" || op.kind == PREPARE_SIM) && op.data.phase == 0 =>
            {
                // The domain exists: now its keys, in a session of its own.
                op.data.phase = 1;
                batch.push(Store::audit(&op.id, t, "tsm", "domain-installed", ""));
                Box::pin(self.start_engine(op, session, seq, batch)).await
            }
            Next::Done(evidence)
                if matches!(
                    op.data.request,
                    ControlRequest::Apply { .. } | ControlRequest::ApplyTransfer { .. }
                ) =>
            {
                // The on-card mode's first session: the SIM made the key.
                Box::pin(self.certify_on_card(op, session, seq, *evidence, batch)).await
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

    pub(super) async fn finish_failed(
        &self,
        mut op: OpRow,
        session: SessionId,
        e: ErrorReport,
        mut batch: Vec<Stmt>,
    ) -> Result<ServerMsg> {
        let t = now();
        // An on-card key's challenge, if one was pending, is of no use any more.
        batch.push(Store::drop_challenge(&op.id));
        op.state = OpState::Failed;
        op.updated_at = t;
        op.data.error = Some(e.clone());
        batch.push(Store::audit(&op.id, t, "tsm", "failed", &e.code));
        // A pending credential fails with it (a revoked one stays revoked); the credential
        // first, then the operation: the order every writer of both takes.
        let mut all = vec![Store::credential_state(&op.id, "pending", "failed", t)];
        all.push(Store::update_op(&op)?);
        all.extend(batch);
        all.push(Store::erase_sealed_if_over(&op.id));
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
        // The operation as it was, should a racing transfer void this one.
        let before = op.clone();
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
        let h = self.config.signer.header(
            Kind::Receipt,
            &PartyId(op.party.clone()),
            t as u64,
            86_400_000,
        )?;
        let sealed = self.config.signer.seal(h, &receipt)?;
        op.state = OpState::Completed;
        op.updated_at = t;
        op.data.receipt = Some(sealed.clone());
        op.data.steps = ev.steps.iter().map(|s| s.name.clone()).collect();
        op.data.cin = ev.cin.clone();
        // The one-time code is consumed only now, at completion.
        op.data.code_hash = [0; 32];
        op.data.sealed_secrets.clear();
        let mut stop = Self::stop(session, StopOutcome::Completed, "the download is complete");
        Self::with_receipt(&mut stop, &op, Some(&sealed));
        let bytes = tsm_protocol::codec::encode(&stop)?;
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
        // A transfer revokes the credential it replaces in this transaction, if that one is
        // still active (`transfer`): the statement at `guard` decides a race.
        let guard = all.len();
        let mut superseded = None;
        if let ControlRequest::Transfer { credential, .. } = &op.data.request
            && let Some(old) = self.store.credential(credential).await?
        {
            let (stmts, w) = self.supersede(&old, &op.party, t);
            all.extend(stmts);
            superseded = Some((old, w));
        }
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
        // The registry records the provider's domain the operation made on the SIM.
        if let ControlRequest::CreateSecurityDomain { sd_aid, .. }
        | ControlRequest::PrepareSim { sd_aid, .. } = &op.data.request
        {
            batch.push(Store::set_card_domain(&op.iccid, sd_aid, t));
        }
        // A retire operation: the provider's domain is gone from the SIM.
        if op.kind == super::retire::KIND {
            let deletions = ev
                .steps
                .iter()
                .filter(|s| s.name.starts_with("delete:"))
                .count();
            batch.extend(Self::retired_audit(&op, deletions, t));
        }
        all.extend(batch);
        all.push(Store::erase_sealed_if_over(&op.id));
        match self.store.commit(all).await {
            Ok(()) => {}
            Err(crate::store::StoreError::Conflict(i)) if superseded.is_some() && i == guard => {
                // Another transfer (or a revocation) of the credential won: this one is void.
                let e = ErrorReport::new(
                    tsm_protocol::Layer::Business,
                    "business.superseded-meanwhile",
                    false,
                    "the credential was moved or revoked meanwhile: this transfer is void and its certificate is withdrawn",
                );
                return self.finish_failed(before, session, e, Vec::new()).await;
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(op = %op.id, kind = %op.kind, sessions = ev.sessions, "operation completed");
        if let Some((old, w)) = superseded {
            self.superseded(&old, w).await?;
        }
        Ok(stop)
    }
}
