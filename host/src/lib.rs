//! # kagi
//!
//! The host side of kagi: a library and the `kagi` CLI for smart cards and SIMs.
//!
//! Layers, bottom up:
//! - the transport seam ([`card_wire::Transport`]): PC/SC readers ([`pcsc_transport`], feature
//!   `pcsc`), the in-process simulator (`applet_sim::SimCard`, feature `sim`), scripted
//!   transports for tests ([`mock`]);
//! - the APDU pipeline ([`channel::CardChannel`]): extended length or chaining, `61xx`, `6Cxx`,
//!   and a trace with secrets redacted ([`trace`]);
//! - SCP03 secure channels ([`secure::SecureChannel`]) on the shared core in `card-wire`;
//! - GlobalPlatform card management ([`gp`]), UICC identity ([`uicc`]).
//!
//! ```
//! # #[cfg(feature = "sim")] {
//! use kagi::channel::{ApduChannel, CardChannel};
//! use kagi::secure::SecureChannel;
//! use card_wire::scp03::{HostOptions, SecurityLevel, StaticKeys};
//!
//! let card = applet_sim::SimCard::powered(applet_sim::SimConfig::default());
//! let mut ch = CardChannel::new(card);
//! let sd = kagi::gp::select_domain(&mut ch, None).unwrap();
//! let opts = HostOptions { level: SecurityLevel::FULL, ..HostOptions::default() };
//! let mut sc = SecureChannel::open(&mut ch, StaticKeys::default_test_keys(0x30), opts, Some(&sd.aid)).unwrap();
//! let apps = kagi::gp::get_status(&mut sc, kagi::gp::StatusScope::Applications).unwrap();
//! assert!(!apps.is_empty());
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bench;
pub mod broker;
pub mod channel;
pub mod eligibility;
pub mod error;
pub mod gp;
pub mod gp_cap;
pub mod hsm;
pub mod jpki;
pub mod keys;
pub mod mock;
#[cfg(feature = "pcsc")]
pub mod pcsc_transport;
#[cfg(feature = "sim")]
pub mod perso;
pub mod pki;
pub mod probe;
pub mod secure;
pub mod trace;
pub mod tsm;
pub mod uicc;

pub use card_wire;
pub use error::{Error, Result};
