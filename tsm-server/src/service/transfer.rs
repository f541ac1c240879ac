//! Transfer to a new SIM on the holder's fresh signature (issue #16's lifecycle), the
//! SP-TSM's part: a provider's [`ControlRequest::ApplyTransfer`] names the credential that
//! moves and the new SIM — of the same operator or another: the new SIM must be served by one
//! of this SP-TSM's MNO-TSMs. The JPKI issuer checks the transfer application (the card the
//! old certificate is linked to, the old SIM bound in the signature) and makes the new
//! credential sealed to the new SIM ([`IssuerRequest::Issue`] that `moves` it; in the on-card
//! mode the new SIM first makes the key and the issuer certifies it, a `Certify` that `moves` it
//! from `Tsm::certify_on_card`); the request then goes on as a [`ControlRequest::Transfer`]: the MNO-TSM serving the new SIM prepares it (the
//! provider's domain and the applet, exactly as for a first download), this SP-TSM writes the
//! credential, and only once it is written is the old credential revoked (`superseded`, also
//! at the issuer through the withdrawal outbox: its CRL lists the old certificate as
//! `superseded`). The old SIM's MNO-TSM is never told anything about the new SIM.
//!
//! The old credential is revoked in the transaction that activates the new one, only if it is
//! still active ([`Tsm::supersede`]): of two transfers of one credential racing to the end (or
//! a transfer and a revocation), exactly one wins; the other operation fails
//! (`business.superseded-meanwhile`) and its undelivered certificate is withdrawn at the
//! issuer — never two valid certificates for one credential.

use crate::store::ops::CredentialRow;
use crate::store::withdraw::Withdrawal;
use crate::store::{Stmt, Store};
use tsm_protocol::control::{ControlRequest, ControlResponse};
use tsm_protocol::{IdempotencyKey, Layer, PartyId};

use super::{Result, Tsm, err, unknown_credential};

impl Tsm {
    /// An `ApplyTransfer` of `provider` made a `ControlRequest::Transfer`: the issuer's new credential for
    /// the new SIM under `idem`; or the refusal to answer the provider with.
    pub(super) async fn transfer_at_issuer(
        &self,
        provider: &PartyId,
        idem: &IdempotencyKey,
        req: ControlRequest,
    ) -> Result<std::result::Result<ControlRequest, ControlResponse>> {
        let ControlRequest::ApplyTransfer {
            credential,
            card,
            applet: _,
            application,
            access,
        } = req
        else {
            return Ok(Ok(req));
        };
        let old = match self
            .transfer_source(provider, &credential, &card.iccid)
            .await?
        {
            Ok(old) => old,
            Err(refused) => return Ok(Err(refused)),
        };
        // Sealed for the applet instance the credential had: the new SIM gets the same one.
        let moves = tsm_protocol::issuer::Moves {
            from_serial: old.serial.clone(),
            from_iccid: old.iccid.clone(),
        };
        let new_credential = match self
            .sealed_by_issuer(
                provider,
                &card.iccid,
                application,
                old.instance.clone(),
                idem,
                Some(moves),
            )
            .await?
        {
            Ok(c) => c,
            Err(e) => return Ok(Err(ControlResponse::Rejected(e))),
        };
        Ok(Ok(ControlRequest::Transfer {
            credential,
            card,
            new_credential,
            access,
        }))
    }
}

impl Tsm {
    /// The applet instance a transfer of `credential` writes to the new SIM: the one the
    /// credential had (the JPKI AID if it is gone).
    pub(super) async fn moved_instance(&self, credential: &tsm_protocol::OpId) -> Result<Vec<u8>> {
        Ok(self
            .store
            .credential(credential)
            .await?
            .map(|c| c.instance)
            .unwrap_or_else(|| card_wire::jpki::JPKI_AID.to_vec()))
    }

    /// The credential `credential` of `provider` a transfer to SIM `new_iccid` moves: active,
    /// on another SIM; or the refusal.
    pub(super) async fn transfer_source(
        &self,
        provider: &PartyId,
        credential: &tsm_protocol::OpId,
        new_iccid: &str,
    ) -> Result<std::result::Result<CredentialRow, ControlResponse>> {
        let refuse = |code: &str, detail: String| {
            Ok(Err(ControlResponse::Rejected(err(
                Layer::Business,
                code,
                detail,
            ))))
        };
        let old = match self.store.credential(credential).await? {
            Some(c) if c.party == provider.0 => c,
            _ => return Ok(Err(unknown_credential(credential, provider))),
        };
        if old.state != "active" {
            return refuse(
                "business.not-transferable",
                format!(
                    "credential {credential} is {} (only an active credential moves)",
                    old.state
                ),
            );
        }
        if old.iccid == new_iccid {
            return refuse(
                "business.same-sim",
                format!(
                    "credential {credential} is on SIM {new_iccid} already: transfer to another SIM"
                ),
            );
        }
        Ok(Ok(old))
    }

    /// The statements revoking `old` (`superseded`) in the transaction that activates the
    /// credential replacing it — the first one only if `old` is still active (a conflict
    /// there: another transfer, or a revocation, won) — and the issuer's revocation queued
    /// (`sim-changed`, its CRL reason `superseded`), to send once committed.
    pub(super) fn supersede(
        &self,
        old: &CredentialRow,
        actor: &str,
        t: i64,
    ) -> (Vec<Stmt>, Option<Withdrawal>) {
        let mut batch = vec![
            Stmt::one(
                "UPDATE credentials SET state = 'revoked', reason = 'superseded', updated_at = $2,
                 deletion_pending = 1 WHERE op_id = $1 AND state = 'active'",
                vec![old.op_id.to_hex().into(), t.into()],
            ),
            Store::audit(&old.op_id, t, actor, "revoked", "superseded"),
            Store::erase_sealed_if_over(&old.op_id),
        ];
        let at_issuer =
            (self.config.issuer.is_some() && !old.serial.is_empty()).then(|| Withdrawal {
                serial: old.serial.clone(),
                op_id: old.op_id.to_hex(),
                reason: format!("sim-changed: superseded ({actor})"),
            });
        if let Some(w) = &at_issuer {
            batch.extend(Store::revoke_at_issuer(w, t));
        }
        // The provider's area on the old SIM goes too, through the MNO-TSM serving it
        // (`domain_delete`: queued here, delivered and retried until acknowledged).
        batch.extend(self.queue_domain_deletion(&old.iccid, &old.party, t));
        (batch, at_issuer)
    }

    /// After a transfer committed: the old certificate's revocation sent to the issuer (the
    /// sweeper retries it) and the revocation list rewritten.
    pub(super) async fn superseded(
        &self,
        old: &CredentialRow,
        w: Option<Withdrawal>,
    ) -> Result<()> {
        if let Some(w) = &w
            && let Err(e) = self.run_withdrawal(w).await
        {
            tracing::warn!(serial = %w.serial, error = %e, "the issuer's revocation is retried by the sweeper");
        }
        tracing::info!(credential = %old.op_id, serial = %old.serial, "credential superseded by its transfer");
        self.write_revocation_list().await?;
        // A failure is the outbox's to retry.
        if let Err(e) = self.deliver_domain_deletions(Some(&old.iccid)).await {
            tracing::warn!(iccid = %old.iccid, error = %e, "the old SIM's domain deletion is retried by the sweeper");
        }
        Ok(())
    }
}
