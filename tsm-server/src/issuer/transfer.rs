//! Transfer to a new SIM (issue #16's lifecycle), the issuer's part: the holder's **transfer**
//! application (`kagi_certs::application::check_transfer`: the old SIM's ICCID bound into
//! the signature under its own domain) is checked as an issue application for the new SIM —
//! signature, signature CA and CRL, freshness, the nonce recorded once — and must be signed by
//! the **same card** the moving phone certificate is linked to (`application.other-card`);
//! that certificate must be this SP-TSM's (`issuer.unknown-certificate`), on the SIM the
//! application names as the old one (`issuer.wrong-sim`) and not revoked
//! (`issuer.not-active`). The new certificate is issued as at first download — its key made
//! here and sealed to the new SIM (an `Issue` that `moves` it), or made on the new SIM and
//! certified (a `Certify` that `moves` it, the on-card mode) — linked to the same signature
//! serial; the old one is revoked only when the SP-TSM asks (`Withdraw` with `sim-changed:`,
//! its CRL reason `superseded`) after the new credential is on the new SIM.

use super::{Issuer, IssuerError, reject, store};
use tsm_protocol::issuer::{IssuerResponse, Moves};
use tsm_protocol::{Layer, PartyId};

/// The certificate a transfer moves.
#[derive(Debug, Clone, Copy)]
pub(super) struct Transfer<'a> {
    /// The phone certificate's serial (upper-case hex).
    pub from_serial: &'a str,
    /// The SIM it is on (bound into the application's signature).
    pub from_iccid: &'a str,
}

/// What an [`IssuerRequest::Issue`] or [`IssuerRequest::Certify`] for SIM `iccid` `moves`
/// there (a transfer), or the refusal when that is the SIM the certificate is on.
pub(super) fn moving<'a>(
    iccid: &str,
    moves: Option<&'a Moves>,
) -> Result<Option<Transfer<'a>>, Box<IssuerResponse>> {
    match moves {
        Some(m) if m.from_iccid == iccid => Err(Box::new(reject(
            Layer::Business,
            "issuer.same-sim",
            format!("SIM {iccid} is the one the credential is on: transfer to another SIM"),
        ))),
        m => Ok(m.map(|m| Transfer {
            from_serial: &m.from_serial,
            from_iccid: &m.from_iccid,
        })),
    }
}

impl Issuer {
    /// Why the verified transfer application of the card of `sign_serial` may not move `t`'s
    /// certificate, if it may not.
    pub(super) async fn transfer_refusal(
        &self,
        sender: &PartyId,
        t: &Transfer<'_>,
        sign_serial: &str,
    ) -> Result<Option<IssuerResponse>, IssuerError> {
        let Some(link) = store::link(&self.db, t.from_serial)
            .await?
            .filter(|l| l.sp_tsm == sender.0)
        else {
            return Ok(Some(reject(
                Layer::Business,
                "issuer.unknown-certificate",
                format!(
                    "no phone certificate {} was issued to {sender}",
                    t.from_serial
                ),
            )));
        };
        let refusal = if link.iccid != t.from_iccid {
            Some((
                "issuer.wrong-sim",
                format!(
                    "phone certificate {} is on SIM {}, not {}",
                    link.serial, link.iccid, t.from_iccid
                ),
            ))
        } else if link.state == "revoked" {
            Some((
                "issuer.not-active",
                format!(
                    "phone certificate {} is revoked: nothing to transfer (apply for a new one)",
                    link.serial
                ),
            ))
        } else if link.sign_serial != sign_serial {
            Some((
                "application.other-card",
                format!(
                    "the transfer application is signed by the card of signature certificate {sign_serial}, the phone certificate is linked to {}: sign with that My Number card",
                    link.sign_serial
                ),
            ))
        } else {
            None
        };
        Ok(refusal.map(|(code, detail)| {
            tracing::warn!(sender = %sender, serial = %link.serial, code, "transfer refused");
            reject(Layer::Business, code, detail)
        }))
    }
}
