//! What one session of `kagi tsm load` runs: a SIM and the request that starts its download.

use tsm_protocol::control::ControlRequest;

/// A SIM ready for one session, and what the session asks.
pub(crate) struct Prepared {
    pub(crate) card: applet_sim::SimCard,
    pub(crate) iccid: String,
    pub(crate) cin: String,
    pub(crate) card_certificate: Vec<u8>,
    /// The provider's domain (made already, or to be made by the MNO-TSM).
    pub(crate) sd_aid: Vec<u8>,
    pub(crate) job: Job,
}

/// What a session asks of the TSM.
pub(crate) enum Job {
    /// One TSM: the provider's issue request with the credential it made.
    Issue {
        request: ControlRequest,
        request_id: tsm_protocol::IdempotencyKey,
    },
    /// Three organisations: the user's application; the access code goes to `contact`.
    Apply {
        request: ControlRequest,
        contact: String,
    },
}
