//! # broker-protocol
//!
//! kagi's credential broker — the "server-cooperated IC card" of the project's first seed —
//! as its holders and services see it. The card keeps only its JPKI user-authentication key;
//! the broker keeps each service's credential for that card (sealed under an HSM key) and
//! authenticates to the service on the holder's behalf, or vouches for the holder with a
//! signed assertion.
//!
//! - [`api`]: the holder's login and act requests, the administrators' requests.
//! - [`assertion`]: JWS ES256 assertions and the broker's published keys (JWKS).
//! - [`verifier`]: what a service runs to accept an assertion — no card logic.
//! - [`envelope`]: the seam to the key store that seals the broker's per-service credentials
//!   (implemented by the broker's development store and by the HSM store in `kagi`).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod assertion;
pub mod envelope;
pub mod verifier;

pub use assertion::{Assurance, Claims, Jwks};
pub use verifier::Verifier;
