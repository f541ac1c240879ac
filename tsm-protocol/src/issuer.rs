//! The JPKI issuer's API (seed 004 別紙1 ⑥⑦⑧⑯⑰): what an SP-TSM asks the JPKI system
//! (`kagi jpki-issuer serve`) and what it answers. Requests travel signed by the SP-TSM
//! (`crate::signing`, kind `ControlRequest`, addressed to the issuer, replay-protected by
//! message id on the issuer's side) and answers signed by the issuer, echoing the request's id
//! and nonce — the control envelope of [`crate::control`] with bodies of their own.
//!
//! The issuer verifies the user's application (signed with the My Number card's signature
//! key, `kagi_certs::application`) against the signature CA and its revocation data, makes the
//! phone's user-authentication key and certificate, keeps the link phone-certificate serial ↔
//! signature-certificate serial, and answers the credential **sealed to the SIM's own key
//! agreement key** (`card_wire::content`, after checking the SIM's certificate against the
//! card manufacturer's CA): the SP-TSM relays a bundle it cannot open.

use crate::control::CredentialBundle;
use crate::error::ErrorReport;
use crate::ids::{IdempotencyKey, PartyId};
use serde::{Deserialize, Serialize};

/// The phone certificate a transfer application moves, and the SIM it is on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moves {
    /// The phone certificate's serial (upper-case hex).
    pub from_serial: String,
    /// The SIM it is on (the application names it).
    pub from_iccid: String,
}

