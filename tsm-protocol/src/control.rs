//! The control API between a service provider (or the mobile operator) and the TSM. Every
//! request travels signed ([`crate::signing`], kind `ControlRequest`) and every answer is
//! signed by the TSM (`ControlResponse`), echoing the request's id and nonce.
//!
//! A credential's secrets never pass through the TSM in clear: the provider seals the private
//! key and the PIN to the card's key agreement key and the applet instance
//! (`card_wire::content`), after checking the card's certificate (which the TSM hands out as
//! the operator registered it, [`ControlRequest::CardCertificate`]) against the card
//! manufacturer's CA; only the card opens them, for that instance only. The relay sees even
//! less: everything it carries is SCP03-encrypted.

use crate::error::ErrorReport;
use crate::ids::OpId;
use crate::signing::Sealed;
use serde::{Deserialize, Serialize};

/// Which card: the SIM's ICCID as the operator knows it; the TSM binds it to the card's
/// image number (read under the secure channel, never taken from the relay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardTarget {
    /// The ICCID (digits).
    pub iccid: String,
}

/// The JPKI applet to put on the card, under the provider's security domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppletRef {
    /// Load file (package) AID.
    pub package: Vec<u8>,
    /// Module (class) AID, with the simulator class the load file names.
    pub module: Vec<u8>,
    /// The simulator class of the module (`jpki.ap`).
    pub class: String,
    /// The instance AID.
    pub instance: Vec<u8>,
}

impl AppletRef {
    /// kagi's JPKI applet (its simulator class), instance at the JPKI AID.
    pub fn jpki() -> AppletRef {
        AppletRef {
            package: card_wire::jpki::JPKI_PACKAGE.to_vec(),
            module: card_wire::jpki::JPKI_AID.to_vec(),
            class: "jpki.ap".into(),
            instance: card_wire::jpki::JPKI_AID.to_vec(),
        }
    }
}

/// A user-authentication credential as the provider (the JPKI side) hands it over: the key
/// and the PIN sealed to the card and the applet instance, under the request's idempotency
/// key as request id, the certificates in clear. The TSM keeps the sealed parts only while
/// the operation runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialBundle {
    /// The private key (PKCS#1 DER for RSA, the 32-byte scalar for P-256) sealed for the key
    /// file `0017` (`card_wire::content::seal`, role `KeyEf(0017)`); empty when the key was
    /// made on the SIM (the JPKI issuer's on-card mode: no private key travels).
    pub sealed_key: Vec<u8>,
    /// The user-authentication PIN, sealed likewise for the PIN file `0018`.
    pub sealed_pin: Vec<u8>,
    /// The certificate (DER).
    pub certificate: Vec<u8>,
    /// The issuing CA's certificate (DER).
    pub ca_certificate: Vec<u8>,
    /// The serial of the holder's My Number card signature certificate the application was
    /// signed with (hex): links the phone credential to the card.
    pub my_number_sign_serial: String,
}

/// How the user proves the download is theirs: the one-time access code the TSM returns
/// (delivered out of band by the provider), and a password the provider registered with the
/// user, given here as a verifier ([`GrantVerifier`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessGrant {
    /// The verifier of the user's password.
    pub password: GrantVerifier,
    /// Wrong code or password entries allowed before the operation is locked.
    pub max_attempts: u8,
    /// How long the download may take to happen (milliseconds from acceptance).
    pub valid_for_ms: u64,
}

