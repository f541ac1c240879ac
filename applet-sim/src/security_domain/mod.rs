//! Security domains: the issuer security domain (ISD) and supplementary ones (SSDs), the
//! GlobalPlatform card manager of the simulator.
//!
//! - SELECT returns card recognition data; GET DATA reports `66`, `E0`, `C1`, `CF`, `42`, `45`,
//!   `9F7F`.
//! - The card half of SCP03 runs per logical channel: INITIALIZE UPDATE / EXTERNAL
//!   AUTHENTICATE with persistent sequence counters and a persistent failed-authentication
//!   count that locks the keys, then secure messaging on every command.
//! - Card content management under an authenticated session: GET STATUS, PUT KEY, INSTALL [for
//!   load / install / make selectable / personalization], LOAD, DELETE, SET STATUS, STORE DATA
//!   (forwarded to the applet being personalised). The ISD manages everything; an SSD with
//!   Authorized Management manages its own content.
//!
//! - DAP verification: a domain with DAP Verification (or Mandated DAP) takes an RSA or P-256
//!   public key in PUT KEY and checks the DAP block of every load file associated with it.
//!
//! - Delegated management: an SSD with Delegated Management loads, installs and deletes its own
//!   content with tokens the ISD verifies (token key: the ISD's public key of version 70).
//!
//! Every multi-object change runs in a transaction, so power loss leaves the old or the new
//! state. Keys, counters and life cycles live in persistent memory (`sd/<AID>/…`, `card/…`).

mod channel;
mod content;
mod dap;
mod delegated;
mod dispatch;
mod setup;
mod state;
mod status;

pub use setup::{
    CardSetup, DEFAULT_AUTH_LIMIT, DEFAULT_ISD_AID, ISD_PRIVILEGES, MAX_LOAD_FILE, key_sets,
    put_keys,
};
pub use state::SecurityDomain;

use crate::class_table::{ClassError, ClassTable};
use crate::registry::{ISD_CLASS, SD_CLASS};

/// Registers the issuer security domain (`gp.isd`) and supplementary security domain
/// (`gp.sd`) classes. They are privileged: they see the whole card's memory.
pub fn register(table: &mut ClassTable) -> Result<(), ClassError> {
    table.register_privileged(ISD_CLASS, |i| {
        Ok(Box::new(SecurityDomain::new(i.aid.clone(), true)))
    })?;
    table.register_privileged(SD_CLASS, |i| {
        Ok(Box::new(SecurityDomain::new(i.aid.clone(), false)))
    })
}
