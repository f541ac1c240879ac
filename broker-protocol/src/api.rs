//! The broker's HTTP API as holders and services use it (JSON), and the administrators'
//! requests (signed like the TSM's control requests, `kagi_signed::signing`).

use crate::assertion::Assurance;
use base64ct::{Base64UrlUnpadded, Encoding};
use serde::{Deserialize, Serialize};

/// What the holder's card signs to log in: a tag, the broker's name and the broker's nonce.
/// The card signs it after its PIN, so a login needs the card and the PIN; the tag keeps the
/// signature from meaning anything else.
pub fn login_message(broker: &str, nonce: &[u8]) -> Vec<u8> {
    let mut m = b"kagi-broker login\0".to_vec();
    m.extend_from_slice(broker.as_bytes());
    m.push(0);
    m.extend_from_slice(nonce);
    m
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

/// Reads base64url without padding.
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    Base64UrlUnpadded::decode_vec(s).ok()
}

/// `POST /v1/holder/challenge` → a single-use nonce for a card login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The nonce (base64url).
    pub nonce: String,
    /// The broker's name (part of what the card signs).
    pub broker: String,
    /// Until when it can be used (Unix seconds).
    pub expires_at: u64,
}

/// `POST /v1/holder/login`: the card's answer to a challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardLogin {
    /// The challenge's nonce (base64url).
    pub nonce: String,
    /// The card's user-authentication certificate (DER, base64url).
    pub certificate: String,
    /// The card's signature over [`login_message`] (base64url).
    pub signature: String,
}

/// `POST /v1/holder/login-password`: the lower-assurance path.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordLogin {
    /// The holder's id.
    pub holder: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for PasswordLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordLogin({}, <redacted>)", self.holder)
    }
}

/// A logged-in holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The session token (keep it secret; it ends at `expires_at`).
    pub session: String,
    /// How the holder authenticated.
    pub assurance: Assurance,
    /// Unix seconds.
    pub expires_at: u64,
}

/// How a service authenticates its users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// AES-CMAC with a per-card key over the service's challenge.
    Mac,
    /// ECDSA P-256 (SHA-256) with a per-card key over the service's challenge.
    SignP256,
    /// RSA-2048 PKCS#1 v1.5 (SHA-256) with a per-card key over the service's challenge.
    SignRsa,
    /// A signed assertion (JWS ES256) from the broker.
    Assertion,
}

impl Method {
    /// Reads `mac`, `sign-p256`, `sign-rsa`, `assertion`.
    pub fn parse(s: &str) -> Option<Method> {
        serde_json::from_value(serde_json::Value::String(s.into())).ok()
    }

    /// The name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Mac => "mac",
            Method::SignP256 => "sign-p256",
            Method::SignRsa => "sign-rsa",
            Method::Assertion => "assertion",
        }
    }
}

/// `POST /v1/holder/act`: the holder asks the broker to authenticate to a service for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Act {
    /// The session token.
    pub session: String,
    /// The service.
    pub service: String,
    /// The holder's consent to act for them at this service (refused without).
    pub consent: bool,
    /// The service's challenge (base64url), for MAC and signature services.
    pub challenge: Option<String>,
    /// The service's nonce, for assertion services.
    pub nonce: Option<String>,
}

/// What the broker did for the holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActResult {
    /// The service.
    pub service: String,
    /// Its method.
    pub method: Method,
    /// The MAC over the challenge (base64url).
    pub mac: Option<String>,
    /// The signature over the challenge (base64url).
    pub signature: Option<String>,
    /// The signed assertion (compact JWS).
    pub assertion: Option<String>,
    /// Services with a [`BackChannel::Code`]: instead of the proof, a single-use code the
    /// holder's client hands to the service, which redeems it at the broker
    /// ([`Redeem`]) for the proof.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Services with a [`BackChannel::Push`]: `true` when the broker delivered the proof to
    /// the service itself (the answer then carries no proof).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delivered: bool,
}

/// How a service receives the broker's proof (MAC, signature or assertion) of a login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackChannel {
    /// Through the holder's client: the act's answer carries the proof (the default).
    Relayed,
    /// The act's answer carries only a single-use code; the service redeems it at the broker
    /// (`POST /v1/service/redeem`, a [`Redeem`] signed with its key as party
    /// `sp:<service id>`) and receives the proof for its own challenge.
    Code {
        /// The service's signing key: a P-256 public key (DER SubjectPublicKeyInfo).
        service_key: Vec<u8>,
        /// How long a code can be redeemed, seconds (1 to 600).
        code_secs: u32,
    },
    /// The broker delivers the proof itself: on an act it POSTs a [`Push`] (signed as the
    /// broker, to party `sp:<service id>`) to `url` over TLS, presenting its client
    /// certificate and accepting only a service certificate under `service_ca`. The holder's
    /// client is told only that the proof was delivered.
    Push {
        /// The service's endpoint (`https://…`).
        url: String,
        /// The CA certificates the service's TLS certificate must chain to (PEM).
        service_ca: Vec<u8>,
    },
}

impl BackChannel {
    /// `relayed`, `code` or `push`.
    pub fn name(&self) -> &'static str {
        match self {
            BackChannel::Relayed => "relayed",
            BackChannel::Code { .. } => "code",
            BackChannel::Push { .. } => "push",
        }
    }
}