/// The verifier of the user's password in an [`AccessGrant`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantVerifier {
    /// An Argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`), its parameters in
    /// the record. The TSM refuses one below the OWASP floor (m=19456 KiB, t=2, p=1) with
    /// `business.weak-verifier`.
    Argon2id(String),
    /// A PBKDF2-HMAC-SHA256 verifier, as grants carried before Argon2id. Only operations the
    /// TSM stored before still hold one (their password still checks); a new request carrying
    /// one is refused with `business.weak-verifier`.
    Pbkdf2 {
        /// Salt.
        salt: [u8; 16],
        /// Iterations.
        iterations: u32,
        /// PBKDF2-HMAC-SHA256(password, salt, iterations).
        hash: [u8; 32],
    },
    /// Argon2id computed on the user's device ([`crate::relief`]): the TSM keeps the
    /// derivation (parameters, salt) and a digest of the device's key, tells the relay the
    /// derivation when it asks for the entries, and checks the key in microseconds; the
    /// password never reaches the TSM. Refused below the OWASP floor like `Argon2id`.
    Argon2idRelief(crate::relief::ReliefVerifier),
}

impl std::fmt::Debug for GrantVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantVerifier::Argon2id(_) => f.write_str("Argon2id(<verifier>)"),
            GrantVerifier::Pbkdf2 { iterations, .. } => write!(f, "Pbkdf2({iterations})"),
            GrantVerifier::Argon2idRelief(v) => write!(f, "{v:?}"),
        }
    }
}

impl GrantVerifier {
    /// A new Argon2id verifier of `password` with `params` and a fresh salt (what the
    /// provider tools send: [`crate::password::Params::OWASP_MIN`]).
    pub fn argon2id(
        password: &str,
        params: &crate::password::Params,
    ) -> Result<GrantVerifier, crate::password::PasswordError> {
        crate::password::new_verifier(password, params).map(GrantVerifier::Argon2id)
    }

    /// A new server-relief verifier of `password` with `params` and a fresh salt (what the
    /// provider tools send: the device derives, the TSM only digests).
    pub fn relief(
        password: &str,
        params: &crate::password::Params,
    ) -> Result<GrantVerifier, crate::password::PasswordError> {
        crate::relief::ReliefVerifier::new(password, params).map(GrantVerifier::Argon2idRelief)
    }

    /// What the device derives with, for a server-relief verifier.
    pub fn derivation(&self) -> Option<&crate::relief::Derivation> {
        match self {
            GrantVerifier::Argon2idRelief(v) => Some(&v.derivation),
            _ => None,
        }
    }

    /// Whether a new grant may carry this verifier under `policy`: Argon2id at or above its
    /// floor; PBKDF2 never.
    pub fn accept(
        &self,
        policy: &crate::password::Policy,
    ) -> Result<(), crate::password::PasswordError> {
        match self {
            GrantVerifier::Argon2id(phc) => crate::password::accept(phc, policy).map(|_| ()),
            GrantVerifier::Argon2idRelief(v) => v.check_strength(policy),
            GrantVerifier::Pbkdf2 { iterations, .. } => {
                Err(crate::password::PasswordError::Malformed(format!(
                    "a PBKDF2 verifier ({iterations} iterations) is no longer accepted"
                )))
            }
        }
    }

    /// The verifier to check a typed password against; `None` if an Argon2id string does
    /// not parse (it then matches nothing) and for a server-relief verifier (checked by
    /// [`crate::access::check_entries`] itself).
    pub fn verifier(&self) -> Option<crate::password::Verifier> {
        match self {
            GrantVerifier::Argon2id(phc) => crate::password::Phc::parse(phc)
                .ok()
                .map(crate::password::Verifier::Argon2id),
            GrantVerifier::Pbkdf2 {
                salt,
                iterations,
                hash,
            } => Some(crate::password::Verifier::Pbkdf2 {
                salt: *salt,
                iterations: *iterations,
                hash: *hash,
            }),
            GrantVerifier::Argon2idRelief(_) => None,
        }
    }
}

/// Why a credential is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeReason {
    /// The phone or SIM was lost or stolen.
    CardLost,
    /// Replaced by a credential on another SIM.
    Superseded,
    /// The holder asked.
    UserRequest,
    /// The certificate expired.
    Expired,
    /// The JPKI issuer revoked the phone certificate because the linked signature certificate
    /// of the holder's My Number card was revoked (seed 004 ⑧).
    SignatureRevoked,
}

