//! # kagi
//!
//! The card library of kagi: everything a program needs to talk to a smart card or a SIM,
//! and nothing else (no HTTP, no async runtime, no database, no CLI framework). The `kagi`
//! command lives in `kagi-cli`; batch personalisation in `kagi-perso`; PKCS#11 key stores in
//! `kagi-hsm`; the TSM and broker clients in `kagi-online`.
//!
//! Layers, bottom up:
//! - the transport seam ([`card_wire::Transport`]): PC/SC readers (`pcsc_transport`, feature
//!   `pcsc`), the in-process simulator (`kagi::sim::SimCard`, feature `sim`), scripted
//!   transports for tests ([`mock`]);
//! - the APDU pipeline ([`channel::CardChannel`]): extended length or chaining, `61xx`, `6Cxx`,
//!   and a trace with secrets redacted ([`trace`]);
//! - SCP03 secure channels ([`secure::SecureChannel`]) on the shared core in `card-wire`;
//! - GlobalPlatform card management ([`gp`], CAP loading in [`gp_cap`]), UICC identity
//!   ([`uicc`]), the JPKI client ([`jpki`]), PIN-less eligibility reads ([`eligibility`]),
//!   key sources ([`keys`]), secure-channel probing ([`probe`]), DAP signing ([`dap`]).
//!
//! ```
//! # #[cfg(feature = "sim")] {
//! use kagi::channel::{ApduChannel, CardChannel};
//! use kagi::secure::SecureChannel;
//! use kagi::card_wire::scp03::{HostOptions, StaticKeys};
//!
//! let card = kagi::sim::SimCard::powered(kagi::sim::SimConfig::default());
//! let mut ch = CardChannel::new(card);
//! let sd = kagi::gp::select_domain(&mut ch, None).unwrap();
//! let opts = HostOptions::default(); // level 33: C-MAC, C-DEC, R-MAC, R-ENC
//! let mut sc = SecureChannel::open(&mut ch, StaticKeys::default_test_keys(0x30), opts, Some(&sd.aid)).unwrap();
//! let apps = kagi::gp::get_status(&mut sc, kagi::gp::StatusScope::Applications).unwrap();
//! assert!(!apps.is_empty());
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod channel;
pub mod dap;
#[cfg(feature = "eligibility")]
pub mod eligibility;
pub mod error;
pub mod gp;
#[cfg(feature = "cap")]
pub mod gp_cap;
pub mod jpki;
pub mod keys;
pub mod mock;
#[cfg(feature = "pcsc")]
pub mod pcsc_transport;
pub mod probe;
pub mod secure;
pub mod trace;
pub mod uicc;

/// The in-process card simulator (the `applet-sim` crate), as a transport.
#[cfg(feature = "sim")]
pub use applet_sim as sim;
pub use card_wire;
pub use error::{Error, Result};
