//! The SP-TSM and the JPKI issuer (seed 004 ⑯⑰, ⑧): a provider's
//! [`ControlRequest::Apply`] carries the user's signed application; the SP-TSM asks the JPKI
//! issuer for the credential (a signed [`IssuerRequest::Issue`] with the SIM's registered key
//! agreement certificate and the issue's idempotency key as the sealing request id) and gets
//! it sealed to the SIM — the key and the PIN are never in clear here, and the
//! user-authentication CA's key is not here at all. The issue then runs as any other. A
//! credential's status asks the issuer whether it revoked the phone certificate (linked
//! revocation: the holder's signature certificate was revoked) and revokes it here too.

use crate::store::ops::CredentialRow;
use tsm_protocol::control::{ControlRequest, ControlResponse, RevokeReason};
use tsm_protocol::issuer::{IssuerRequest, IssuerResponse};
use tsm_protocol::{ErrorReport, IdempotencyKey, Layer, PartyId};

use super::{Peer, Result, Tsm, err};

/// The JPKI issuer an SP-TSM asks for credentials.
pub struct IssuerLink {
    /// Its party (its answers are signed with a key in the trust).
    pub party: PartyId,
    /// Its base URL (`http(s)://host:port`).
    pub url: String,
    /// The HTTP client (trusting its TLS certificate).
    pub http: reqwest::Client,
}

impl IssuerLink {
    /// A link to the issuer `party` at `url`, trusting the system's TLS roots.
    pub fn new(party: PartyId, url: &str) -> IssuerLink {
        kagi_serve::tls_provider();
        IssuerLink {
            party,
            url: url.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }
}

impl Tsm {
    /// Sends `req` to the JPKI issuer, signed; its verified answer, or why there is none
    /// (`tsm.issuer-unreachable` may succeed later).
    pub(super) async fn send_to_issuer(
        &self,
        req: &IssuerRequest,
    ) -> Result<std::result::Result<IssuerResponse, ErrorReport>> {
        let Some(issuer) = &self.config.issuer else {
            return Ok(Err(err(
                Layer::Business,
                "business.no-issuer",
                "this SP-TSM has no JPKI issuer ([jpki_issuer] in tsm.toml): the provider must bring a sealed credential (Issue)",
            )));
        };
        let peer = Peer {
            party: &issuer.party,
            http: &issuer.http,
            url: format!("{}/v1/issuer", issuer.url),
            who: format!("the JPKI issuer at {}", issuer.url),
            unreachable: "tsm.issuer-unreachable",
            bad_answer: "protocol.issuer-answer",
        };
        self.exchange(peer, req, None).await
    }

    /// An `Apply` made an `Issue`: the JPKI issuer's credential for the application, sealed
    /// to the SIM under `idem`; or the refusal to answer the provider with (the issuer's
    /// `application.*` codes pass through).
    pub(super) async fn apply_at_issuer(
        &self,
        provider: &PartyId,
        idem: &IdempotencyKey,
        req: ControlRequest,
    ) -> Result<std::result::Result<ControlRequest, ControlResponse>> {
        let ControlRequest::Apply {
            subscriber_ref,
            card,
            applet,
            application,
            access,
        } = req
        else {
            return Ok(Ok(req));
        };
        self.refresh_card(&card.iccid).await?;
        let Some(card_certificate) = self.store.card_certificate(&card.iccid).await? else {
            return Ok(Err(ControlResponse::Rejected(err(
                Layer::Business,
                "business.no-card-certificate",
                format!(
                    "SIM {} has no registered key agreement certificate: the operator registers it with the SIM (register-card --card-certificate)",
                    card.iccid
                ),
            ))));
        };
        let asked = IssuerRequest::Issue {
            application,
            provider: provider.clone(),
            iccid: card.iccid.clone(),
            card_certificate,
            instance: applet.instance.clone(),
            request_id: *idem,
        };
        Ok(Ok(ControlRequest::Issue {
            subscriber_ref,
            card,
            applet,
            credential: match self.issue_at_issuer(asked).await? {
                Ok(c) => c,
                Err(e) => return Ok(Err(ControlResponse::Rejected(e))),
            },
            access,
        }))
    }

    async fn issue_at_issuer(
        &self,
        req: IssuerRequest,
    ) -> Result<std::result::Result<tsm_protocol::control::CredentialBundle, ErrorReport>> {
        match self.send_to_issuer(&req).await? {
            Ok(IssuerResponse::Issued { credential, .. }) => Ok(Ok(credential)),
            Ok(IssuerResponse::Rejected(e)) => {
                tracing::warn!(code = %e.code, "the JPKI issuer refused the application");
                Ok(Err(e))
            }
            Ok(other) => Ok(Err(err(
                Layer::Protocol,
                "protocol.issuer-answer",
                format!(
                    "the JPKI issuer answered an issue with {}",
                    match other {
                        IssuerResponse::Status { .. } => "a status",
                        _ => "something else",
                    }
                ),
            ))),
            Err(e) => Ok(Err(e)),
        }
    }

    /// A credential as the JPKI issuer sees it now: revoked here too when the issuer revoked
    /// its phone certificate (an unreachable issuer leaves it as it is, logged).
    pub(super) async fn linked_status(&self, c: CredentialRow) -> Result<CredentialRow> {
        if self.config.issuer.is_none() || c.state == "revoked" {
            return Ok(c);
        }
        let req = IssuerRequest::Status {
            serials: vec![c.serial.clone()],
        };
        match self.send_to_issuer(&req).await? {
            Ok(IssuerResponse::Status { revoked })
                if revoked.iter().any(|r| r.serial == c.serial) =>
            {
                let actor = self
                    .config
                    .issuer
                    .as_ref()
                    .map(|i| i.party.0.clone())
                    .unwrap_or_default();
                self.revoke_row(c, RevokeReason::SignatureRevoked, &actor)
                    .await
            }
            Ok(_) => Ok(c),
            Err(e) => {
                tracing::warn!(code = %e.code, detail = %e.detail, "the JPKI issuer's status could not be read");
                Ok(c)
            }
        }
    }
}
