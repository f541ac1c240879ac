//! A security domain's transient state: open secure channels per logical channel, the load
//! in progress, the personalisation target; and the view of the card it works on.

use crate::applet::{Aid, CHANNELS, ClassCatalog, OtherApplets};
use crate::registry;
use crate::registry::{RegistryEntry, privilege};
use crate::rng::CardRng;
use crate::sd_scp02::{Channel, Handshake};
use crate::store::Store;

/// An INSTALL [for load] waiting for its LOAD blocks.
pub(super) struct LoadContext {
    pub(super) elf: Aid,
    pub(super) sd: Aid,
    pub(super) hash: Option<Vec<u8>>,
    pub(super) next_block: u8,
    pub(super) data: Vec<u8>,
    /// Begun with a delegated-management token: the last LOAD answers a receipt.
    pub(super) delegated: bool,
}

/// One GET STATUS entry: AID, life cycle, privileges, module AIDs, the associated security
/// domain's AID (none for the issuer domain).
pub(super) type StatusItem = (Vec<u8>, u8, Vec<u8>, Vec<Vec<u8>>, Option<Vec<u8>>);

/// An open secure channel and the key version it was opened with.
pub(super) struct Session {
    pub(super) scp: Channel,
    pub(super) kvn: u8,
}

/// A security domain applet (ISD or SSD).
pub struct SecurityDomain {
    pub(super) aid: Aid,
    pub(super) is_isd: bool,
    pub(super) pending: Vec<Option<(Handshake, u8)>>,
    pub(super) sessions: Vec<Option<Session>>,
    pub(super) status_cursor: Vec<usize>,
    pub(super) load: Option<LoadContext>,
    pub(super) perso_target: Vec<Option<Aid>>,
}

/// What a security domain works on: the whole card's memory (security domains are
/// privileged classes), the registry, the card's randomness and the other applets.
pub(super) struct SdCtx<'c> {
    pub channel: u8,
    pub aid: &'c Aid,
    pub rng: &'c mut CardRng,
    pub store: &'c mut Store,
    pub registry: &'c [RegistryEntry],
    pub others: &'c mut dyn OtherApplets,
    pub classes: &'c dyn ClassCatalog,
}

impl SdCtx<'_> {
    /// This domain's registry entry.
    pub fn me(&self) -> Option<&RegistryEntry> {
        self.registry.iter().find(|e| e.aid == *self.aid)
    }
}

impl SecurityDomain {
    /// A security domain instance (transient state only; keys live in persistent memory).
    pub fn new(aid: Aid, is_isd: bool) -> Self {
        SecurityDomain {
            aid,
            is_isd,
            pending: (0..CHANNELS).map(|_| None).collect(),
            sessions: (0..CHANNELS).map(|_| None).collect(),
            status_cursor: vec![0; CHANNELS],
            load: None,
            perso_target: vec![None; CHANNELS],
        }
    }

    pub(super) fn prefix(&self) -> String {
        registry::sd_prefix(&self.aid)
    }

    pub(super) fn end_session(&mut self, ch: usize) {
        self.sessions[ch] = None;
        self.pending[ch] = None;
        self.perso_target[ch] = None;
    }

    /// Whether this domain may manage `entry` (the ISD manages everything; an SSD its own).
    pub(super) fn manages(&self, entry_sd: Option<&Aid>) -> bool {
        self.is_isd || entry_sd == Some(&self.aid)
    }

    pub(super) fn may_manage_content(&self, ctx: &SdCtx<'_>) -> bool {
        self.is_isd
            || ctx
                .me()
                .is_some_and(|e| e.has_privilege(1, privilege::AUTHORIZED_MANAGEMENT))
    }
}
