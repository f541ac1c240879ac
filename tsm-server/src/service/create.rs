//! Operations created by a request (issuance, PIN reset, wallet update, transfer, a new
//! security domain): the checks, the access code and ticket, the new rows in one
//! transaction, idempotent replays of the same request.

use crate::store::ops::{Created, CredentialRow, OpData, OpRow};
use crate::store::{Store, StoreError};
use sha2::{Digest, Sha256};
use tsm_protocol::access;
use tsm_protocol::control::{ControlRequest, ControlResponse, OpState, PREPARE_SIM};
use tsm_protocol::signing::{self};
use tsm_protocol::{ErrorReport, Layer};

use super::{NewOp, Result, Tsm, err, now, unknown_card, unknown_credential};

/// Serial (hex) and notAfter (Unix seconds) of a DER certificate.
pub(super) fn cert_facts(der: &[u8]) -> std::result::Result<(String, i64), String> {
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
    /// Why the user's access grant is refused (attempts outside 1–10, a password verifier
    /// weaker than the policy), if it is.
    fn access_refusal(&self, access: &tsm_protocol::control::AccessGrant) -> Option<ErrorReport> {
        if access.max_attempts == 0 || access.max_attempts > 10 {
            return Some(err(
                Layer::Business,
                "business.weak-access",
                "the access grant needs 1 to 10 attempts",
            ));
        }
        access
            .password
            .accept(&self.password_policy)
            .err()
            .map(|e| {
                err(
                    Layer::Business,
                    "business.weak-verifier",
                    format!("the access grant's password verifier is refused: {e}"),
                )
            })
    }

    /// Creates an operation that needs the card (issue, transfer, PIN reset, wallet update).
    /// An application the JPKI issuer issued a certificate for but that ends refused here
    /// has that certificate withdrawn (`withdraw`).
    pub(super) async fn create(
        &self,
        h: &signing::Header,
        req: ControlRequest,
    ) -> Result<ControlResponse> {
        let mut issued = None;
        let answer = self.create_inner(h, req, &mut issued).await;
        if let Some(serial) = issued {
            let why = match &answer {
                Ok(ControlResponse::Accepted { .. }) => None,
                Ok(ControlResponse::Rejected(e)) => Some(e.code.clone()),
                Ok(_) => Some("an unexpected answer".to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = why
                && let Err(e) = self.withdraw_refused(&serial, &why).await
            {
                tracing::error!(serial = %serial, error = %e, "an undelivered phone certificate could not be recorded for withdrawal: revoke it at the JPKI issuer");
            }
        }
        answer
    }

    /// [`Tsm::create`]; `issued` gets the serial of a certificate the JPKI issuer made for
    /// an application.
    async fn create_inner(
        &self,
        h: &signing::Header,
        req: ControlRequest,
        issued: &mut Option<String>,
    ) -> Result<ControlResponse> {
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
            ControlRequest::PrepareSim { .. } => {
                if let Some(e) = self.prepare_refusal(party, &req) {
                    return Ok(ControlResponse::Rejected(e));
                }
                None
            }
            ControlRequest::CreateSecurityDomain { provider, .. } => {
                if !self.config.operators.contains_key(party) {
                    return reject(
                        "business.unknown-operator",
                        format!("this TSM holds no issuer-domain keys of {party}"),
                    );
                }
                Some(provider.clone())
            }
            _ => Some(party.clone()),
        };
        if let Some(provider) = provider
            && !self.config.providers.contains_key(&provider)
        {
            return reject(
                "business.unknown-provider",
                format!("this TSM holds no security-domain keys for {provider}"),
            );
        }
        let request_hash = Sha256::digest(tsm_protocol::codec::encode(&req)?).to_vec();
        // Idempotency first: the same key and request answer as before, another request is
        // a conflict.
        if let Some(existing) = self.store.op_by_idem(&party.0, &idem.to_hex()).await? {
            return self.again_mailed(existing, &request_hash).await;
        }
        // A SIM no linked MNO-TSM serves is refused before anyone is asked anything.
        if let Some(card) = super::card_of(&req)
            && !self.config.mno.is_empty()
            && let Err(e) = self.mno_for(&card.iccid)
        {
            return Ok(ControlResponse::Rejected(e));
        }
        // An application's access grant is checked before the issuer makes anything.
        if let ControlRequest::Apply { access, .. }
        | ControlRequest::ApplyPinReset { access, .. }
        | ControlRequest::ApplyTransfer { access, .. } = &req
            && let Some(e) = self.access_refusal(access)
        {
            return Ok(ControlResponse::Rejected(e));
        }
        // An application names the user's mail address: the access code goes there (⑪),
        // never into the answer.
        let contact = match self.apply_contact(&req) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return Ok(ControlResponse::Rejected(e)),
        };
        // An application: the JPKI issuer makes the credential (sealed to the SIM), and the
        // request goes on as an issue. Those that went to the issuer refreshed the SIM's
        // record from the MNO-TSM on the way (`Tsm::sealed_by_issuer`, the PIN reset's); the
        // rest refresh it below. Not one refresh up here for all: the order differs on
        // purpose — the issuer's seal needs the record first, while the on-card mode's
        // application is checked at the issuer before anything is asked of the MNO-TSM, and
        // a PIN reset learns its SIM only from the credential.
        let refreshed = match req {
            ControlRequest::ApplyPinReset { .. } => true,
            ControlRequest::Apply { .. } | ControlRequest::ApplyTransfer { .. } => {
                !self.key_on_card()
            }
            _ => false,
        };
        let mut req = match req {
            // The on-card mode: the SIM makes the key in the download's first session, and
            // the issuer certifies it then (`Tsm::certify_on_card`); it checks the
            // application now (②③), before anything is stored, mailed or asked of the
            // MNO-TSM (`Tsm::check_at_issuer`).
            ControlRequest::Apply { .. } if self.key_on_card() => {
                match self.check_at_issuer(party, &req, None).await? {
                    Ok(()) => req,
                    Err(refused) => return Ok(refused),
                }
            }
            ControlRequest::Apply { .. } => match self.apply_at_issuer(party, &idem, req).await? {
                Ok(issue) => {
                    if let ControlRequest::Issue { credential, .. } = &issue {
                        *issued = cert_facts(&credential.certificate).ok().map(|f| f.0);
                    }
                    // A request racing this one with the same key got the same credential
                    // (the issuer answers a key once) and may have made the operation
                    // meanwhile: answer as it.
                    if let Some(existing) = self.store.op_by_idem(&party.0, &idem.to_hex()).await? {
                        return self.again_mailed(existing, &request_hash).await;
                    }
                    issue
                }
                Err(refused) => return Ok(refused),
            },
            // A transfer application: the issuer checks it and makes the new credential, the
            // request goes on as a transfer (`transfer`).
            // The on-card mode: the new SIM makes the key in the download's first session.
            ControlRequest::ApplyTransfer {
                ref credential,
                ref card,
                ..
            } if self.key_on_card() => {
                let old = match self.transfer_source(party, credential, &card.iccid).await? {
                    Ok(old) => old,
                    Err(refused) => return Ok(refused),
                };
                // Checked now like a first application (②③ before ④), with the
                // certificate it moves.
                let moves = tsm_protocol::issuer::Moves {
                    from_serial: old.serial,
                    from_iccid: old.iccid,
                };
                match self.check_at_issuer(party, &req, Some(moves)).await? {
                    Ok(()) => req,
                    Err(refused) => return Ok(refused),
                }
            }
            ControlRequest::ApplyTransfer { .. } => {
                match self.transfer_at_issuer(party, &idem, req).await? {
                    Ok(transfer) => {
                        if let ControlRequest::Transfer { new_credential, .. } = &transfer {
                            *issued = cert_facts(&new_credential.certificate).ok().map(|f| f.0);
                        }
                        if let Some(existing) =
                            self.store.op_by_idem(&party.0, &idem.to_hex()).await?
                        {
                            return self.again_mailed(existing, &request_hash).await;
                        }
                        transfer
                    }
                    Err(refused) => return Ok(refused),
                }
            }
            // A pin-reset application: the issuer checks it and makes the PIN, the request
            // goes on as a PIN reset.
            ControlRequest::ApplyPinReset { .. } => {
                match self.pin_reset_at_issuer(party, &idem, req).await? {
                    Ok(reset) => {
                        if let Some(existing) =
                            self.store.op_by_idem(&party.0, &idem.to_hex()).await?
                        {
                            return self.again_mailed(existing, &request_hash).await;
                        }
                        reset
                    }
                    Err(refused) => return Ok(refused),
                }
            }
            req => req,
        };
        // The sealed parts are kept apart from the record, and only while the operation runs.
        let sealed = crate::store::sealed::take_sealed(&mut req);
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
                    Some(access.clone()),
                    Some((
                        serial,
                        not_after,
                        credential.my_number_sign_serial.clone(),
                        applet.instance.clone(),
                    )),
                    None,
                )
            }
            ControlRequest::ApplyTransfer {
                credential,
                card,
                access,
                ..
            } => (
                "transfer",
                card.iccid.clone(),
                Some(access.clone()),
                None,
                Some(*credential),
            ),
            ControlRequest::Apply { card, access, .. } => (
                "issue",
                card.iccid.clone(),
                Some(access.clone()),
                None,
                None,
            ),
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
                    Some(access.clone()),
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
                (
                    "reset-pin",
                    c.iccid.clone(),
                    Some(access.clone()),
                    None,
                    None,
                )
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
                ("create-sd", iccid.clone(), Some(access.clone()), None, None)
            }
            ControlRequest::PrepareSim {
                iccid, privileges, ..
            } => {
                if privileges.first().is_none_or(|p| p & 0x80 == 0) {
                    return reject(
                        "business.bad-privileges",
                        "a security domain needs the Security Domain privilege (80)".into(),
                    );
                }
                (PREPARE_SIM, iccid.clone(), None, None, None)
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
                    Some(access.clone()),
                    None,
                    None,
                )
            }
            _ => return reject("protocol.unsupported", "not an operation".into()),
        };
        if let Some(e) = access.as_ref().and_then(|a| self.access_refusal(a)) {
            return Ok(ControlResponse::Rejected(e));
        }
        // A SIM preparation runs within the SP-TSM's download: half an hour.
        let valid_for = access
            .as_ref()
            .map_or(1_800_000, |a| a.valid_for_ms)
            .clamp(60_000, 7 * 86_400_000) as i64;
        let operator_request = matches!(req, ControlRequest::CreateSecurityDomain { .. });
        if !operator_request && kind != PREPARE_SIM && !refreshed {
            // An SP-TSM with an MNO-TSM: the operator's record, as it is now.
            self.refresh_card(&iccid).await?;
        }
        let card_row = self.store.card(&iccid).await?;
        if let ControlRequest::PrepareSim { sd_aid, .. } = &req {
            // The MNO-TSM acts on its own operators' SIMs, for the provider on record.
            match &card_row {
                Some(c)
                    if self
                        .config
                        .operators
                        .contains_key(&tsm_protocol::PartyId(c.mno.clone())) =>
                {
                    if !c.sd_aid.is_empty() && &c.sd_aid != sd_aid {
                        return reject(
                            "business.not-the-sims-provider",
                            format!(
                                "SIM {iccid} is registered for the provider domain {}, not {}",
                                hex::encode_upper(&c.sd_aid),
                                hex::encode_upper(sd_aid)
                            ),
                        );
                    }
                }
                _ => {
                    return reject(
                        "business.unknown-card",
                        format!("SIM {iccid} is not registered with this MNO-TSM"),
                    );
                }
            }
        }
        match card_row {
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
        // The provider's old domain still to be deleted on the card: that first.
        if kind == PREPARE_SIM
            && let Some(e) = self.retire_pending(&party.0, &iccid).await?
        {
            return Ok(ControlResponse::Rejected(e));
        }
        // One live operation per card and provider at a time.
        if let Some(live) = self
            .store
            .live_ops_on(&iccid)
            .await?
            .into_iter()
            .find(|o| o.party == party.0)
        {
            // It may be this request's own, made meanwhile by a request racing with the same
            // idempotency key: answer as it.
            if let Some(existing) = self.store.op_by_idem(&party.0, &idem.to_hex()).await? {
                return self.again_mailed(existing, &request_hash).await;
            }
            return reject(
                "business.in-progress",
                format!(
                    "operation {} is still running on SIM {iccid}: cancel it or wait",
                    live.id
                ),
            );
        }
        let NewOp {
            id,
            code,
            ticket,
            proof_nonce,
            sealed_secrets,
        } = self.new_op()?;
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
                attempts_left: access.as_ref().map_or(0, |a| a.max_attempts),
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
        if let Some(blob) = sealed {
            extra.push(Store::insert_sealed(&id, blob));
        }
        if let Some(to) = &contact {
            extra.push(Store::queue_code_mail(&id, to, t));
        }
        if contact.is_some()
            && let Some((serial, ..)) = &credential_row
        {
            // The issuer's certificate, watched until delivered (withdrawn otherwise).
            extra.push(Store::watch_issued(serial, &id, t));
        }
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
            Created::New if kind == PREPARE_SIM => {
                tracing::info!(op = %id, kind, iccid = %iccid, "SIM preparation accepted");
                Ok(self.prepared(
                    &id,
                    op.state,
                    Some(ticket.to_string()),
                    op.expires_at,
                    &op.data.request,
                    &party.0,
                ))
            }
            Created::New => {
                tracing::info!(op = %id, kind, iccid = %iccid, "operation accepted");
                if contact.is_some()
                    && let Err(e) = self.deliver_code(&id).await
                {
                    // The operation and its queued mail are committed: the sweeper retries.
                    tracing::warn!(op = %id, error = %e, "the access code mail stays queued");
                }
                Ok(ControlResponse::Accepted {
                    op: id,
                    state: op.state,
                    device_ticket: Some(ticket.to_string()),
                    access_code: contact.is_none().then(|| code.to_string()),
                    expires_at: op.expires_at as u64,
                })
            }
            Created::Existing(e) => self.again_mailed(*e, &op.request_hash).await,
            // Another request for this card won the race past the check above.
            Created::Busy(live) => reject(
                "business.in-progress",
                format!("operation {live} is still running on SIM {iccid}: cancel it or wait"),
            ),
        }
    }
}
