//! The control API: signed requests in, signed answers out; the providers' requests
//! (status, operations, cancellation, revocation) and the revocation list.

use crate::refusals::{REQUEST_REFUSED, Refusal};
use crate::store::ops::{CardRow, CredentialRow, OpRow};
use crate::store::{Store, StoreError};
use tsm_protocol::control::{
    ControlRequest, ControlResponse, CredentialStatus, PREPARE_SIM, RevokeReason,
};
use tsm_protocol::signing::{self};
use tsm_protocol::{ErrorReport, Layer, OpId, PartyId};

use super::{
    Result, Secrets, ServiceError, Tsm, err, now, unknown_credential, unknown_operation, view,
};

impl Tsm {
    /// Handles a signed control request; the answer is signed. A request refused at the
    /// signed-message layer (forged, unknown signer, expired, from the future, replayed, not
    /// a message at all) leaves a bounded `request-refused` audit event ([`crate::refusals`]).
    pub async fn control(&self, body: &[u8]) -> Result<Vec<u8>> {
        let received = signing::receive_request::<ControlRequest>(
            body,
            &self.config.trust,
            &self.config.policy,
            now() as u64,
        );
        let (header, verified) = match received {
            Ok(r) => r,
            Err(e) => {
                let e = signing::ProtocolError::from(e);
                self.audit_refusal(Refusal::new(REQUEST_REFUSED, None, &e, &self.config.trust))
                    .await;
                return Err(ServiceError::BadRequest(e));
            }
        };
        let answer = match verified {
            Err(e) => {
                tracing::warn!(sender = %crate::refusals::sanitise(&header.sender.0), error = %e, "control request refused");
                self.audit_refusal(Refusal::new(
                    REQUEST_REFUSED,
                    Some(&header),
                    &e,
                    &self.config.trust,
                ))
                .await;
                ControlResponse::Rejected(ErrorReport::from(&e))
            }
            Ok(env) => {
                let h = &env.header;
                let keep = h.expires_at.saturating_add(self.config.policy.max_skew_ms) as i64;
                if !self.store.first_seen(&h.sender.0, &h.msg_id, keep).await? {
                    let e = signing::ProtocolError::Replayed(h.msg_id, h.sender.clone());
                    tracing::warn!(sender = %h.sender, "replayed control request");
                    self.audit_refusal(Refusal::new(
                        REQUEST_REFUSED,
                        Some(h),
                        &e,
                        &self.config.trust,
                    ))
                    .await;
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
            .map_err(ServiceError::from)
    }

    /// Audits a refused signed message in this TSM's database ([`crate::refusals`]).
    pub(super) async fn audit_refusal(&self, refusal: Refusal) {
        refusal
            .record(&self.refusal_gate, &self.store, now(), true)
            .await;
    }

    /// Writes the refusals counted in memory and not yet in the trail (the sweep does this
    /// every few seconds).
    pub async fn flush_refusals(&self) {
        self.refusal_gate.flush(&self.store, now(), true).await;
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
            // An SP-TSM asks the MNO-TSM (this one holds issuer-domain keys) to prepare a SIM.
            (ControlRequest::PrepareSim { .. }, "tsm") if !self.config.operators.is_empty() => {
                self.create(h, req).await
            }
            (ControlRequest::CardRecord { iccid }, "tsm") if !self.config.operators.is_empty() => {
                self.card_record(party, iccid).await
            }
            (ControlRequest::DeleteProviderDomain { .. }, "tsm")
                if !self.config.operators.is_empty() =>
            {
                self.delete_domain(h, req).await
            }
            (ControlRequest::DeleteProviderDomain { .. }, _) => reject(
                "business.not-an-mno-tsm",
                format!(
                    "{party} may not ask for a domain deletion here (only an SP-TSM, at an MNO-TSM)"
                ),
            ),
            (ControlRequest::CardRecord { .. }, _) => reject(
                "business.not-an-mno-tsm",
                format!(
                    "{party} may not read the SIM registry here (only an SP-TSM, at an MNO-TSM)"
                ),
            ),
            (ControlRequest::PrepareSim { .. }, _) => reject(
                "business.not-an-mno-tsm",
                format!(
                    "{party} may not ask for a SIM preparation here (only an SP-TSM, at an MNO-TSM)"
                ),
            ),
            (ControlRequest::CreateSecurityDomain { .. }, "mno") => self.create(h, req).await,
            // An operator asks its MNO-TSM for the ticket that deletes a provider's domain on
            // an old SIM (`retire`).
            (ControlRequest::RetireTicket { iccid }, "mno")
                if !self.config.operators.is_empty() =>
            {
                self.retire_ticket(party, h, iccid).await
            }
            (ControlRequest::RetireTicket { .. }, _) => reject(
                "business.not-an-operator",
                format!(
                    "{party} may not ask for a retire ticket here (only an operator, at its MNO-TSM)"
                ),
            ),
            // An SP-TSM hears of a lost or changed SIM from its MNO-TSM (`sim_notice`).
            (ControlRequest::SimChanged { .. } | ControlRequest::CardLost { .. }, "tsm")
                if self.config.mno.iter().any(|m| &m.party == party) =>
            {
                self.sim_notice(party, req).await
            }
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
            // With a JPKI issuer, a PIN is reset only on the holder's fresh signature.
            ControlRequest::ResetPin { .. } if self.config.issuer.is_some() => {
                Ok(ControlResponse::Rejected(err(
                    Layer::Business,
                    "business.pin-reset-needs-signature",
                    "this SP-TSM resets a PIN only on the holder's fresh pin-reset application (kagi jpki apply --kind pin-reset; kagi tsm provider apply-pin-reset)",
                )))
            }
            ControlRequest::Issue { .. }
            | ControlRequest::Apply { .. }
            | ControlRequest::ApplyPinReset { .. }
            | ControlRequest::ApplyTransfer { .. }
            | ControlRequest::ResetPin { .. }
            | ControlRequest::WalletUpdate { .. }
            | ControlRequest::Transfer { .. } => self.create(h, req).await,
            ControlRequest::Revoke { credential, reason } => {
                self.revoke(party, &credential, reason).await
            }
            ControlRequest::Suspend { credential, hold } => {
                self.suspend(party, &credential, hold).await
            }
            ControlRequest::CheckStatus { credential } => {
                match self.store.credential(&credential).await? {
                    Some(c) if c.party == party.0 => {
                        // Revoked at the JPKI issuer (linked revocation): revoked here too.
                        // Suspended at the issuer: `suspended`.
                        Ok(ControlResponse::Credential(self.checked_status(c).await?))
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
                                Store::audit_cancelled(&o.id, t, &party.0),
                                Store::erase_sealed_if_over(&o.id),
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
            ControlRequest::CardCertificate { iccid } => {
                if !self.config.providers.contains_key(party) {
                    return Ok(ControlResponse::Rejected(err(
                        Layer::Business,
                        "business.unknown-provider",
                        format!("this TSM holds no security-domain keys for {party}"),
                    )));
                }
                self.refresh_card(&iccid).await?;
                match self.store.card_certificate(&iccid).await? {
                    Some(certificate) => {
                        Ok(ControlResponse::CardCertificate { iccid, certificate })
                    }
                    None => Ok(ControlResponse::Rejected(err(
                        Layer::Business,
                        "business.no-card-certificate",
                        format!(
                            "SIM {iccid} has no registered key agreement certificate: the operator registers it with the SIM (register-card --card-certificate)"
                        ),
                    ))),
                }
            }
            _ => Ok(ControlResponse::Rejected(err(
                Layer::Protocol,
                "protocol.unsupported",
                "not a provider request",
            ))),
        }
    }

    pub(super) fn status_of(&self, c: &CredentialRow) -> CredentialStatus {
        let reason = c.reason.as_deref().and_then(|r| match r {
            "card-lost" => Some(RevokeReason::CardLost),
            "superseded" => Some(RevokeReason::Superseded),
            "user-request" => Some(RevokeReason::UserRequest),
            "expired" => Some(RevokeReason::Expired),
            "sign-revoked" => Some(RevokeReason::SignatureRevoked),
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

    /// The answer to a request whose idempotency key names an existing operation.
    pub(super) fn again(&self, existing: OpRow, request_hash: &[u8]) -> Result<ControlResponse> {
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
        let secrets = card_wire::state_seal::open(
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
        if existing.kind == PREPARE_SIM {
            let ticket = secrets.as_ref().filter(|_| live).map(|s| s.ticket.clone());
            return Ok(self.prepared(
                &existing.id,
                existing.state,
                ticket,
                existing.expires_at,
                &existing.data.request,
                &existing.party,
            ));
        }
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
    pub(super) async fn revoke_row(
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
            RevokeReason::SignatureRevoked => "sign-revoked",
        };
        // The credential first, then its operation: the order every writer of both takes.
        let mut batch = vec![
            Store::revoke_credential(&c.op_id, reason_text, t),
            Store::cancel_op(&c.op_id, t),
            Store::audit(&c.op_id, t, actor, "revoked", reason_text),
            Store::erase_sealed_if_over(&c.op_id),
        ];
        // A certificate the JPKI issuer made is revoked there too (its CRL is what relying
        // parties read): queued in this transaction, sent below and retried until confirmed.
        let at_issuer = issuer_reason(reason)
            .filter(|_| self.config.issuer.is_some() && !c.serial.is_empty())
            .map(|why| crate::store::withdraw::Withdrawal {
                serial: c.serial.clone(),
                op_id: c.op_id.to_hex(),
                reason: format!("{why}: {reason_text} ({actor})"),
            });
        if let Some(w) = &at_issuer {
            batch.extend(Store::revoke_at_issuer(w, t));
        }
        self.store.commit(batch).await?;
        if let Some(w) = &at_issuer
            && let Err(e) = self.run_withdrawal(w).await
        {
            tracing::warn!(serial = %w.serial, error = %e, "the issuer's revocation is retried by the sweeper");
        }
        let c =
            self.store.credential(&c.op_id).await?.ok_or_else(|| {
                ServiceError::Store(StoreError::Db("a credential vanished".into()))
            })?;
        tracing::info!(credential = %c.op_id, serial = %c.serial, reason = ?reason, "credential revoked");
        self.write_revocation_list().await?;
        Ok(c)
    }

    /// Rewrites the revocation list file (atomically).
    pub(super) async fn write_revocation_list(&self) -> Result<()> {
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
    pub(super) async fn own_card(&self, party: &PartyId, iccid: &str) -> Result<Option<CardRow>> {
        Ok(self.store.card(iccid).await?.filter(|c| c.mno == party.0))
    }
}

/// The reason the JPKI issuer records for a revocation the SP-TSM asks of it (the first word
/// of its `Withdraw`); `None` for what the issuer knows itself (a revoked signature
/// certificate, an expiry).
fn issuer_reason(reason: RevokeReason) -> Option<&'static str> {
    match reason {
        RevokeReason::CardLost => Some("sim-lost"),
        RevokeReason::Superseded => Some("sim-changed"),
        RevokeReason::UserRequest => Some("holder-request"),
        RevokeReason::Expired | RevokeReason::SignatureRevoked => None,
    }
}
