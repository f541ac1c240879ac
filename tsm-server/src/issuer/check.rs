//! An issue's application checks (②③), on their own or as the first part of an issue: the
//! user's application against the signature CA and its revocation data (read again for
//! every check, `kagi_certs::application`), the SIM and provider it must name — and, for an
//! SP-TSM's [`IssuerRequest::CheckApplication`](tsm_protocol::issuer::IssuerRequest) at its
//! `Apply`, the two facts an issue learns only when it commits (`store::issue_batch`): the
//! signature serial not recorded as revoked here, the application's nonce not used before.
//! A check spends nothing (the nonce is spent once, by the issue or the Certify that
//! commits); it is audited, accepted (`application-checked`) or refused
//! (`application-refused`, naming the code).

use super::{Issuer, IssuerError, now_ms, reject, store};
use kagi_certs::application as app;
use std::time::SystemTime;
use tsm_protocol::issuer::IssuerResponse;
use tsm_protocol::{Layer, PartyId};

impl Issuer {
    /// The application's checks of an issue (a transfer's from SIM `from_iccid`) for
    /// `provider` and SIM `iccid` at `now`: the
    /// verified application, or the refusal to answer (`application.*`, or `issuer.sign-ca`
    /// when the signature CA's files cannot be read).
    pub(super) fn verify_application(
        &self,
        sender: &PartyId,
        provider: &PartyId,
        iccid: &str,
        application: &[u8],
        now: SystemTime,
        from_iccid: Option<&str>,
    ) -> Result<app::Verified, Box<IssuerResponse>> {
        let trust = self.sign_trust()?;
        let expect = app::Expect {
            iccid,
            provider: &provider.0,
            now,
            max_age: self.config.max_age,
        };
        match from_iccid {
            None => app::check(application, &trust, &expect),
            Some(from) => app::check_transfer(application, &trust, &expect, from),
        }
        .map_err(|e| {
            tracing::warn!(sender = %sender, code = e.code(), "application refused");
            Box::new(reject(
                Layer::Business,
                &format!("application.{}", e.code()),
                e.to_string(),
            ))
        })
    }

    /// Answers a [`CheckApplication`](tsm_protocol::issuer::IssuerRequest::CheckApplication)
    /// of `sender` (a transfer application's when it `moves` a certificate); `refused`: the
    /// answer when the sender does not act for `provider` (`issuer.not-your-provider`).
    /// Audited either way.
    pub(super) async fn check_application(
        &self,
        sender: &PartyId,
        provider: &PartyId,
        iccid: &str,
        application: &[u8],
        moves: Option<super::transfer::Transfer<'_>>,
        refused: Option<IssuerResponse>,
    ) -> Result<IssuerResponse, IssuerError> {
        let answer = match refused {
            Some(r) => r,
            None => {
                self.checked(sender, provider, iccid, application, moves)
                    .await?
            }
        };
        let iccid: String = iccid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(22)
            .collect();
        let (event, detail) = match &answer {
            IssuerResponse::ApplicationChecked { sign_serial, .. } => (
                "application-checked",
                format!("sign {sign_serial} sim {iccid} provider {provider}"),
            ),
            IssuerResponse::Rejected(e) => (
                "application-refused",
                format!("{} sim {iccid} provider {provider}", e.code),
            ),
            _ => ("application-refused", format!("sim {iccid}")),
        };
        self.db
            .commit(vec![store::audit(now_ms(), &sender.0, event, &detail)])
            .await?;
        tracing::info!(sender = %sender, event, detail = %detail, "application check");
        Ok(answer)
    }

    /// The checks themselves: the application's, a transfer's (the certificate it moves),
    /// then the issuer's own records.
    async fn checked(
        &self,
        sender: &PartyId,
        provider: &PartyId,
        iccid: &str,
        application: &[u8],
        moves: Option<super::transfer::Transfer<'_>>,
    ) -> Result<IssuerResponse, IssuerError> {
        let verified = match self.verify_application(
            sender,
            provider,
            iccid,
            application,
            SystemTime::now(),
            moves.map(|t| t.from_iccid),
        ) {
            Ok(v) => v,
            Err(refused) => return Ok(*refused),
        };
        if let Some(t) = &moves
            && let Some(refused) = self
                .transfer_refusal(sender, t, &verified.sign_serial)
                .await?
        {
            return Ok(refused);
        }
        let (revoked, used) = store::application_standing(
            &self.db,
            &verified.sign_serial,
            &hex::encode(verified.application.body.nonce),
        )
        .await?;
        // The same words as an issue's refusals at commit (`Issuer::record`).
        if revoked || used {
            let code = if revoked { "revoked" } else { "replayed" };
            tracing::warn!(sender = %sender, code, "application refused");
        }
        if revoked {
            return Ok(reject(
                Layer::Business,
                "application.revoked",
                format!(
                    "the signature certificate {} was revoked: the card cannot apply",
                    verified.sign_serial
                ),
            ));
        }
        if used {
            return Ok(reject(
                Layer::Business,
                "application.replayed",
                "the application was already used (replay): make a fresh one",
            ));
        }
        Ok(IssuerResponse::ApplicationChecked {
            sign_serial: verified.sign_serial,
            not_after: verified.not_after,
        })
    }
}
