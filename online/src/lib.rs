//! kagi's online clients: the TSM's HTTP client, the relay that connects a card to a TSM and
//! the provider's tools ([`tsm`]), and the credential broker's client ([`broker`]). Async
//! (tokio) and HTTP (reqwest over rustls) live here, never in the `kagi` card library.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod broker;
pub mod tsm;
