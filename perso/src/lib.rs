//! Personalisation bureau: profiles ([`profile`]), input records ([`records`]), a crash-safe
//! journal with group commit ([`journal`]) and parallel stations ([`run`]) on simulated cards
//! (each kept as an image file) or PC/SC readers (cards tracked by their CIN). A killed batch
//! resumes without doing a card twice or skipping one. Master keys come from the development
//! file store or a PKCS#11 HSM ([`kagi_hsm`]); JPKI PINs go only to an encrypted mailer file.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod journal;
pub mod pki;
pub mod profile;
pub mod records;
pub mod run;

pub use error::{Error, Result};
pub use profile::Profile;
pub use run::{BatchEvent, EventSink, KeySets, Options, Summary};
