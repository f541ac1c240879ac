//! The transport seam: raw command bytes in, raw response bytes (with the status word) out.
//!
//! Every way of reaching a card implements [`Transport`]: PC/SC readers, the in-process
//! simulator, remote relays. A card status is never a transport error; all ISO 7816 recovery
//! (GET RESPONSE, wrong Le, chaining) lives once above this seam, in the host's pipeline.

/// What a transport or its reader can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Extended-length APDUs pass end to end.
    pub extended_length: bool,
    /// Largest command APDU the transport carries, in bytes.
    pub max_command: usize,
    /// Largest response APDU the transport returns, in bytes (data + SW).
    pub max_response: usize,
}

impl Capabilities {
    /// Short APDUs only (261-byte commands, 258-byte responses).
    pub const SHORT: Capabilities = Capabilities {
        extended_length: false,
        max_command: 261,
        max_response: 258,
    };
    /// Extended APDUs.
    pub const EXTENDED: Capabilities = Capabilities {
        extended_length: true,
        max_command: 65_544,
        max_response: 65_538,
    };
}

/// Cold or warm reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// Power cycle.
    Cold,
    /// Warm reset (RST line) with power kept.
    Warm,
}

/// A failure to exchange bytes with a card (never a card's status word).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No card in the reader.
    #[error("no card in reader {0}: insert a card or wait for one with a timeout")]
    NoCard(String),
    /// The card was removed during the exchange.
    #[error("the card was removed from reader {0}")]
    CardRemoved(String),
    /// The card was reset by someone else; the transport reconnected. Select the application
    /// again and re-open any secure channel before retrying.
    #[error(
        "the card in reader {0} was reset by another application (reconnected): select the \
         application again and re-open the secure channel"
    )]
    CardReset(String),
    /// The card did not answer: power was lost in the middle of the command (a torn write on
    /// a simulator, a pulled card on a reader). Power it up again and check its state.
    #[error("the card went mute (power lost during the command): reset it and check its state")]
    Mute,
    /// The card is not powered.
    #[error("the card is powered off; reset it first")]
    Unpowered,
    /// The reader is gone or unusable.
    #[error("reader {reader} is unavailable: {detail}")]
    ReaderUnavailable {
        /// Reader name.
        reader: String,
        /// What the stack said.
        detail: String,
    },
    /// No reader matched the selector.
    #[error("no reader matches '{selector}'; available: {available}")]
    NoSuchReader {
        /// What the user asked for.
        selector: String,
        /// The readers present.
        available: String,
    },
    /// The selector matches more than one reader's name.
    #[error("'{selector}' matches several readers ({matches}): give more of the name, or an index")]
    AmbiguousReader {
        /// What the user asked for.
        selector: String,
        /// The readers it matches, with their indices.
        matches: String,
    },
    /// The reader service (pcscd) is not running or went away: every reader is gone until it
    /// is back. Waiting and retrying with a new connection recovers.
    #[error(
        "the reader service is not available ({0}): is pcscd running? (start it, or check PCSCLITE_CSOCK_NAME)"
    )]
    ServiceUnavailable(String),
    /// A wait ran out.
    #[error("timed out after {0} ms")]
    Timeout(u64),
    /// The command exceeds what the transport carries.
    #[error("command of {len} bytes exceeds the transport's maximum of {max}")]
    CommandTooLong {
        /// Command length.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// The card answered fewer than two bytes.
    #[error("the card answered {0} bytes, fewer than a status word")]
    ShortResponse(usize),
    /// Any other error of the underlying stack (PC/SC, socket).
    #[error("transport failure: {0}")]
    Other(String),
}

/// Sends one command APDU and returns the response APDU (used inside
/// [`Transport::exclusive`]).
pub type SendApdu<'a> = dyn FnMut(&[u8]) -> Result<Vec<u8>, TransportError> + 'a;

/// The seam between the APDU layer and a card.
pub trait Transport: Send {
    /// Sends one command APDU and returns the response APDU, status word included.
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError>;

    /// Resets the card and returns the answer to reset.
    fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, TransportError>;

    /// The current answer to reset, if the card is powered.
    fn atr(&self) -> Option<Vec<u8>>;

    /// What the transport carries.
    fn capabilities(&self) -> Capabilities;

    /// Returns true once after the card was reset behind our back (by another application or
    /// by the reader); the caller must re-select and re-open secure channels.
    fn take_reset_notice(&mut self) -> bool {
        false
    }

    /// A short description for logs ("pcsc:Reader 0", "sim").
    fn describe(&self) -> String;

    /// Runs `f` with the card to ourselves: on PC/SC inside a transaction, so that a command
    /// and its GET RESPONSEs (or chained parts) are not interleaved with another
    /// application's. Keep `f` short: readers end idle transactions. Transports without
    /// other users just run it.
    fn exclusive(
        &mut self,
        f: &mut dyn FnMut(&mut SendApdu<'_>) -> Result<(), TransportError>,
    ) -> Result<(), TransportError> {
        let mut send = |cmd: &[u8]| self.transmit(cmd);
        f(&mut send)
    }
}

/// A boxed or borrowed transport is a transport (a card lent to a channel for a while).
macro_rules! forward {
    ($($ty:ty),*) => {$(
        impl<T: Transport + ?Sized> Transport for $ty {
            fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
                (**self).transmit(command)
            }
            fn reset(&mut self, kind: ResetKind) -> Result<Vec<u8>, TransportError> {
                (**self).reset(kind)
            }
            fn atr(&self) -> Option<Vec<u8>> {
                (**self).atr()
            }
            fn capabilities(&self) -> Capabilities {
                (**self).capabilities()
            }
            fn take_reset_notice(&mut self) -> bool {
                (**self).take_reset_notice()
            }
            fn describe(&self) -> String {
                (**self).describe()
            }
            fn exclusive(
                &mut self,
                f: &mut dyn FnMut(&mut SendApdu<'_>) -> Result<(), TransportError>,
            ) -> Result<(), TransportError> {
                (**self).exclusive(f)
            }
        }
    )*};
}

forward!(Box<T>, &mut T);
