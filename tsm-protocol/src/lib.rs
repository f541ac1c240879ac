//! # tsm-protocol
//!
//! The trusted-service-manager protocol of kagi: how a service provider's JPKI credential (or
//! any provider data) gets into its security domain on a phone's SIM through a TSM and a phone
//! app that only relays encrypted card commands. I/O-free: the TSM server (`tsm-server`), the
//! provider tools and the relay (`kagi relay`) all build on it.
//!
//! - [`signing`]: signed messages (ECDSA P-256) with ids, nonces, validity windows, recipient
//!   binding and replay protection; [`codec`]: the canonical encoding they are signed in.
//! - [`control`]: the control API (Issue, Revoke, Transfer, CheckStatus, ResetPin,
//!   GetOperation, Cancel, and the mobile operator's notices).
//! - [`issuer`]: the JPKI issuer's API (the SP-TSM asks it for a credential sealed to the SIM).
//! - [`seal`]: a credential sealed to one SIM (its manufacturer-certified key) and applet.
//! - [`relay`]: orders and reports between the TSM and the untrusted relay, exactly once.
//! - [`script`]: card scripts — the engine that turns a plan and the relay's reports into
//!   SCP03-wrapped orders, with probes, postconditions and key proofs.
//! - [`recipes`]: the goals of each operation (JPKI credential, PIN reset, wallet, domain).
//! - [`access`]: the one-time access code, the password verifier and the device ticket.
//! - [`receipt`]: the TSM's execution receipt with the on-card key proof.
//! - [`error`]: errors as the protocol reports them.
//!
//! The signed-message layer ([`signing`], [`codec`], [`ids`], [`password`] and the codes of
//! [`access`]) lives in `kagi-signed`, shared with the credential broker, and is re-exported
//! here under its old names.
//!
//! Everything that arrives from outside is parsed without panicking into a typed error.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod access;
pub mod codes;
pub mod control;
pub mod error;
pub mod issuer;
pub mod keyseal;
pub mod receipt;
pub mod recipes;
pub mod relay;
pub mod script;
pub mod seal;

pub use kagi_signed::{codec, ids, password, relief, signing};

pub use error::{ErrorReport, Layer};
pub use ids::{BadPartyId, IdempotencyKey, KeyId, MsgId, Nonce, OpId, PartyId, SessionId};
pub use signing::{
    Envelope, Header, KeyFileError, Kind, Policy, ProtocolError, Sealed, SignError, Signer, Trust,
};
