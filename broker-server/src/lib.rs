//! # broker-server
//!
//! kagi's credential broker: the server half of the project's "server-cooperated IC card".
//! A holder logs in once with the JPKI user-authentication key on their card (or, at lower
//! assurance, a password); the broker then authenticates at each enrolled service with that
//! card's per-service key, which it keeps sealed under a key-encryption key that never leaves
//! the HSM, or vouches for the holder with a signed assertion ([`broker_protocol`]).
//!
//! - [`envelope`]: the seam to where the KEKs live (a key file for tests, PKCS#11 in `kagi-hsm`).
//! - [`store`]: the tables, sharded by card over any number of databases.
//! - [`service`]: logins, acts, administrators' requests, KEK rotation, one file per job
//!   (the password login and its backoff in a module of its own).
//! - [`clock`]: the time, injectable for tests.
//! - [`http`]: the HTTP(S) front.
//! - [`setup`]: its configuration file, `init` and start-up.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod clock;
pub mod envelope;
pub mod http;
pub mod service;
pub mod setup;
pub mod store;

pub use envelope::{Envelope, FileEnvelope};
pub use service::password_login::Backoff;
pub use service::{Broker, BrokerError, Config};
pub use store::Shards;
