//! Operation records as TSMs stored them before the access grant carried an Argon2id verifier
//! (format 1: a PBKDF2 salt, iteration count and hash in every grant). They still decode: a
//! stored operation keeps its grant, now as [`GrantVerifier::Pbkdf2`], so its user's password
//! still checks. New records are written in format 2, `[0xFF, 0x02]` followed by the
//! canonical encoding of [`OpData`] (a format-1 record starts with the request's variant
//! index, never `0xFF`).
//!
//! The mirror types below keep format 1's field order. Each serialises in format 2 (the grant
//! through `#[serde(into)]`), so a format-1 record is read by decoding it into the mirror and
//! re-encoding that as format 2.

use super::OpData;
use serde::{Deserialize, Serialize};
use tsm_protocol::control::{
    AccessGrant, AppletRef, CardTarget, CredentialBundle, GrantVerifier, RevokeReason, WalletUpdate,
};
use tsm_protocol::{ErrorReport, MsgId, Nonce, OpId, PartyId, Sealed, SessionId};

/// The tag of a format-2 record.
pub const FORMAT_2: [u8; 2] = [0xFF, 0x02];

/// A format-2 record of `data`.
pub fn encode(data: &OpData) -> Result<Vec<u8>, tsm_protocol::codec::CodecError> {
    let mut out = FORMAT_2.to_vec();
    out.extend(tsm_protocol::codec::encode(data)?);
    Ok(out)
}

/// A record of either format; `None` if it is neither.
pub fn decode(blob: &[u8]) -> Option<OpData> {
    if let Some(rest) = blob.strip_prefix(&FORMAT_2) {
        return tsm_protocol::codec::decode(rest).ok();
    }
    if blob.first() == Some(&0xFF) {
        return None; // a later format this TSM does not know
    }
    let old: OpDataV1 = postcard::from_bytes(blob).ok()?;
    let again = postcard::to_stdvec(&old).ok()?;
    tsm_protocol::codec::decode(&again).ok()
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(into = "AccessGrant")]
struct GrantV1 {
    password_salt: [u8; 16],
    password_iterations: u32,
    password_verifier: [u8; 32],
    max_attempts: u8,
    valid_for_ms: u64,
}

impl From<GrantV1> for AccessGrant {
    fn from(g: GrantV1) -> AccessGrant {
        AccessGrant {
            password: GrantVerifier::Pbkdf2 {
                salt: g.password_salt,
                iterations: g.password_iterations,
                hash: g.password_verifier,
            },
            max_attempts: g.max_attempts,
            valid_for_ms: g.valid_for_ms,
        }
    }
}

#[derive(Serialize, Deserialize)]
enum RequestV1 {
    Issue {
        subscriber_ref: String,
        card: CardTarget,
        applet: AppletRef,
        credential: CredentialBundle,
        access: GrantV1,
    },
    Revoke {
        credential: OpId,
        reason: RevokeReason,
    },
    Transfer {
        credential: OpId,
        card: CardTarget,
        new_credential: CredentialBundle,
        access: GrantV1,
    },
    CheckStatus {
        credential: OpId,
    },
    ResetPin {
        credential: OpId,
        sealed_pin: Vec<u8>,
        access: GrantV1,
    },
    WalletUpdate {
        card: CardTarget,
        instance: Vec<u8>,
        updates: Vec<WalletUpdate>,
        access: GrantV1,
    },
    GetOperation {
        op: OpId,
    },
    Cancel {
        op: OpId,
    },
    RegisterCard {
        iccid: String,
        cin: String,
        sd_aid: Vec<u8>,
        free_memory: u32,
    },
    CreateSecurityDomain {
        iccid: String,
        sd_aid: Vec<u8>,
        privileges: Vec<u8>,
        provider: PartyId,
        access: GrantV1,
    },
    SimChanged {
        old_iccid: String,
        new_iccid: String,
    },
    CardLost {
        iccid: String,
    },
    CheckEligibility {
        iccid: String,
        memory_needed: u32,
    },
}

#[derive(Serialize, Deserialize)]
struct OpDataV1 {
    request: RequestV1,
    request_id: (MsgId, Nonce),
    code_hash: [u8; 32],
    attempts_left: u8,
    steps: Vec<String>,
    receipt: Option<Sealed>,
    error: Option<ErrorReport>,
    proof_nonce: [u8; 32],
    children: Vec<OpId>,
    sealed_secrets: Vec<u8>,
    cin: String,
    session: Option<SessionId>,
    phase: u8,
}
