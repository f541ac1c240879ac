//! The host's side of over-the-air downloads (`tsm-protocol`): the HTTP client of the TSM
//! ([`client`]), the relay that connects a card to it ([`relay`]), the provider's tools that
//! prepare and sign requests ([`provider`]), and simulated SIMs prepared the way a
//! personalisation bureau leaves them for a TSM ([`sim`]).

pub mod client;
pub mod provider;
pub mod relay;

#[cfg(feature = "sim")]
pub mod sim;