/// A request to the JPKI issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IssuerRequest {
    /// ⑥⑯: issue the phone's user-authentication credential for the user's signed
    /// application. Answered with [`IssuerResponse::Issued`].
    Issue {
        /// The application as `kagi jpki apply` wrote it (`kagi_certs::application`).
        application: Vec<u8>,
        /// The provider the application names (one the asking SP-TSM serves).
        provider: PartyId,
        /// The SIM the credential goes to (the application must name it).
        iccid: String,
        /// The SIM's key agreement certificate (DER) as its operator registered it: the
        /// issuer checks it against the card manufacturer's CA before sealing to it.
        card_certificate: Vec<u8>,
        /// The JPKI applet instance the sealed values are for.
        instance: Vec<u8>,
        /// The request id the sealed values are bound to (the SP-TSM's idempotency key of
        /// the issue: the card opens them only under it).
        request_id: IdempotencyKey,
        /// A **transfer** (`kagi jpki apply --kind transfer`): the phone certificate that
        /// moves to this SIM, linked to the same signature serial. The issuer also checks it
        /// is this SP-TSM's, on that SIM, not revoked, and of the application's card; the old
        /// one stays valid until the SP-TSM asks its revocation ([`IssuerRequest::Withdraw`],
        /// `sim-changed:`) once the new one is on the new SIM. `None`: a first issue.
        moves: Option<Moves>,
    },
    /// The on-card mode, step 1: a challenge for the SIM's applet to generate the phone's
    /// key against ([`card_wire::keygen`]: the issuer's ephemeral point and a fresh nonce,
    /// usable once, for this SIM, applet instance and request only). Answered with
    /// [`IssuerResponse::Challenge`].
    Challenge {
        /// The provider (one the asking SP-TSM serves).
        provider: PartyId,
        /// The SIM.
        iccid: String,
        /// The SIM's key agreement certificate (checked against the card manufacturer's CA).
        card_certificate: Vec<u8>,
        /// The JPKI applet instance that generates the key.
        instance: Vec<u8>,
        /// The SP-TSM's idempotency key of the issue (the [`IssuerRequest::Certify`] that
        /// follows must carry the same).
        request_id: IdempotencyKey,
    },
    /// The on-card mode, step 2 (⑥⑯⑰ with the key made on the SIM): the user's application
    /// and the SIM applet's answer to the challenge (its new public key, the proof of
    /// possession over the nonce, the card's tag under its certified key). The issuer checks
    /// the application as for [`IssuerRequest::Issue`], spends the nonce (once), checks the
    /// proof and certifies that key: the answer's [`IssuerResponse::Issued`] carries no
    /// sealed key (`sealed_key` empty), only the certificates and the sealed PIN.
    Certify {
        /// The application as `kagi jpki apply` wrote it.
        application: Vec<u8>,
        /// The provider the application names.
        provider: PartyId,
        /// The SIM (the application must name it).
        iccid: String,
        /// The SIM's key agreement certificate (as its operator registered it).
        card_certificate: Vec<u8>,
        /// The JPKI applet instance that made the key.
        instance: Vec<u8>,
        /// The request id of the challenge (and what the PIN is sealed under).
        request_id: IdempotencyKey,
        /// The challenge's nonce (32 bytes).
        nonce: Vec<u8>,
        /// The applet's answer: point (65) ‖ proof of possession (64) ‖ card tag (32).
        proof: Vec<u8>,
        /// A transfer's certificate that moves, checked as for [`IssuerRequest::Issue`];
        /// `None`: a first issue.
        moves: Option<Moves>,
    },
    /// ②③ at the SP-TSM's `Apply`, before anything is stored, mailed or asked of the MNO-TSM
    /// (the on-card mode, where the issuer otherwise sees the application only at
    /// [`IssuerRequest::Certify`]): the issuer runs an issue's application checks — signature,
    /// signature CA, its CRL and revocation list, freshness, the SIM and provider it names,
    /// this SP-TSM acting for that provider, the application not used before — and changes
    /// nothing but its audit trail: the nonce stays unspent (the Certify spends it, once).
    /// Answered with [`IssuerResponse::ApplicationChecked`] or refused with the code an issue
    /// would get.
    CheckApplication {
        /// The application as `kagi jpki apply` wrote it.
        application: Vec<u8>,
        /// The provider the application must name (one the asking SP-TSM serves).
        provider: PartyId,
        /// The SIM the application must name.
        iccid: String,
        /// A transfer application's certificate that moves (checked as an
        /// [`IssuerRequest::Issue`] with it would be); `None` for a first application.
        moves: Option<Moves>,
    },
    /// The standing of phone certificates this SP-TSM relayed (linked revocation). Answered
    /// with [`IssuerResponse::Status`].
    Status {
        /// Phone certificate serials (upper-case hex).
        serials: Vec<String>,
    },
    /// Revoke a phone certificate this SP-TSM got but could not deliver (the operation
    /// failed, expired or was cancelled, or the SP-TSM refused the application after the
    /// issuer had issued): the compensation that keeps no undelivered certificate valid.
    /// Also the SP-TSM's revocation of a delivered one: a `reason` starting `sim-lost:`,
    /// `sim-changed:` or `holder-request:` is recorded as that reason (and on the issuer's
    /// CRL with its reason code), any other as `withdrawn`.
    /// Answered with [`IssuerResponse::Status`] listing it revoked (also when it already
    /// was); refused (`issuer.unknown-certificate`) for a serial this SP-TSM was not issued.
    Withdraw {
        /// The phone certificate's serial (upper-case hex).
        serial: String,
        /// Why (log-safe words: `not-delivered`, `refused: business.in-progress`, …).
        reason: String,
    },
    /// Suspend (`hold: Some(true)`) or resume (`Some(false)`) a phone certificate this
    /// SP-TSM relayed, at the holder's request — or (`None`) only read its standing.
    /// Answered with [`IssuerResponse::Standing`]; a revoked one stays revoked.
    Suspension {
        /// The phone certificate's serial (upper-case hex).
        serial: String,
        /// What to do.
        hold: Option<bool>,
    },
    /// A new PIN for phone certificate `serial`, only on the holder's fresh **pin-reset**
    /// application (`kagi_certs::application::Kind::PinReset`) signed with the same My Number
    /// card its link names; the PIN is sealed to the SIM like an issued one and mailed to the
    /// holder. Answered with [`IssuerResponse::PinReset`].
    ResetPin {
        /// The signed pin-reset application.
        application: Vec<u8>,
        /// The phone certificate's serial (upper-case hex).
        serial: String,
        /// The SIM's key agreement certificate (DER), as at issue.
        card_certificate: Vec<u8>,
        /// The JPKI applet instance the PIN is for.
        instance: Vec<u8>,
        /// The request id the sealed PIN is bound to (the SP-TSM's idempotency key).
        request_id: IdempotencyKey,
    },
}

