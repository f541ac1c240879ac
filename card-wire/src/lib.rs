//! # card-wire
//!
//! What both ends of a card dialogue share, and nothing else: the host (`kagi-host`) and the
//! card simulator (`applet-sim`) depend on this crate, never on each other.
//!
//! - [`aid`]: application identifiers (5 to 16 bytes), validated once.
//! - [`atr`]: the answer to reset (protocols, historical bytes, the UICC class indicator).
//! - [`apdu`]: ISO 7816-4 command/response APDUs (cases 1–4, short and extended), class bytes
//!   with logical channels 0–19.
//! - [`sw`]: status words, an open type with names and meanings.
//! - [`tlv`]: BER-TLV reading and writing.
//! - [`transport`]: the transport seam (`transmit(bytes) -> bytes`).
//! - [`scp03`]: GlobalPlatform SCP03, host and card halves over one I/O-free core.
//! - [`gp`]: GlobalPlatform card-management commands as bytes, GET STATUS answers parsed.
//! - [`cplc`]: Card Production Life Cycle data decoded (fields, ISO dates).
//! - [`dap`]: DAP blocks of a load file and PUT KEY of DAP public keys.
//! - [`dm`]: delegated management tokens (what they sign, where they go).
//! - [`gp_load`]: LOAD block sizes from the card's maximum and the secure channel's overhead.
//! - [`content`]: key material sealed to one card and applet instance (ECDH-ES, AES-GCM).
//! - [`state_seal`]: the TSM's symmetric sealing of its own operation secrets.
//! - [`jpki`]: the JPKI card interface (AIDs, EFs, PIN formats).
//! - [`wallet`]: the ID wallet applet's items and summary (member id, tickets, points).
//! - [`uicc`]: the ICCID and `EF.ICCID`, the UICC issuer security domain AID.
//!
//! Parsers here never panic on input: each returns a typed error.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod aid;
pub mod apdu;
pub mod atr;
pub mod channel;
#[cfg(feature = "content")]
pub mod content;
pub mod cplc;
pub mod dap;
pub mod dm;
pub mod gp;
pub mod gp_load;
pub mod jpki;
#[cfg(feature = "content")]
pub mod keygen;
pub mod scp02;
pub mod scp03;
#[cfg(feature = "content")]
pub mod state_seal;
pub mod sw;
pub mod tlv;
pub mod transport;
pub mod uicc;
pub mod wallet;

pub use aid::{Aid, AidError};
pub use apdu::{ApduError, Class, Command, Response};
pub use sw::StatusWord;
pub use transport::{Capabilities, ResetKind, Transport, TransportError};

/// Uppercase hexadecimal, the way traces and messages show bytes.
pub fn hex_upper(bytes: &[u8]) -> String {
    hex::encode_upper(bytes)
}
