//! # tsm-server
//!
//! kagi's trusted service manager.
//!
//! - [`store`]: state in SQLite or PostgreSQL, one SQL dialect, compare-and-swap writes.
//! - [`testing`]: a private PostgreSQL for tests and benchmarks.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod store;
pub mod testing;