/// A request to the TSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Put a credential on a card: the applet installed when absent, key and certificate
    /// imported, PIN set, everything verified, a receipt signed.
    Issue {
        /// The provider's reference for the subscriber.
        subscriber_ref: String,
        /// The card.
        card: CardTarget,
        /// The applet.
        applet: AppletRef,
        /// The credential.
        credential: CredentialBundle,
        /// The user's access conditions.
        access: AccessGrant,
    },
    /// Revoke a credential: effective at once at the TSM (and in its revocation list); the
    /// applet is deleted from the card the next time it is reachable.
    Revoke {
        /// The issuing operation of the credential.
        credential: OpId,
        /// Why.
        reason: RevokeReason,
    },
    /// Move a credential to another SIM: the old one is revoked (superseded) and the new
    /// credential issued to the new card, as one operation.
    Transfer {
        /// The credential moved.
        credential: OpId,
        /// The new card.
        card: CardTarget,
        /// The new credential (its own key and certificate).
        new_credential: CredentialBundle,
        /// The user's access conditions for the new download.
        access: AccessGrant,
    },
    /// A credential's state: revoked or not, expired or not, where.
    CheckStatus {
        /// The issuing operation.
        credential: OpId,
    },
    /// Set a new PIN (sealed for the applet) on the card, through the relay.
    ResetPin {
        /// The issuing operation.
        credential: OpId,
        /// The new PIN, sealed to the card and instance for the PIN file (request id: this
        /// request's idempotency key).
        sealed_pin: Vec<u8>,
        /// The user's access conditions.
        access: AccessGrant,
    },
    /// Write provider data into the wallet applet (member id, tickets, points), through
    /// the relay.
    WalletUpdate {
        /// The card.
        card: CardTarget,
        /// The wallet instance.
        instance: Vec<u8>,
        /// The updates, applied on the card in one transaction, at most once each.
        updates: Vec<WalletUpdate>,
        /// The user's access conditions.
        access: AccessGrant,
    },
    /// An operation's state.
    GetOperation {
        /// Which.
        op: OpId,
    },
    /// Abandon an operation that has not completed.
    Cancel {
        /// Which.
        op: OpId,
    },
    /// MNO-TSM: a SIM is registered (ICCID ↔ card image number, the provider's security
    /// domain on it).
    RegisterCard {
        /// ICCID.
        iccid: String,
        /// Card image number (hex) the card reports under the secure channel.
        cin: String,
        /// The provider's security domain AID on that card.
        sd_aid: Vec<u8>,
        /// Free persistent memory the operator's records show (bytes).
        free_memory: u32,
        /// The card manufacturer's certificate for the SIM's key agreement key (DER), as the
        /// manufacturer delivered it with the SIM; providers check it before sealing.
        card_certificate: Option<Vec<u8>>,
    },
    /// MNO-TSM: create a provider's security domain on a SIM, through the relay, with the
    /// issuer domain's keys, and give it the provider's keys (diversified per card) in place
    /// of its initial ones.
    CreateSecurityDomain {
        /// The SIM.
        iccid: String,
        /// The new domain's AID.
        sd_aid: Vec<u8>,
        /// Its privileges (Security Domain at least; `80 40 00` with Authorized Management).
        privileges: Vec<u8>,
        /// The provider the domain is for (the TSM holds its key set).
        provider: crate::ids::PartyId,
        /// The user's access conditions.
        access: AccessGrant,
    },
    /// MNO-TSM: the subscriber's SIM changed (the provider should transfer credentials).
    SimChanged {
        /// Old ICCID.
        old_iccid: String,
        /// New ICCID.
        new_iccid: String,
    },
    /// MNO-TSM: the SIM was reported lost: every credential on it is revoked at once.
    CardLost {
        /// ICCID.
        iccid: String,
    },
    /// MNO-TSM: whether a SIM can take a credential (registered, not lost, enough memory).
    CheckEligibility {
        /// ICCID.
        iccid: String,
        /// Bytes needed.
        memory_needed: u32,
    },
    /// A provider: the certificate of a registered SIM's key agreement key, to check against
    /// the manufacturer CA and seal content to.
    CardCertificate {
        /// ICCID.
        iccid: String,
    },
    /// SP-TSM to MNO-TSM (seed 004 step ⑭): prepare a SIM for a provider — create the
    /// provider's security domain with initial keys only the two TSMs know, and load and
    /// install the JPKI applet into it — in a relay session the MNO-TSM runs itself under the
    /// SIM's issuer domain keys (⑮). Answered with [`ControlResponse::Prepared`]. The MNO-TSM
    /// acts only for a provider in its trust list that the asking SP-TSM serves, on a SIM it
    /// registered whose provider domain (if one is on record) is that provider's.
    PrepareSim {
        /// The SIM.
        iccid: String,
        /// The provider the domain is for.
        provider: crate::ids::PartyId,
        /// The new domain's AID.
        sd_aid: Vec<u8>,
        /// Its privileges (Security Domain at least).
        privileges: Vec<u8>,
        /// The JPKI applet instance to install into it.
        instance: Vec<u8>,
        /// The SP-TSM's reply key (P-256, uncompressed SEC1): the new domain's initial keys
        /// are sealed to it ([`crate::keyseal`]), so only this SP-TSM reads them.
        reply_key: Vec<u8>,
    },
    /// SP-TSM to MNO-TSM: a SIM as the operator registered it (the SP-TSM keeps a copy of
    /// the records it needs, refreshed before each use). Answered with
    /// [`ControlResponse::CardRecord`].
    CardRecord {
        /// ICCID.
        iccid: String,
    },
    /// A provider, at an SP-TSM linked to a JPKI issuer (seed 004 ②⑤⑯⑰): put a credential
    /// on a card for the user's signed application. The SP-TSM asks the JPKI issuer
    /// ([`crate::issuer::IssuerRequest::Issue`]), which verifies the application and answers
    /// the credential sealed to the SIM; from then on it is an [`ControlRequest::Issue`]. The
    /// provider never holds the key, the PIN or the issuing CA.
    Apply {
        /// The provider's reference for the subscriber.
        subscriber_ref: String,
        /// The card.
        card: CardTarget,
        /// The applet.
        applet: AppletRef,
        /// The application as `kagi jpki apply` wrote it.
        application: Vec<u8>,
        /// The user's access conditions.
        access: AccessGrant,
    },
    /// The holder's request, through the provider, to suspend (`hold`) or resume a
    /// credential the JPKI issuer made: recorded at the issuer (its CRL lists a suspended
    /// certificate as certificateHold, and drops it on resumption). Answered with
    /// [`ControlResponse::Credential`] (`state` `suspended` or `active`); a revoked one stays
    /// revoked.
    Suspend {
        /// The issuing operation of the credential.
        credential: OpId,
        /// `true` suspend, `false` resume.
        hold: bool,
    },
    /// Reset a credential's PIN on the holder's fresh **pin-reset** application (signed with
    /// the My Number card the credential is linked to, `kagi jpki apply --kind pin-reset`):
    /// the JPKI issuer checks it and makes the PIN, sealed to the SIM; the request goes on as
    /// a [`ControlRequest::ResetPin`] (the access code mailed to the application's contact).
    /// An SP-TSM with a JPKI issuer takes no other PIN reset.
    ApplyPinReset {
        /// The issuing operation.
        credential: OpId,
        /// The signed pin-reset application.
        application: Vec<u8>,
        /// The user's access conditions.
        access: AccessGrant,
    },
    /// Move a credential the JPKI issuer made to a new SIM — of the same operator or another
    /// (an MVNO) — on the holder's fresh **transfer** application (`kagi jpki apply --kind
    /// transfer --from-iccid OLD --iccid NEW`, signed with the My Number card the credential
    /// is linked to). The JPKI issuer checks it as an application for the new SIM and that
    /// its card is the old certificate's, and makes the new credential (linked to the same
    /// signature serial); the request goes on as a [`ControlRequest::Transfer`]: downloaded
    /// through the MNO-TSM serving the new SIM, and only once it is written is the old
    /// certificate revoked (`superseded`).
    ApplyTransfer {
        /// The issuing operation of the credential that moves (on the old SIM).
        credential: OpId,
        /// The new SIM.
        card: CardTarget,
        /// The applet on the new SIM.
        applet: AppletRef,
        /// The signed transfer application.
        application: Vec<u8>,
        /// The user's access conditions for the new download.
        access: AccessGrant,
    },
    /// SP-TSM to the MNO-TSM serving a SIM: the provider's credential moved off the SIM (a
    /// transfer), so the provider's security domain there goes — the MNO-TSM drops it from
    /// the SIM's record and, for an active SIM, queues its deletion on the card (a
    /// `retire-domain` operation whose ticket the operator fetches with
    /// [`ControlRequest::RetireTicket`]). Answered `Ok` (also when repeated). Only the SP-TSM acting for the
    /// provider, about a SIM of the MNO-TSM's operators on record for that domain (or none).
    DeleteProviderDomain {
        /// The old SIM.
        iccid: String,
        /// The provider whose domain goes.
        provider: crate::ids::PartyId,
        /// Its domain's AID.
        sd_aid: Vec<u8>,
    },
    /// Operator to its MNO-TSM: the device ticket of the SIM's `retire-domain` operation
    /// (queued when a [`ControlRequest::DeleteProviderDomain`] was accepted), for the
    /// subscriber's phone to run `kagi relay` with the old SIM: it deletes the provider's
    /// domain there with the issuer-domain keys. Answered [`ControlResponse::Accepted`] (no
    /// access code: the ticket alone opens the session); a ticket that expired or was used is
    /// replaced by a fresh one. Refused for a SIM that is not active (a lost SIM gets none)
    /// or that no domain deletion was accepted for.
    RetireTicket {
        /// The old SIM.
        iccid: String,
    },
}

