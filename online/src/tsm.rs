//! The host's side of over-the-air downloads (`tsm-protocol`): the HTTP client of the TSM
//! ([`client`]), the relay that connects a card to it ([`relay`]), the provider's tools that
//! prepare and sign requests ([`provider`]).

pub mod client;
pub mod provider;
pub mod relay;
