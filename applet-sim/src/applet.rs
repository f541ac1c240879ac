//! The applet seam: what an applet implements and what the runtime hands it.

use crate::applet_store::AppletStore;
use crate::callers::Callers;
use crate::registry::RegistryEntry;
use crate::rng::CardRng;
use crate::store::{Store, StoreError};
use card_wire::apdu::{Command, Response};
use card_wire::sw::StatusWord;

pub use card_wire::aid::Aid;

/// An AID of the wrong length or in bad text (kept under its old name).
pub type AidLengthError = card_wire::aid::AidError;

/// Number of logical channels (0–19).
pub const CHANNELS: usize = 20;

/// What the card's class table tells a security domain (LOAD and INSTALL check against it).
pub trait ClassCatalog {
    /// Whether a load file may name `class`.
    fn knows(&self, class: &str) -> bool;

    /// Whether an instance of `class` can be installed as `aid` with `params`: `None` if so,
    /// otherwise the status word INSTALL answers.
    fn check_install(&self, class: &str, aid: &Aid, params: &[u8]) -> Option<StatusWord>;
}

/// A persistent write failed: power lost (tearing) or memory full. Applets turn it into a
/// status word with `?`; the runtime notices a power loss on its own.
impl From<StoreError> for StatusWord {
    fn from(e: StoreError) -> StatusWord {
        match e {
            StoreError::Torn => StatusWord::MEMORY_FAILURE,
            StoreError::Full { .. } => StatusWord::NOT_ENOUGH_MEMORY,
        }
    }
}

/// Access from one applet to the others (a security domain forwarding STORE DATA to the
/// applet it personalises).
pub trait OtherApplets {
    /// Hands a personalisation command to the applet `aid`.
    fn personalize(
        &mut self,
        aid: &Aid,
        cmd: &Command,
        channel: u8,
        rng: &mut CardRng,
        store: &mut Store,
        registry: &[RegistryEntry],
    ) -> Result<Response, StatusWord>;

    /// Asks applet `server` for its shareable object for `client` (`None`: refused, absent,
    /// or not reachable from here); `callers` are the contexts whose calls are under way.
    fn shareable_object(
        &mut self,
        _server: &Aid,
        _client: &Aid,
        _parameter: u8,
        _rng: &mut CardRng,
        _store: &mut Store,
        _callers: Callers<'_>,
    ) -> Result<Option<kagi_jcvm::share::Sio>, kagi_jcvm::StoreFail> {
        Ok(None)
    }

    /// Runs a shareable call in the context of applet `owner` (the default refuses);
    /// `callers` are the contexts whose calls are under way.
    fn call_shareable(
        &mut self,
        _owner: &Aid,
        call: kagi_jcvm::share::ShareCall,
        _rng: &mut CardRng,
        _store: &mut Store,
        _callers: Callers<'_>,
    ) -> kagi_jcvm::share::ShareOutcome {
        kagi_jcvm::share::ShareOutcome {
            ret: kagi_jcvm::share::ShareReturn::Security,
            buffer: call.buffer,
        }
    }
}

/// What the runtime passes to an applet with each call.
pub struct AppletContext<'a> {
    /// The logical channel of the command.
    pub channel: u8,
    /// The applet's own AID.
    pub aid: &'a Aid,
    /// The card's random source.
    pub rng: &'a mut CardRng,
    /// Persistent memory, scoped to this applet's own AID.
    pub store: AppletStore<'a>,
    /// The installed instances as of the start of this command: every one for a security
    /// domain, only the applet's own entry for any other applet.
    pub registry: &'a [RegistryEntry],
    /// The other applets (reachable only with the whole card's memory, i.e. by security
    /// domains).
    pub others: &'a mut dyn OtherApplets,
    /// The classes the card can instantiate.
    pub classes: &'a dyn ClassCatalog,
}

impl AppletContext<'_> {
    /// This applet's registry entry.
    pub fn me(&self) -> Option<&RegistryEntry> {
        self.registry.iter().find(|e| &e.aid == self.aid)
    }
}

/// An applet, in the Java Card sense: selected by AID, then fed commands.
///
/// The dispatcher owns SELECT routing, logical channels, command chaining and GET RESPONSE;
/// an applet sees whole commands and returns whole responses, or a status word as its error.
/// Persistent state goes through `ctx.store` (so it survives power loss and card images);
/// fields of the applet value are transient and cleared by [`Applet::reset`].
pub trait Applet: Send {
    /// Called when the applet becomes selected on a channel; returns the FCI data for the
    /// SELECT response. An error leaves no applet selected on that channel.
    fn select(&mut self, ctx: &mut AppletContext<'_>) -> Result<Vec<u8>, StatusWord>;

    /// Called before another applet is selected on the channel (`ctx.channel`), or when the
    /// channel closes; persistent memory is reachable as in any call.
    fn deselect(&mut self, ctx: &mut AppletContext<'_>) {
        let _ = ctx;
    }

    /// Processes one command (after chaining is resolved).
    fn process(
        &mut self,
        command: &Command,
        ctx: &mut AppletContext<'_>,
    ) -> Result<Response, StatusWord>;

    /// STORE DATA forwarded by the applet's security domain after INSTALL [for
    /// personalization], already unwrapped from the secure channel.
    fn personalize(
        &mut self,
        _command: &Command,
        _ctx: &mut AppletContext<'_>,
    ) -> Result<Response, StatusWord> {
        Err(StatusWord::CONDITIONS_NOT_SATISFIED)
    }

    /// `getShareableInterfaceObject(clientAID, parameter)` of a Java Card applet: its object
    /// for the applet `client` (another package's), or `None` (the default: not shared).
    /// `callers` are the contexts whose calls are under way (the client's among them).
    fn shareable_object(
        &mut self,
        _client: &[u8],
        _parameter: u8,
        _ctx: &mut AppletContext<'_>,
        _callers: Callers<'_>,
    ) -> Option<kagi_jcvm::share::Sio> {
        None
    }

    /// Runs a method of a shareable interface object of this applet for another context
    /// (the applet firewall's only door; the default refuses). `callers` are the contexts
    /// whose calls are under way (the caller's among them).
    fn call_shareable(
        &mut self,
        call: kagi_jcvm::share::ShareCall,
        _ctx: &mut AppletContext<'_>,
        _callers: Callers<'_>,
    ) -> kagi_jcvm::share::ShareOutcome {
        kagi_jcvm::share::ShareOutcome {
            ret: kagi_jcvm::share::ShareReturn::Security,
            buffer: call.buffer,
        }
    }

    /// Power loss or reset: clear everything transient (sessions, PIN-validated flags).
    fn reset(&mut self) {}

    /// Whether the applet accepts extended-length commands (Java Card `ExtendedLength`).
    fn extended_length(&self) -> bool {
        false
    }

    /// Whether several logical channels may select it at once (`MultiSelectable`).
    fn multi_selectable(&self) -> bool {
        false
    }

    /// Whether this applet handles SELECT commands that are not for an installed AID (ISO
    /// file selection inside the applet).
    fn handles_file_select(&self) -> bool {
        false
    }

    /// Whether the applet answers GET RESPONSE itself when the runtime holds nothing for it
    /// (Java Card applets that send part of a response and throw `61xx`, as IsoApplet does).
    fn own_get_response(&self) -> bool {
        false
    }

    /// Why the last command failed, when the applet knows more than its status word (a Java
    /// Card applet's uncaught exception or unsupported API method, with its class and method).
    fn diagnostic(&self) -> Option<String> {
        None
    }
}
