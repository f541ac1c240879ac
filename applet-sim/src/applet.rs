//! The applet seam: what an applet implements and what the runtime hands it.

use crate::rng::CardRng;
use card_wire::apdu::{Command, Response};
use card_wire::sw::StatusWord;

/// An application identifier (5 to 16 bytes).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Aid(Vec<u8>);

/// An AID of the wrong length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an AID is 5 to 16 bytes, got {0}")]
pub struct AidLengthError(pub usize);

impl Aid {
    /// An AID from 5 to 16 bytes.
    pub fn new(bytes: &[u8]) -> Result<Self, AidLengthError> {
        if (5..=16).contains(&bytes.len()) {
            Ok(Aid(bytes.to_vec()))
        } else {
            Err(AidLengthError(bytes.len()))
        }
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether `prefix` selects this AID (full or right-truncated partial match).
    pub fn matches(&self, prefix: &[u8]) -> bool {
        self.0.starts_with(prefix)
    }
}

impl core::fmt::Debug for Aid {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Aid({})", card_wire::hex_upper(&self.0))
    }
}

/// GlobalPlatform application life-cycle states (Card Specification 5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AppLifeCycle {
    /// Installed, not yet selectable.
    Installed = 0x03,
    /// Selectable.
    Selectable = 0x07,
    /// Personalized (security domains and applets after perso).
    Personalized = 0x0F,
}

/// What the runtime knows of one installed applet, as GET STATUS reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryEntry {
    /// The instance AID.
    pub aid: Aid,
    /// Life-cycle state byte.
    pub life_cycle: u8,
    /// Privileges (3 bytes).
    pub privileges: [u8; 3],
    /// Whether this entry is the issuer security domain.
    pub is_isd: bool,
}

/// What the runtime passes to an applet with each call.
pub struct AppletContext<'a> {
    /// The logical channel of the command.
    pub channel: u8,
    /// The card's random source.
    pub rng: &'a mut CardRng,
    /// Every installed applet (for security domains).
    pub registry: &'a [RegistryEntry],
}

/// An applet, in the Java Card sense: selected by AID, then fed commands.
///
/// The dispatcher owns SELECT routing, logical channels, command chaining and GET RESPONSE;
/// an applet sees whole commands and returns whole responses, or a status word as its error.
pub trait Applet: Send {
    /// Called when the applet becomes selected on a channel; returns the FCI data for the
    /// SELECT response. An error leaves no applet selected on that channel.
    fn select(&mut self, ctx: &mut AppletContext<'_>) -> Result<Vec<u8>, StatusWord>;

    /// Called before another applet is selected on the channel, or when the channel closes.
    fn deselect(&mut self, _ctx: &mut AppletContext<'_>) {}

    /// Processes one command (after chaining is resolved).
    fn process(
        &mut self,
        command: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, StatusWord>;

    /// Power loss or reset: clear everything transient (sessions, PIN-validated flags).
    fn reset(&mut self) {}

    /// Whether the applet accepts extended-length commands (Java Card `ExtendedLength`).
    fn extended_length(&self) -> bool {
        false
    }

    /// Whether this applet handles SELECT commands that are not for an installed AID (ISO
    /// file selection inside the applet).
    fn handles_file_select(&self) -> bool {
        false
    }
}