/// The operation kind (and [`ControlRequest::name`]) of a SIM preparation: an MNO-TSM's
/// operation that creates a provider's domain on a SIM and installs the applet in it.
pub const PREPARE_SIM: &str = "prepare-sim";

impl ControlRequest {
    /// A short name for logs and the audit trail.
    pub fn name(&self) -> &'static str {
        match self {
            ControlRequest::Issue { .. } => "issue",
            ControlRequest::Revoke { .. } => "revoke",
            ControlRequest::Transfer { .. } => "transfer",
            ControlRequest::CheckStatus { .. } => "check-status",
            ControlRequest::ResetPin { .. } => "reset-pin",
            ControlRequest::WalletUpdate { .. } => "wallet-update",
            ControlRequest::GetOperation { .. } => "get-operation",
            ControlRequest::Cancel { .. } => "cancel",
            ControlRequest::RegisterCard { .. } => "register-card",
            ControlRequest::SimChanged { .. } => "sim-changed",
            ControlRequest::CardLost { .. } => "card-lost",
            ControlRequest::CheckEligibility { .. } => "check-eligibility",
            ControlRequest::CreateSecurityDomain { .. } => "create-sd",
            ControlRequest::CardCertificate { .. } => "card-certificate",
            ControlRequest::PrepareSim { .. } => PREPARE_SIM,
            ControlRequest::CardRecord { .. } => "card-record",
            ControlRequest::Apply { .. } => "apply",
            ControlRequest::Suspend { hold: true, .. } => "suspend",
            ControlRequest::Suspend { hold: false, .. } => "resume",
            ControlRequest::ApplyPinReset { .. } => "apply-pin-reset",
            ControlRequest::ApplyTransfer { .. } => "apply-transfer",
            ControlRequest::DeleteProviderDomain { .. } => "delete-domain",
            ControlRequest::RetireTicket { .. } => "retire-ticket",
        }
    }

    /// Whether the request needs an idempotency key (it creates an operation).
    pub fn creates_operation(&self) -> bool {
        matches!(
            self,
            ControlRequest::Issue { .. }
                | ControlRequest::Apply { .. }
                | ControlRequest::Revoke { .. }
                | ControlRequest::Transfer { .. }
                | ControlRequest::ResetPin { .. }
                | ControlRequest::ApplyPinReset { .. }
                | ControlRequest::ApplyTransfer { .. }
                | ControlRequest::WalletUpdate { .. }
                | ControlRequest::CreateSecurityDomain { .. }
                | ControlRequest::PrepareSim { .. }
        )
    }
}