/// What the broker POSTs to a push-mode service (signed, kind `ControlRequest`, from the
/// broker to [`service_party`]; the header's message id is fresh for every push): the proof
/// of one login, bound to the service, its challenge (or nonce) and the card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// The service the proof is for.
    pub service: String,
    /// The card as this service knows it: its pairwise id at the service.
    pub card: String,
    /// MAC and signature services: the challenge (base64url).
    pub challenge: Option<String>,
    /// Assertion services: the login's nonce.
    pub nonce: Option<String>,
    /// The service's method.
    pub method: Method,
    /// MAC services: the MAC over the challenge (base64url).
    pub mac: Option<String>,
    /// Signature services: the signature over the challenge (base64url).
    pub signature: Option<String>,
    /// Assertion services: the signed assertion (compact JWS).
    pub assertion: Option<String>,
}

/// The party a service signs its redemptions as: `sp:<service id>`.
pub fn service_party(service: &str) -> String {
    format!("sp:{service}")
}

/// `POST /v1/service/redeem` (signed request, kind `ControlRequest`, from
/// [`service_party`], to the broker): a service redeems a code its user's client handed it.
/// The answer is JSON: the [`ActResult`] for the service's challenge (or nonce), or an
/// [`ApiError`] (`redeem.*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redeem {
    /// The service (the code must have been made for it).
    pub service: String,
    /// The code.
    pub code: String,
    /// MAC and signature services: the challenge the holder's client was given
    /// (base64url); the code must have been made for it.
    pub challenge: Option<String>,
    /// Assertion services: the nonce of this login; the code must have been made for it.
    pub nonce: Option<String>,
}

/// A refusal, as every endpoint gives it (with a 4xx status).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// A stable code (`login.revoked`, `act.no-consent`, ...).
    pub code: String,
    /// What happened and what to do.
    pub detail: String,
}

/// One event of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub at: u64,
    /// The card (its authentication certificate's subject id).
    pub card: String,
    /// The service, if any.
    pub service: String,
    /// How the holder had authenticated.
    pub assurance: String,
    /// What (`login`, `act`, `enrol`, `revoke`, ...).
    pub event: String,
    /// `ok` or the refusal's code.
    pub outcome: String,
}

/// A service's policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePolicy {
    /// The service's id (the `aud` of its assertions).
    pub id: String,
    /// How it authenticates users.
    pub method: Method,
    /// The weakest holder authentication it accepts.
    pub min_assurance: Assurance,
    /// Hours of the day (UTC, `from` inclusive, `to` exclusive; may wrap midnight) in which
    /// the broker acts for it; `None`: always.
    pub allowed_hours: Option<(u8, u8)>,
}

impl ServicePolicy {
    /// Whether the policy allows acting at this UTC hour.
    pub fn allows_hour(&self, hour: u8) -> bool {
        match self.allowed_hours {
            None => true,
            Some((from, to)) if from <= to => (from..to).contains(&hour),
            Some((from, to)) => hour >= from || hour < to,
        }
    }
}

/// An administrator's request (signed, kind `ControlRequest`, from an `admin:` party).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminRequest {
    /// Register (or update) a service and its policy.
    RegisterService(ServicePolicy),
    /// Enrol a card's holder: the card's id (the JPKI authentication certificate's subject
    /// common name), the holder's id, and optionally a password verifier for the
    /// lower-assurance path: an Argon2id PHC string ([`kagi_signed::password`]; the broker
    /// refuses one below its floor, m=19456 KiB, t=2, p=1). No card is written.
    EnrolCard {
        /// The card's id.
        card: String,
        /// The holder's id.
        holder: String,
        /// `$argon2id$v=19$m=…,t=…,p=…$salt$hash`.
        password: Option<String>,
    },
    /// Make (or return the existing) credential of a card for a service.
    EnrolCredential {
        /// The card.
        card: String,
        /// The service.
        service: String,
    },
    /// Replace a card's credential for a service with a new key.
    RotateServiceKey {
        /// The card.
        card: String,
        /// The service.
        service: String,
    },
    /// Make `to` the key-encryption key of new records and re-wrap every record under it.
    RotateKek {
        /// The new KEK's id.
        to: String,
    },
    /// Revoke a card: every credential unusable at once, every session ended.
    RevokeCard {
        /// The card.
        card: String,
    },
    /// The audit trail (of one card, or all).
    Audit {
        /// The card.
        card: Option<String>,
    },
    /// How a registered service receives the broker's proofs ([`BackChannel`]).
    SetBackChannel {
        /// The service.
        service: String,
        /// The mode.
        back_channel: BackChannel,
    },
}

/// The broker's answer to an administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdminResponse {
    /// Done.
    Ok,
    /// A credential: its version, and what the service needs — the public key (DER
    /// SubjectPublicKeyInfo) of a signature credential, or the shared key of a MAC
    /// credential (given once, to the service's administrator).
    Credential {
        /// The credential's version.
        version: u32,
        /// Signature credentials: the public key.
        public_key: Option<Vec<u8>>,
        /// MAC credentials: the shared key.
        shared_key: Option<Vec<u8>>,
    },
    /// Where a KEK rotation stands.
    Rotation {
        /// The KEK of new records.
        kek: String,
        /// Records re-wrapped by this request.
        rewrapped: u64,
        /// Records of the older data-key form converted to the in-HSM form by this request
        /// (absent from an older broker's answer: 0).
        #[serde(default)]
        converted: u64,
        /// Records the rotation still has to do (under another KEK, or to convert).
        remaining: u64,
    },
    /// Audit entries, oldest first.
    Audit(Vec<AuditEntry>),
    /// Refused.
    Rejected {
        /// A stable code.
        code: String,
        /// What happened.
        detail: String,
    },
}
