//! GlobalPlatform SCP02 (Card Specification 2.2.1 Appendix E), I/O free, for host and card:
//! `i` = 15 and 55 (and 05, 45), two-key 3DES.
//!
//! - [`crypto`]: 3DES, the full 3DES MAC, the retail MAC, padding, KCVs.
//! - [`keys`]: static key sets, EMV CPS 1.1 / VISA2 diversification, session keys.
//! - [`handshake`]: INITIALIZE UPDATE / EXTERNAL AUTHENTICATE for both halves.
//! - [`session`]: C-MAC (with ICV encryption), C-DEC and R-MAC on an open session.
//! - [`putkey`]: PUT KEY of 3DES key sets under the session DEK.
//!
//! Where SCP02 differs from SCP03 (and implementations slip): the session keys come from the
//! 2-byte sequence counter, not the challenges; the cryptograms are full 3DES MACs under S-ENC
//! (card: host ‖ seq ‖ card challenge; host: seq ‖ card challenge ‖ host); the C-MAC covers the
//! plaintext and is computed before C-DEC; keys in PUT KEY are encrypted under the *session*
//! DEK; the `i` parameter is not in the INITIALIZE UPDATE answer (it comes from the card
//! recognition data).

pub mod crypto;
pub mod handshake;
mod iparam;
pub mod keys;
pub mod putkey;
pub mod session;

pub use crypto::{Des3Key, DesKeyError};
pub use handshake::{
    CardHandshake02, CardKeyContext02, HandshakeInfo02, HostHandshake02, HostOptions02,
    InitUpdateResponse02,
};
pub use iparam::{IParam02, SCP02};
pub use keys::{KeyPurpose02, SessionKeys02, StaticKeys02};
pub use session::Scp02Session;

use crate::apdu::ApduError;
use crate::scp03::{Diversification, SecurityLevel};
use crate::sw::StatusWord;

/// Why an SCP02 step failed. The messages say what to check next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Scp02Error {
    /// A failure every secure channel protocol shares (cryptograms, MACs, padding, a
    /// closed session).
    #[error(transparent)]
    Channel(#[from] crate::channel::ChannelFault),
    /// The card answered INITIALIZE UPDATE with an error.
    #[error(
        "the card refused INITIALIZE UPDATE with {0}; check the key version (6A88: no such \
         key set) and whether the security domain is locked (6982/6983)"
    )]
    InitializeUpdateRefused(StatusWord),
    /// The INITIALIZE UPDATE answer is not 28 bytes.
    #[error("SCP02 INITIALIZE UPDATE response is {0} bytes, expected 28")]
    MalformedInitUpdate(usize),
    /// The card runs another secure channel protocol.
    #[error("the card answered with SCP{0:02X}, not SCP02")]
    NotScp02(u8),
    /// An `i` kagi does not implement.
    #[error(
        "SCP02 i = {0:02X} is not supported: kagi runs three-key variants with a zero ICV \
         (i = 05, 15, 45, 55 and their R-MAC forms)"
    )]
    UnsupportedI(u8),
    /// A diversification scheme for AES keys.
    #[error("diversification '{}' is for SCP03 (AES) keys; SCP02 cards use none, emv or visa2", .0.name())]
    UnsupportedDiversification(Diversification),
    /// The card chose another key version than asked.
    #[error("asked for key version {requested:02X} but the card answered with {returned:02X}")]
    KvnMismatch {
        /// KVN asked for.
        requested: u8,
        /// KVN in the response.
        returned: u8,
    },
    /// A level SCP02 or this card's `i` cannot run.
    #[error(
        "security level {level} is not available with SCP02 i = {i:02X} (no R-ENC; R-MAC only with i bit 20)"
    )]
    LevelNotSupported {
        /// Level asked for.
        level: SecurityLevel,
        /// The card's `i`.
        i: u8,
    },
    /// Wrapped data would not fit a short APDU.
    #[error(
        "command data of {0} bytes is too long for SCP02 (short APDUs only); split it into blocks of at most 239 bytes"
    )]
    CommandTooLong(usize),
    /// PUT KEY data of the wrong shape.
    #[error("PUT KEY data is malformed: {0}")]
    PutKeyFormat(&'static str),
    /// A key check value does not match the decrypted key.
    #[error(
        "a key check value does not match its key: the key was altered or encrypted under another DEK"
    )]
    KcvMismatch,
    /// The system's random source failed.
    #[error("random number generator failed: {0}")]
    Random(String),
    /// Key bytes that are not a 3DES key.
    #[error(transparent)]
    Key(#[from] DesKeyError),
    /// A command could not be built.
    #[error(transparent)]
    Apdu(#[from] ApduError),
}