impl IssuerRequest {
    /// The provider a request is made for, when it names one (the issuer checks the asking
    /// SP-TSM acts for it).
    pub fn provider(&self) -> Option<&PartyId> {
        match self {
            IssuerRequest::Issue { provider, .. }
            | IssuerRequest::Challenge { provider, .. }
            | IssuerRequest::Certify { provider, .. }
            | IssuerRequest::CheckApplication { provider, .. } => Some(provider),
            _ => None,
        }
    }

    /// A short name for logs and the audit trail.
    pub fn name(&self) -> &'static str {
        match self {
            IssuerRequest::Issue { moves: None, .. } => "issue",
            IssuerRequest::Issue { moves: Some(_), .. } => "transfer",
            IssuerRequest::Challenge { .. } => "challenge",
            IssuerRequest::Certify { moves: None, .. } => "certify",
            IssuerRequest::Certify { moves: Some(_), .. } => "certify-transfer",
            IssuerRequest::CheckApplication { .. } => "check-application",
            IssuerRequest::Status { .. } => "status",
            IssuerRequest::Withdraw { .. } => "withdraw",
            IssuerRequest::Suspension { .. } => "suspension",
            IssuerRequest::ResetPin { .. } => "reset-pin",
        }
    }
}

/// A phone certificate the issuer revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedPhone {
    /// The phone certificate's serial (upper-case hex).
    pub serial: String,
    /// The linked signature certificate's serial (upper-case hex).
    pub sign_serial: String,
    /// Why: `sign-revoked` (the card's signature certificate was revoked) or `withdrawn`
    /// (the SP-TSM could not deliver it).
    pub reason: String,
    /// When (Unix milliseconds).
    pub revoked_at: u64,
}

/// The issuer's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IssuerResponse {
    /// The credential, its key and PIN sealed to the SIM and applet instance.
    Issued {
        /// The bundle the SP-TSM writes to the card (it cannot open its sealed parts).
        credential: CredentialBundle,
        /// The phone certificate's serial (upper-case hex).
        serial: String,
        /// Its notAfter (Unix seconds), never after the signature certificate's.
        not_after: u64,
    },
    /// A challenge for on-card key generation: `E ‖ nonce` ([`card_wire::keygen`]).
    Challenge {
        /// The issuer's ephemeral point (65) and the nonce (32).
        challenge: Vec<u8>,
        /// Until when the issuer accepts an answer to it (Unix milliseconds).
        expires_at: u64,
    },
    /// The application passed every check of [`IssuerRequest::CheckApplication`]: the
    /// signature certificate it was signed under.
    ApplicationChecked {
        /// The signature certificate's serial (upper-case hex, as kagi prints serials).
        sign_serial: String,
        /// Its notAfter (Unix seconds): no phone certificate of this application outlives it.
        not_after: u64,
    },
    /// Which of the asked serials are revoked (the others are not, or not this issuer's).
    Status {
        /// The revoked ones.
        revoked: Vec<RevokedPhone>,
    },
    /// Refused: `application.*` (the application's own checks, `kagi_certs::application`),
    /// `issuer.*` (the issuer's: an untrusted SP-TSM or provider, a SIM certificate that does
    /// not check), `keygen.*` (the on-card mode's: `keygen.unknown-challenge`,
    /// `keygen.replayed`, `keygen.possession`, `keygen.not-this-sim`, `keygen.malformed`),
    /// `protocol.*`.
    Rejected(ErrorReport),
    /// A phone certificate's standing now (the answer to a suspension).
    Standing {
        /// The phone certificate's serial (upper-case hex).
        serial: String,
        /// `active`, `held` (suspended) or `revoked`.
        state: String,
    },
    /// The new PIN, sealed to the SIM and applet instance (the SP-TSM writes it through its
    /// secure channel; it cannot open it).
    PinReset {
        /// The phone certificate's serial (upper-case hex).
        serial: String,
        /// The PIN sealed for the applet's PIN file.
        sealed_pin: Vec<u8>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_in_the_canonical_encoding() {
        let r = IssuerRequest::Status {
            serials: vec!["0A".into()],
        };
        let bytes = crate::codec::encode(&r).unwrap();
        assert_eq!(crate::codec::decode::<IssuerRequest>(&bytes).unwrap(), r);
        assert_eq!(r.name(), "status");
    }
}
