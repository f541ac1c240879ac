//! What one session of `kagi tsm load` runs: a SIM and the request that starts its download.

use kagi_fixtures::sim::{PROVIDER_SD, ProvisionedSim};
use tsm_protocol::control::ControlRequest;

/// The password every session's user registers (the load's own, not a secret).
pub(crate) const PASSWORD: &str = "load-password";

/// What each simulated phone sends for [`PASSWORD`] under `grant`: the key a phone derives
/// for a server-relief grant, computed here once before the clock starts (a real phone does
/// this Argon2id on its own processor, not on the TSM's cores), else the password as typed.
pub(crate) fn phone_entry(
    grant: &tsm_protocol::control::AccessGrant,
) -> Result<tsm_protocol::relay::PasswordEntry, String> {
    tsm_protocol::relay::PasswordEntry::from(PASSWORD)
        .for_derivation(
            grant.password.derivation(),
            &tsm_protocol::relief::DerivationLimits::production(),
        )
        .map_err(|e| e.to_string())
}

/// A SIM ready for one session, and what the session asks.
pub(crate) struct Prepared {
    pub(crate) card: applet_sim::SimCard,
    pub(crate) iccid: String,
    pub(crate) cin: String,
    pub(crate) card_certificate: Vec<u8>,
    /// The provider's domain (made already, or to be made by the MNO-TSM).
    pub(crate) sd_aid: Vec<u8>,
    pub(crate) job: Job,
    /// What the phone sends for the password ([`phone_entry`]).
    pub(crate) password: tsm_protocol::relay::PasswordEntry,
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
    /// The request was made already (`--applications-first`): the download only.
    Download {
        ticket: String,
        code: zeroize::Zeroizing<String>,
    },
}

impl Prepared {
    /// The session of `sim` (the provider's domain at [`PROVIDER_SD`]) that runs `job`.
    pub(crate) fn new(
        sim: ProvisionedSim,
        job: Job,
        password: tsm_protocol::relay::PasswordEntry,
    ) -> Prepared {
        Prepared {
            password,
            card: sim.card,
            iccid: sim.iccid,
            cin: sim.cin,
            card_certificate: sim.card_certificate,
            sd_aid: PROVIDER_SD.to_vec(),
            job,
        }
    }
}
