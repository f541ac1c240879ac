//! # applet-sim
//!
//! kagi's card simulator. Applets implement [`Applet`] (select / deselect / process with a
//! status word as the error, like Java Card's `Applet`); the [`Runtime`] owns everything an
//! applet should not: APDU parsing, SELECT by AID (full and partial, next occurrence), one
//! selected applet per logical channel 0–19, MANAGE CHANNEL, command chaining and GET RESPONSE.
//! A [`SimCard`] adds power state and an ATR and implements the host's transport seam
//! ([`card_wire::Transport`]), so the host talks to it exactly as to a PC/SC reader.
//!
//! The issuer security domain ([`SecurityDomain`]) runs the card half of SCP03 from
//! `card-wire`. Persistent memory with transactions and tearing, card images, the full
//! GlobalPlatform card manager and the vpcd bridge grow on this seam.
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
pub mod card;
pub mod echo;
pub mod rng;
pub mod runtime;
pub mod security_domain;
pub mod vpcd;

pub use applet::{Aid, Applet, AppletContext, RegistryEntry};
pub use card::{SimCard, SimConfig};
pub use runtime::Runtime;
pub use security_domain::{SdConfig, SecurityDomain};