/// One change to the wallet applet. Each carries an id the card remembers, so an update
/// delivered twice (a lost answer, a resumed session) applies once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalletUpdate {
    /// Unique per update (the card keeps the ids it applied).
    pub id: [u8; 8],
    /// What changes.
    pub change: WalletChange,
}

/// A change to the wallet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WalletChange {
    /// Set the member id.
    SetMemberId(String),
    /// Add a ticket.
    AddTicket(String),
    /// Remove a ticket.
    RemoveTicket(String),
    /// Add (or, negative, take) points; refused if the balance would go below zero.
    Points(i32),
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpState {
    /// Accepted; waiting for the phone app to connect.
    AwaitingDevice,
    /// A relay is connected; the user has not yet given the access code and password.
    DeviceBound,
    /// Running card scripts.
    Running,
    /// Interrupted (lost relay, unverifiable answers): continues when a relay reconnects.
    Interrupted,
    /// Done, with a receipt.
    Completed,
    /// Failed (a card refusal, an authentication failure, too many wrong codes).
    Failed,
    /// Its time ran out.
    Expired,
    /// Cancelled by the provider.
    Cancelled,
}

impl OpState {
    /// Whether the operation can still change.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OpState::Completed | OpState::Failed | OpState::Expired | OpState::Cancelled
        )
    }

    /// The word the database and logs use.
    pub fn name(self) -> &'static str {
        match self {
            OpState::AwaitingDevice => "awaiting-device",
            OpState::DeviceBound => "device-bound",
            OpState::Running => "running",
            OpState::Interrupted => "interrupted",
            OpState::Completed => "completed",
            OpState::Failed => "failed",
            OpState::Expired => "expired",
            OpState::Cancelled => "cancelled",
        }
    }
}

