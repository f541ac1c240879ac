//! GlobalPlatform SCP03 (Card Specification Amendment D v1.1.1 and v1.2), I/O free, used by
//! both the host (initiator) and the card (responder).
//!
//! - [`crypto`]: AES, CMAC, the SCP03 KDF, padding, KCVs.
//! - [`keys`]: static key sets, `kdf3` diversification, session keys.
//! - [`handshake`]: INITIALIZE UPDATE / EXTERNAL AUTHENTICATE for both halves.
//! - [`session`]: C-MAC, C-DEC, R-MAC, R-ENC on an open session, S8 and S16.
//! - [`putkey`]: DEK encryption of key material.
//!
//! Pitfalls this module guards against are listed in `research/gppro-scp03.md` §4: the context
//! is host ‖ card, cryptograms use S-MAC, S-RMAC comes from K-MAC, the counter advances on every
//! command, EXTERNAL AUTHENTICATE is never encrypted, error statuses carry no R-MAC, R-ENC's IV
//! sets the counter's first byte to `80`.

pub mod crypto;
pub mod handshake;
pub mod keys;
pub mod putkey;
pub mod session;

pub use crypto::{AesKey, KeyError};
pub use handshake::{
    CardHandshake, CardKeyContext, HandshakeInfo, HostHandshake, HostOptions, InitUpdateResponse,
};
pub use keys::{
    CardKeys, Diversification, DiversifiedMaster, SessionKeys, StaticKeys, kdf3_context,
};
pub use session::{IParam, Mode, Pending, SecureSession, SecurityLevel};

use crate::apdu::ApduError;
use crate::sw::StatusWord;

/// Why an SCP03 step failed. The messages say what to check next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Scp03Error {
    /// A failure every secure channel protocol shares (cryptograms, MACs, padding, a
    /// closed session).
    #[error(transparent)]
    Channel(#[from] crate::channel::ChannelFault),
    /// The card's keys could not be obtained (an HSM refused or is unreachable).
    #[error("the card's keys are not available: {0}")]
    KeySource(String),
    /// The card answered INITIALIZE UPDATE with an error.
    #[error(
        "the card refused INITIALIZE UPDATE with {0}; check the key version (6A88: no such \
         key set) and whether the security domain is locked (6982/6983)"
    )]
    InitializeUpdateRefused(StatusWord),
    /// The INITIALIZE UPDATE response has the wrong length for its `i` parameter.
    #[error("INITIALIZE UPDATE response is {len} bytes, expected {expected} for its i parameter")]
    MalformedInitUpdate {
        /// Bytes received.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// A diversification scheme that is not defined for AES keys.
    #[error(
        "diversification '{}' is defined for SCP02 (3DES) keys only; SCP03 cards use none or kdf3",
        .0.name()
    )]
    UnsupportedDiversification(Diversification),
    /// The card runs another secure channel protocol.
    #[error("the card answered with SCP{0:02X}, not SCP03")]
    NotScp03(u8),
    /// The card chose another key version than asked.
    #[error("asked for key version {requested:02X} but the card answered with {returned:02X}")]
    KvnMismatch {
        /// KVN asked for.
        requested: u8,
        /// KVN in the response.
        returned: u8,
    },
    /// The card runs another mode than the host challenge length chosen.
    #[error("host uses {host:?} but the card runs {card:?}; retry with the card's mode")]
    ModeMismatch {
        /// Host mode.
        host: Mode,
        /// Card mode.
        card: Mode,
    },
    /// A host challenge of the wrong length.
    #[error("host challenge of {len} bytes does not fit {mode:?}")]
    ChallengeLength {
        /// Bytes given.
        len: usize,
        /// Mode chosen.
        mode: Mode,
    },
    /// The card's `i` does not support the level asked for.
    #[error(
        "security level {level} needs R-MAC/R-ENC support the card does not announce (i = {i:02X})"
    )]
    LevelNotSupported {
        /// Level asked for.
        level: SecurityLevel,
        /// The card's `i`.
        i: u8,
    },
    /// Not a GP-defined security level.
    #[error("security level {0:02X} is not defined; use 00, 01, 03, 11, 13 or 33")]
    InvalidSecurityLevel(u8),
    /// A security level given as text that is neither a name nor a hex byte.
    #[error(
        "'{0}' is not a security level: use none, mac, enc, rmac, enc+rmac or full, or hex 00, 01, 03, 11, 13 or 33"
    )]
    UnknownSecurityLevel(String),
    /// An error status with data under R-MAC.
    #[error("error status {0} came with data, which secure messaging does not allow")]
    UnexpectedErrorData(StatusWord),
    /// Wrapped data would exceed the largest APDU.
    #[error("command data of {0} bytes is too long to wrap; split it into blocks")]
    CommandTooLong(usize),
    /// A DEK block of bad length.
    #[error("DEK-encrypted data must be a non-empty multiple of 16 bytes, got {0}")]
    DekBlockLength(usize),
    /// The system's random source failed.
    #[error("random number generator failed: {0}")]
    Random(String),
    /// A command could not be built.
    #[error(transparent)]
    Apdu(#[from] ApduError),
}
