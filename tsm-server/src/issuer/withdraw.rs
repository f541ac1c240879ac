//! An SP-TSM's withdrawal of a phone certificate it got but could not deliver, or revokes
//! on its holder's or operator's word ([`IssuerRequest::Withdraw`](tsm_protocol::issuer::IssuerRequest)).

use super::{Issuer, IssuerError, now_ms, reject, store};
use tsm_protocol::issuer::{IssuerResponse, RevokedPhone};
use tsm_protocol::{Layer, PartyId};

impl Issuer {
    /// Revokes phone certificate `serial` that `sender` got but could not deliver (seed 004's
    /// flow broken after ⑰): only that SP-TSM's own, with an audit entry naming the reason.
    pub(super) async fn withdraw(
        &self,
        sender: &PartyId,
        serial: &str,
        reason: &str,
    ) -> Result<IssuerResponse, IssuerError> {
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        let at = now_ms();
        let Some(sign_serial) = store::link(&self.db, serial)
            .await?
            .filter(|l| l.sp_tsm == sender.0)
            .map(|l| l.sign_serial)
        else {
            return Ok(reject(
                Layer::Business,
                "issuer.unknown-certificate",
                format!("no phone certificate {serial} was issued to {sender}"),
            ));
        };
        let detail = format!("phone {serial} sign {sign_serial}: {reason}");
        // The SP-TSM's revocation of a delivered one names why first (`sim-lost: …`).
        let link_reason = match reason.split(':').next().unwrap_or_default() {
            r @ ("sim-lost" | "sim-changed" | "holder-request") => r,
            _ => "withdrawn",
        };
        self.db
            .commit(store::withdraw_batch(
                serial,
                &sender.0,
                link_reason,
                &detail,
                at,
            ))
            .await?;
        self.refresh_crl().await;
        match store::link(&self.db, serial).await? {
            Some(l) if l.sp_tsm == sender.0 && l.state == "revoked" => {
                tracing::info!(serial, sp_tsm = %sender, reason = %reason, "undelivered phone certificate revoked");
                Ok(IssuerResponse::Status {
                    revoked: vec![RevokedPhone {
                        serial: l.serial,
                        sign_serial: l.sign_serial,
                        reason: l.reason.unwrap_or_default(),
                        revoked_at: l.revoked_at.unwrap_or(0).max(0) as u64,
                    }],
                })
            }
            _ => Ok(reject(
                Layer::Business,
                "issuer.unknown-certificate",
                format!("no phone certificate {serial} was issued to {sender}"),
            )),
        }
    }
}