/// A credential's standing at the TSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialStatus {
    /// The issuing operation.
    pub credential: OpId,
    /// The card's ICCID.
    pub iccid: String,
    /// `active`, `pending` (not yet on the card), `suspended` (on hold at the JPKI issuer),
    /// `revoked`.
    pub state: String,
    /// Why it was revoked.
    pub revoked: Option<RevokeReason>,
    /// The certificate serial (hex).
    pub serial: String,
    /// notAfter (Unix seconds).
    pub not_after: u64,
    /// Whether notAfter has passed.
    pub expired: bool,
    /// The linked My Number signature-certificate serial.
    pub my_number_sign_serial: String,
    /// Whether the applet still has to be deleted from the card (revoked while unreachable).
    pub card_deletion_pending: bool,
}

/// The TSM's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    /// An operation was created (or, for a repeated idempotency key, already exists).
    Accepted {
        /// The operation.
        op: OpId,
        /// Its state.
        state: OpState,
        /// For the phone app: the single-use device ticket (deliver with the app link).
        device_ticket: Option<String>,
        /// For the user, out of band: the one-time access code.
        access_code: Option<String>,
        /// When the operation expires (Unix milliseconds).
        expires_at: u64,
    },
    /// An operation's state, with its receipt once completed.
    Operation(OperationView),
    /// A credential's standing.
    Credential(CredentialStatus),
    /// Whether a SIM can take a credential.
    Eligibility {
        /// Yes or no.
        eligible: bool,
        /// Why not.
        reason: String,
        /// Free memory on record.
        free_memory: u32,
    },
    /// Done (for requests without an operation).
    Ok,
    /// Refused.
    Rejected(ErrorReport),
    /// A SIM's key agreement certificate as the operator registered it.
    CardCertificate {
        /// ICCID.
        iccid: String,
        /// The certificate (DER).
        certificate: Vec<u8>,
    },
    /// The MNO-TSM accepted a [`ControlRequest::PrepareSim`] (or, for a repeated idempotency
    /// key, already has it).
    Prepared {
        /// The MNO-TSM's operation.
        op: OpId,
        /// Its state.
        state: OpState,
        /// The single-use ticket the phone's relay presents at the MNO-TSM (the SP-TSM hands
        /// it over in a [`crate::relay::ServerMsg::Continue`]); `None` once the operation is
        /// over.
        device_ticket: Option<String>,
        /// The initial keys the new domain gets, sealed to the asking SP-TSM's reply key
        /// ([`crate::keyseal`]: bound to both parties, the provider, the SIM, the domain and
        /// this operation): the SP-TSM opens the domain with them once and replaces them with
        /// its own (GP PUT KEY) before writing anything there.
        sealed_initial_keys: Vec<u8>,
        /// When the operation expires (Unix milliseconds).
        expires_at: u64,
    },
    /// A SIM as its operator registered it with the MNO-TSM.
    CardRecord {
        /// ICCID.
        iccid: String,
        /// Card image number (hex).
        cin: String,
        /// The provider domain's AID on it, when the operator named one.
        sd_aid: Vec<u8>,
        /// `active`, `lost` or `replaced`.
        state: String,
        /// The ICCID that replaced it.
        replaced_by: Option<String>,
        /// Free memory on record (bytes).
        free_memory: u32,
        /// The operator.
        operator: crate::ids::PartyId,
        /// The manufacturer's certificate of its key agreement key (DER).
        card_certificate: Option<Vec<u8>>,
    },
}

