//! Personalisation bureau: profiles, input records, a crash-safe journal and parallel
//! stations. This slice runs on simulated cards (each kept as an image file, so a killed batch
//! resumes without doing a card twice or skipping one); PC/SC stations, HSM-held master keys
//! and PIN mailers come next.

pub mod journal;
pub mod profile;
pub mod records;
pub mod run;

pub use profile::Profile;
pub use run::{KeySets, Options, Summary};
