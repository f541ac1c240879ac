//! Errors as the protocol reports them: a layer, a stable machine code, whether a retry can
//! help, and a specific, log-safe message (never a key, PIN or access code).

use serde::{Deserialize, Serialize};

/// Where an error arose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layer {
    /// The message itself: signature, replay, expiry, encoding, idempotency.
    Protocol,
    /// The relay: lost connection, unavailable secure element, bad script format.
    Relay,
    /// The card: a status word, a failed authentication, a postcondition not met.
    Card,
    /// The business rules: unknown card, revoked credential, wrong access code.
    Business,
    /// The TSM itself: its database or key store.
    Tsm,
}

/// A refusal or failure, reported to a provider or a relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReport {
    /// The layer.
    pub layer: Layer,
    /// A stable code, `subject.reason` (e.g. `protocol.replayed`, `business.wrong-access`).
    pub code: String,
    /// Whether the same request may succeed later.
    pub retryable: bool,
    /// When to retry, if known.
    pub retry_after_ms: Option<u32>,
    /// The card's status word, for card errors.
    pub card_sw: Option<u16>,
    /// What happened and what to do, in words.
    pub detail: String,
}

impl ErrorReport {
    /// A report.
    pub fn new(layer: Layer, code: &str, retryable: bool, detail: impl Into<String>) -> Self {
        ErrorReport {
            layer,
            code: code.into(),
            retryable,
            retry_after_ms: None,
            card_sw: None,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for ErrorReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)?;
        if let Some(sw) = self.card_sw {
            write!(f, " (card {sw:04X})")?;
        }
        Ok(())
    }
}

impl From<&crate::signing::ProtocolError> for ErrorReport {
    fn from(e: &crate::signing::ProtocolError) -> Self {
        use crate::signing::ProtocolError as P;
        let code = e.code();
        let layer = if matches!(e, P::ReplayStore(_)) {
            Layer::Tsm
        } else {
            Layer::Protocol
        };
        ErrorReport::new(layer, code, matches!(e, P::ReplayStore(_)), e.to_string())
    }
}