/// A security domain's initial SCP03 key set (AES-128), handed from the MNO-TSM to the SP-TSM
/// in a signed answer, sealed to the SP-TSM ([`crate::keyseal`]). Zeroized on drop; never
/// printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitialKeys {
    /// Key version number.
    pub kvn: u8,
    /// K-ENC.
    pub enc: [u8; 16],
    /// K-MAC.
    pub mac: [u8; 16],
    /// K-DEK.
    pub dek: [u8; 16],
}

impl std::fmt::Debug for InitialKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InitialKeys(kvn {:02X}, <redacted>)", self.kvn)
    }
}

impl Drop for InitialKeys {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.enc);
        zeroize::Zeroize::zeroize(&mut self.mac);
        zeroize::Zeroize::zeroize(&mut self.dek);
    }
}

/// What the TSM tells about an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationView {
    /// Which.
    pub op: OpId,
    /// What it does.
    pub kind: String,
    /// Where it stands.
    pub state: OpState,
    /// Steps done (log-safe names).
    pub steps: Vec<String>,
    /// The signed receipt (kind `Receipt`), once completed.
    pub receipt: Option<Sealed>,
    /// Why it failed.
    pub error: Option<ErrorReport>,
    /// Child operations (a transfer's revocation and issuance).
    pub children: Vec<OpId>,
}

pub use kagi_signed::request::{Outgoing, open_answer_as, sign_request};

/// Opens the TSM's answer to `sent`: signed by a trusted TSM key, addressed to us, fresh,
/// and echoing the request's id and nonce.
pub fn open_answer(
    bytes: &[u8],
    sent: &crate::signing::Header,
    trust: &crate::signing::Trust,
    now: u64,
) -> Result<ControlResponse, crate::signing::ProtocolError> {
    open_answer_as(bytes, sent, trust, now)
}
