//! # tsm-server
//!
//! kagi's trusted service manager.
//!
//! - [`http`]: the HTTP endpoints (axum), graceful shutdown.
//! - [`service`]: the control API and the relay endpoint's behaviour, card scripts, receipts.
//! - [`store`]: state in SQLite or PostgreSQL, one SQL dialect, compare-and-swap writes.
//! - [`testing`]: a private PostgreSQL for tests and benchmarks.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod http;
pub mod service;
pub mod store;
pub mod testing;
