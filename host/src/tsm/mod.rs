//! The host's side of over-the-air downloads (`tsm-protocol`): simulated SIMs prepared the
//! way a personalisation bureau leaves them for a TSM ([`sim`]).

#[cfg(feature = "sim")]
pub mod sim;
