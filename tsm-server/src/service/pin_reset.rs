//! An SP-TSM's part of a PIN reset on the holder's fresh signature
//! (`ControlRequest::ApplyPinReset`): the JPKI issuer checks the pin-reset application
//! against the card the credential is linked to and answers the new PIN sealed to the SIM;
//! the request then goes on as a `ResetPin` operation (the relay writes the PIN through the
//! SP-TSM's secure channel; the SP-TSM cannot open it).

use tsm_protocol::control::{ControlRequest, ControlResponse};
use tsm_protocol::issuer::{IssuerRequest, IssuerResponse};
use tsm_protocol::{IdempotencyKey, Layer, PartyId};

use super::{Result, Tsm, err, unknown_credential};

impl Tsm {
    /// `req` (an `ApplyPinReset` of `provider`) as the `ResetPin` it becomes, with the
    /// issuer's sealed PIN bound to `idem`; or the refusal to answer.
    pub(super) async fn pin_reset_at_issuer(
        &self,
        provider: &PartyId,
        idem: &IdempotencyKey,
        req: ControlRequest,
    ) -> Result<std::result::Result<ControlRequest, ControlResponse>> {
        let ControlRequest::ApplyPinReset {
            credential,
            application,
            access,
        } = req
        else {
            return Ok(Ok(req));
        };
        let refuse = |code: &str, detail: String| {
            Ok(Err(ControlResponse::Rejected(err(
                Layer::Business,
                code,
                detail,
            ))))
        };
        let Some(c) = self
            .store
            .credential(&credential)
            .await?
            .filter(|c| c.party == provider.0)
        else {
            return Ok(Err(unknown_credential(&credential, provider)));
        };
        if c.state != "active" || c.serial.is_empty() {
            return refuse(
                "business.not-active",
                format!(
                    "credential {credential} is {}: only an active credential the JPKI issuer made gets a new PIN",
                    c.state
                ),
            );
        }
        self.refresh_card(&c.iccid).await?;
        let Some(card_certificate) = self.store.card_certificate(&c.iccid).await? else {
            return refuse(
                "business.no-card-certificate",
                format!(
                    "SIM {} has no registered key agreement certificate",
                    c.iccid
                ),
            );
        };
        let asked = IssuerRequest::ResetPin {
            application,
            serial: c.serial.clone(),
            card_certificate,
            instance: c.instance.clone(),
            request_id: *idem,
        };
        match self.send_to_issuer(&asked).await? {
            Ok(IssuerResponse::PinReset { serial, sealed_pin }) if serial == c.serial => {
                Ok(Ok(ControlRequest::ResetPin {
                    credential,
                    sealed_pin,
                    access,
                }))
            }
            Ok(IssuerResponse::Rejected(e)) | Err(e) => {
                tracing::warn!(code = %e.code, "the JPKI issuer refused the PIN reset");
                Ok(Err(ControlResponse::Rejected(e)))
            }
            Ok(_) => refuse(
                "protocol.issuer-answer",
                "the JPKI issuer answered something else: try again".into(),
            ),
        }
    }
}
