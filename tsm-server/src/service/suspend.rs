//! Suspension and resumption of a credential the JPKI issuer made, at the holder's request
//! through the provider (`ControlRequest::Suspend`). The issuer is where it is recorded
//! (its CRL is what relying parties read) and where the one conditional update that decides
//! it runs; this SP-TSM keeps no copy that could disagree: it forwards the request, audits
//! what the issuer answered, and a credential's status (`CheckStatus`) shows `suspended`
//! while the issuer holds it.

use crate::store::Store;
use crate::store::ops::CredentialRow;
use tsm_protocol::control::ControlResponse;
use tsm_protocol::issuer::{IssuerRequest, IssuerResponse};
use tsm_protocol::{Layer, OpId, PartyId};

use super::{Result, Tsm, err, now, unknown_credential};

impl Tsm {
    /// `party`'s request to suspend (`hold`) or resume `credential`.
    pub(super) async fn suspend(
        &self,
        party: &PartyId,
        credential: &OpId,
        hold: bool,
    ) -> Result<ControlResponse> {
        let Some(c) = self
            .store
            .credential(credential)
            .await?
            .filter(|c| c.party == party.0)
        else {
            return Ok(unknown_credential(credential, party));
        };
        if self.config.issuer.is_none() || c.serial.is_empty() {
            return Ok(ControlResponse::Rejected(err(
                Layer::Business,
                "business.no-issuer",
                "a suspension is recorded at the JPKI issuer, and this credential was not made by one: revoke it instead",
            )));
        }
        if c.state != "active" {
            return Ok(ControlResponse::Rejected(err(
                Layer::Business,
                "business.not-active",
                format!(
                    "credential {credential} is {}: only a delivered, unrevoked credential is suspended or resumed",
                    c.state
                ),
            )));
        }
        let req = IssuerRequest::Suspension {
            serial: c.serial.clone(),
            hold: Some(hold),
        };
        let state = match self.send_to_issuer(&req).await? {
            Ok(IssuerResponse::Standing { serial, state }) if serial == c.serial => state,
            Ok(IssuerResponse::Rejected(e)) | Err(e) => return Ok(ControlResponse::Rejected(e)),
            Ok(_) => {
                return Ok(ControlResponse::Rejected(err(
                    Layer::Tsm,
                    "protocol.issuer-answer",
                    "the JPKI issuer answered something else: try again",
                )));
            }
        };
        let event = if hold { "suspend" } else { "resume" };
        let t = now();
        self.store
            .commit(vec![Store::audit(
                &c.op_id,
                t,
                &party.0,
                event,
                &format!("at the issuer: {state}"),
            )])
            .await?;
        // Revoked at the issuer meanwhile (its card's signature certificate): revoked here.
        let c = self.linked_status(c).await?;
        Ok(ControlResponse::Credential(
            self.status_with_hold(&c, &state),
        ))
    }

    /// The credential's status, `suspended` while the issuer holds it (`issuer_state`).
    fn status_with_hold(
        &self,
        c: &CredentialRow,
        issuer_state: &str,
    ) -> tsm_protocol::control::CredentialStatus {
        let mut s = self.status_of(c);
        if s.state == "active" && issuer_state == "held" {
            s.state = "suspended".into();
        }
        s
    }

    /// [`ControlRequest::CheckStatus`]'s view: the linked status, and whether the issuer
    /// holds the credential (asked only for an active one the issuer made).
    pub(super) async fn checked_status(
        &self,
        c: CredentialRow,
    ) -> Result<tsm_protocol::control::CredentialStatus> {
        let c = self.linked_status(c).await?;
        if c.state != "active" || self.config.issuer.is_none() || c.serial.is_empty() {
            return Ok(self.status_of(&c));
        }
        let req = IssuerRequest::Suspension {
            serial: c.serial.clone(),
            hold: None,
        };
        let state = match self.send_to_issuer(&req).await? {
            Ok(IssuerResponse::Standing { state, .. }) => state,
            _ => String::new(),
        };
        Ok(self.status_with_hold(&c, &state))
    }
}
