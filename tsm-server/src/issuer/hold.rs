//! Suspension and resumption of a phone certificate at the holder's request (through the
//! SP-TSM that relayed it): `active` → `held` and back, each by one conditional update that
//! must change the link's row (so two racing requests never both act, and the audit trail
//! strictly alternates `held`, `released`), audited in the same transaction. A held
//! certificate is on the issuer's CRL as certificateHold; resumed, it leaves the next CRL (a
//! full CRL's equivalent of removeFromCRL); revoked — its card's signature certificate, a
//! lost SIM — it is revoked for good and no longer resumes.

use super::{Issuer, IssuerError, now_ms, reject, store};
use kagi_db::{Stmt, StoreError};
use tsm_protocol::issuer::IssuerResponse;
use tsm_protocol::{Layer, PartyId};

impl Issuer {
    /// [`tsm_protocol::issuer::IssuerRequest::Suspension`] from `sender`.
    pub(super) async fn suspension(
        &self,
        sender: &PartyId,
        serial: &str,
        hold: Option<bool>,
    ) -> Result<IssuerResponse, IssuerError> {
        let unknown = || {
            Ok(reject(
                Layer::Business,
                "issuer.unknown-certificate",
                format!("no phone certificate {serial} was issued to {sender}"),
            ))
        };
        let Some(link) = store::link(&self.db, serial)
            .await?
            .filter(|l| l.sp_tsm == sender.0)
        else {
            return unknown();
        };
        if let Some(hold) = hold {
            let at = now_ms();
            let (from, to, event) = if hold {
                ("active", "held", "held")
            } else {
                ("held", "active", "released")
            };
            let detail = format!(
                "phone {serial} sign {}: at the holder's request",
                link.sign_serial
            );
            let batch = vec![
                Stmt::one(
                    "UPDATE links SET state = $4, reason = CASE WHEN $4 = 'held' THEN 'hold' ELSE NULL END,
                     revoked_at = CASE WHEN $4 = 'held' THEN CAST($5 AS BIGINT) ELSE NULL END
                     WHERE serial = $1 AND sp_tsm = $2 AND state = $3",
                    vec![
                        serial.into(),
                        sender.0.clone().into(),
                        from.into(),
                        to.into(),
                        at.into(),
                    ],
                ),
                store::audit(at, &sender.0, event, &detail),
            ];
            match self.db.commit(batch).await {
                Ok(()) => {
                    tracing::info!(serial, event, "phone certificate suspension changed");
                    self.refresh_crl().await;
                }
                // Not in the state it leaves: already there, or revoked (the answer says).
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let Some(now) = store::link(&self.db, serial).await? else {
            return unknown();
        };
        Ok(IssuerResponse::Standing {
            serial: now.serial,
            state: now.state,
        })
    }
}
