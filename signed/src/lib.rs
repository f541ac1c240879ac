//! # kagi-signed
//!
//! The signed-message layer kagi's servers share: the TSM (`tsm-protocol`, `tsm-server`) and
//! the credential broker (`broker-protocol`, `broker-server`) both speak it, and neither
//! depends on the other for it. I/O-free.
//!
//! - [`codec`]: the canonical encoding messages are signed in.
//! - [`ids`]: message, operation, session and key ids, nonces, party names.
//! - [`signing`]: signed messages (ECDSA P-256) with ids, nonces, validity windows, recipient
//!   binding and replay protection.
//! - [`request`]: a sender's side of the control envelope: sign a request, open its answer.
//! - [`access`]: one-time access codes, device tickets, legacy PBKDF2 password verifiers.
//! - [`password`]: password verifiers in PHC form (Argon2id, PBKDF2) with a policy.
//! - [`relief`]: Argon2id computed on the user's device, a keyed digest at the server.
//! - [`certkey`]: the public key of a card certificate, to check the card's signatures.
//!
//! Everything that arrives from outside is parsed without panicking into a typed error.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod access;
pub mod certkey;
pub mod codec;
pub mod ids;
pub mod password;
pub mod relief;
pub mod request;
pub mod signing;

pub use ids::{BadPartyId, IdempotencyKey, KeyId, MsgId, Nonce, OpId, PartyId, SessionId};
pub use signing::{
    Envelope, Header, KeyFileError, Kind, Policy, ProtocolError, Sealed, SignError, Signer, Trust,
};
