//! # tsm-server
//!
//! kagi's trusted service manager.
//!
//! - [`http`]: the HTTP endpoints (axum), graceful shutdown.
//! - [`service`]: the control API and the relay endpoint's behaviour, card scripts, receipts.
//! - [`store`]: its tables and records in [`kagi_db`] (SQLite or PostgreSQL).
//! - [`issuer`]: the JPKI issuer as a service of its own (`kagi jpki-issuer`).
//! - [`refusals`]: the bounded audit trail of refused signed messages, in each service's own
//!   database.
//! - [`setup`]: its configuration file, `init` and start-up.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod http;
pub mod issuer;
pub mod refusals;
pub mod service;
pub mod setup;
pub mod store;

/// A private PostgreSQL for tests and benchmarks (from `kagi-db`).
pub use kagi_db::testing;
