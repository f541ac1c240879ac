//! The mobile operator's notices: cards registered, SIMs changed or lost, eligibility
//! checks.

use crate::store::ops::CardRow;
use crate::store::{Store, StoreError};
use tsm_protocol::control::{ControlRequest, ControlResponse, RevokeReason};
use tsm_protocol::{Layer, PartyId};

use super::{Result, Tsm, err, now, unknown_card};

impl Tsm {
    pub(super) async fn mno(
        &self,
        party: &PartyId,
        req: ControlRequest,
    ) -> Result<ControlResponse> {
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
                card_certificate,
            } => {
                if !valid(&iccid) || hex::decode(&cin).is_err() {
                    return bad_iccid();
                }
                if let Some(c) = &card_certificate {
                    use der::Decode;
                    if let Err(e) = x509_cert::Certificate::from_der(c) {
                        return Ok(ControlResponse::Rejected(err(
                            Layer::Business,
                            "business.bad-card-certificate",
                            format!(
                                "the SIM's key agreement certificate does not parse ({e}): send the DER certificate the card manufacturer issued"
                            ),
                        )));
                    }
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
                let batch = vec![
                    Store::register_card(&row, t),
                    Store::set_card_certificate(&iccid, card_certificate, t),
                ];
                match self.store.commit(batch).await {
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
                let mut batch = vec![Store::mark_card(
                    &old_iccid,
                    &party.0,
                    "replaced",
                    Some(&new_iccid),
                    t,
                )];
                batch.extend(self.notices(&old_iccid, "changed", &new_iccid, party, t));
                match self.store.commit(batch).await {
                    Ok(()) => {}
                    Err(StoreError::Conflict(_)) => return Ok(unknown_card(&old_iccid, party)),
                    Err(e) => return Err(e.into()),
                }
                self.notify_now(&old_iccid).await;
                Ok(ControlResponse::Ok)
            }
            ControlRequest::CardLost { iccid } => {
                if !valid(&iccid) {
                    return bad_iccid();
                }
                let mut batch = vec![Store::mark_card(&iccid, &party.0, "lost", None, t)];
                batch.extend(self.notices(&iccid, "lost", "", party, t));
                match self.store.commit(batch).await {
                    Ok(()) => {}
                    Err(StoreError::Conflict(_)) => return Ok(unknown_card(&iccid, party)),
                    Err(e) => return Err(e.into()),
                }
                self.notify_now(&iccid).await;
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
}

impl Tsm {
    /// On an MNO-TSM: the notices of `kind` about `iccid` for the SP-TSMs on it, queued in
    /// the transaction that marks the SIM ([`super::sim_notice`]); nothing on an SP-TSM.
    fn notices(
        &self,
        iccid: &str,
        kind: &str,
        new_iccid: &str,
        party: &PartyId,
        t: i64,
    ) -> Vec<kagi_db::Stmt> {
        if self.config.operators.is_empty() {
            return Vec::new();
        }
        super::sim_notice::queue(iccid, kind, new_iccid, &party.0, t)
    }

    /// Sends the notices about `iccid` at once (the sweeper retries what fails).
    async fn notify_now(&self, iccid: &str) {
        if let Err(e) = self.deliver_sim_notices(Some(iccid)).await {
            tracing::warn!(iccid, error = %e, "SIM notices are retried by the sweeper");
        }
    }
}
