//! # applet-sim
//!
//! kagi's card simulator. Applets implement [`Applet`] (select / deselect / process with a
//! status word as the error, like Java Card's `Applet`); the [`Runtime`] owns everything an
//! applet should not: APDU parsing, SELECT by AID (full and partial, next occurrence), one
//! selected applet per logical channel 0–19, MANAGE CHANNEL, command chaining and GET RESPONSE.
//! The runtime instantiates applets from a [`ClassTable`] (class name → constructor): the
//! stock classes register themselves from their own modules ([`stock::classes`]); another
//! crate registers its own and gives the table to [`SimCard::with_classes`]. Each applet
//! reaches persistent memory through an [`AppletStore`] scoped to its own AID.
//! A [`SimCard`] adds power state and an ATR and implements the host's transport seam
//! ([`card_wire::Transport`]), so the host talks to it exactly as to a PC/SC reader.
//!
//! Persistent memory ([`Store`]) has Java Card transaction semantics, tearing injection (cut
//! power at the Nth persistent write) and versioned card images; the GlobalPlatform registry
//! lives in it, so an image restores the whole card. Security domains ([`SecurityDomain`]) run
//! the card half of SCP03 from `card-wire` and the GP card manager (INSTALL, LOAD, DELETE,
//! PUT KEY, SET STATUS, STORE DATA, GET STATUS). A card made as a UICC ([`SimConfig::uicc`])
//! announces itself in its ATR and has an MF with `EF.ICCID` ([`uicc`]). [`vpcd`] serves cards
//! to a real pcscd.
//!
//! ```
//! use applet_sim::{SimCard, SimConfig};
//! use card_wire::Transport;
//! let mut card = SimCard::powered(SimConfig::default());
//! let r = card.transmit(&[0x00, 0xA4, 0x04, 0x00, 0x00]).unwrap();
//! assert_eq!(&r[r.len() - 2..], &[0x90, 0x00]);
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod applet;
pub mod applet_store;
pub mod callers;
pub mod card;
pub mod card_key;
pub mod class_error;
pub mod class_table;
mod contexts;
pub mod echo;
pub mod jc_applet;
pub mod jpki;
pub mod load_file;
mod others;
pub mod registry;
pub mod rng;
pub mod runtime;
pub mod sd_scp02;
pub mod security_domain;
pub mod stock;
pub mod store;
pub mod tearing;
pub mod timing;
pub mod uicc;
pub mod vpcd;
pub mod wallet;

pub use applet::{Aid, Applet, AppletContext};
pub use applet_store::AppletStore;
pub use card::{SdConfig, SimCard, SimConfig};
pub use class_table::{ClassError, ClassTable, Install};
pub use registry::RegistryEntry;
pub use runtime::Runtime;
pub use security_domain::SecurityDomain;
pub use store::Store;
