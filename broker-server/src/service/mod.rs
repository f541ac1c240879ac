//! What the broker does: holder logins (the JPKI card's signature over a broker nonce, or a
//! password at lower assurance), acting for a holder at a service (a MAC or a signature with
//! the card's service key, or a signed assertion), and the administrators' requests.
//!
//! Per-service keys exist in clear only while a request uses them (zeroized afterwards);
//! every other copy is sealed ([`crate::envelope`]). A card revoked at the broker stops every
//! service at once: each act checks the card, not only the session. Challenges are stateless
//! (MAC'd with the broker's state key, valid two minutes) and single-use (recorded on the
//! card's shard in the same transaction as the session they open).
//!
//! The methods of [`Broker`] are split by job: `login` (card logins and sessions), `act`
//! (acting for a holder), `back_channel` (one-time codes services redeem), `push` (proofs delivered to services over mutually authenticated TLS), `admin` (administrators' requests and enrolments) and `records`
//! (re-wrapping and checking the sealed records, the sweep); [`CardTrust`] is in `trust`.

mod act;
mod admin;
pub mod back_channel;
mod login;
pub(crate) mod password_login;
pub mod push;
mod records;
mod trust;

pub use records::Rotated;
pub use trust::CardTrust;

use crate::clock::{Clock, SystemClock};
use crate::envelope::{Envelope, EnvelopeError};
use crate::store::Shards;
use broker_protocol::api::ApiError;
use broker_protocol::assertion::Jwks;
use hmac::{Hmac, KeyInit, Mac};
use kagi_db::StoreError;
use kagi_signed::password;
use kagi_signed::signing::{Policy, Signer, Trust};
use password_login::Backoff;
use sha2::Sha256;
use std::sync::Arc;
use zeroize::Zeroizing;

/// How the broker is set up.
pub struct Config {
    /// The broker's name: the `iss` of its assertions and part of what cards sign.
    pub name: String,
    /// Signs answers to administrators.
    pub signer: Signer,
    /// Signs assertions (its public key is published at `/v1/keys`).
    pub assertion_key: p256::ecdsa::SigningKey,
    /// The administrators' keys.
    pub admin_trust: Trust,
    /// What administrators' requests must meet (this broker's party).
    pub policy: Policy,
    /// The CAs that issue the cards' user-authentication certificates, and their
    /// revocation data (re-read whenever the files change, so a revocation counts at once).
    pub card_trust: CardTrust,
    /// Where the KEKs are.
    pub envelope: Arc<dyn Envelope>,
    /// The KEK for new records when the database names none.
    pub default_kek: String,
    /// MACs the challenges, derives the pairwise ids (32 bytes).
    pub state_key: Zeroizing<[u8; 32]>,
    /// Session lifetime, seconds.
    pub session_secs: u64,
}

/// What [`Broker::verify_records`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RecordCheck {
    /// Credentials stored (every version).
    pub records: u64,
    /// Those that opened.
    pub opened: u64,
    /// Those that did not (card / service / version, and the KEK named).
    pub failed: Vec<String>,
    /// Records per KEK.
    pub by_kek: std::collections::BTreeMap<String, u64>,
}

/// The broker.
pub struct Broker {
    config: Config,
    shards: Shards,
    clock: Arc<dyn Clock>,
    password_policy: password::Policy,
    backoff: Backoff,
    hash_slots: Arc<tokio::sync::Semaphore>,
    pusher: Option<push::Pusher>,
}

pub(crate) fn refuse(code: &str, detail: impl Into<String>) -> ApiError {
    ApiError {
        code: code.into(),
        detail: detail.into(),
    }
}

/// Why a request could not be answered at all.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Refused (a 4xx, with the reason).
    #[error("{}: {}", .0.code, .0.detail)]
    Refused(ApiError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The body is not the JSON the endpoint takes.
    #[error("not the expected JSON: {0}")]
    BadJson(#[from] serde_json::Error),
    /// The body is not a signed message at all.
    #[error("not a signed message: {0}")]
    NotAMessage(#[from] kagi_signed::codec::CodecError),
    /// The key store (HSM) failed or refused: nothing was changed.
    #[error("the key store failed: {}", .0.0)]
    Keys(#[from] EnvelopeError),
    /// The system's random numbers failed.
    #[error("no random numbers: {0}")]
    Random(#[from] getrandom::Error),
    /// A credential opened from the database is not a key of its method: the record is
    /// damaged (`kagi broker verify-records` lists such records).
    #[error("a stored {0} key is malformed: run `kagi broker verify-records`")]
    CorruptKey(&'static str),
    /// A new key could not be generated or encoded.
    #[error("a new {method} key could not be made: {why}")]
    KeyGeneration {
        /// The method's key type.
        method: &'static str,
        /// Why.
        why: String,
    },
    /// The broker's own signature (answer, assertion) could not be made.
    #[error("the broker could not sign: {0}")]
    Sign(String),
    /// The card trust (CAs, revocation lists) could not be read.
    #[error("card trust: {0}")]
    CardTrust(#[from] kagi_certs::CertError),
    /// A certificate already parsed could not be re-encoded.
    #[error("a certificate could not be encoded: {0}")]
    Encoding(#[from] der::Error),
    /// A password could not be hashed or checked (its task failed, or the broker is stopping).
    #[error("password hashing: {0}")]
    Password(String),
}

impl From<ApiError> for BrokerError {
    fn from(e: ApiError) -> Self {
        BrokerError::Refused(e)
    }
}

type Result<T> = std::result::Result<T, BrokerError>;

type HmacSha256 = Hmac<Sha256>;

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::fill(b.as_mut())?;
    Ok(b)
}

impl Broker {
    /// A broker over its shards: the system clock, the production password policy
    /// ([`password::Policy::production`]) and the default [`Backoff`].
    pub fn new(config: Config, shards: Shards) -> Broker {
        let slots = std::thread::available_parallelism().map_or(2, |n| n.get());
        Broker {
            config,
            shards,
            clock: Arc::new(SystemClock),
            password_policy: password::Policy::production(),
            backoff: Backoff::default(),
            hash_slots: Arc::new(tokio::sync::Semaphore::new(slots)),
            pusher: None,
        }
    }

    /// The same broker delivering proofs to push-mode services ([`push`]) with this TLS
    /// client identity.
    pub fn with_push_identity(mut self, identity: push::PushIdentity) -> Broker {
        self.pusher = Some(push::Pusher::new(identity));
        self
    }

    /// The same broker reading the time from `clock` (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Broker {
        self.clock = clock;
        self
    }

    /// The same broker with another password policy: what verifiers it accepts and makes.
    /// Only tests weaken it ([`password::Policy::cheap_for_tests`]).
    pub fn with_password_policy(mut self, policy: password::Policy) -> Broker {
        self.password_policy = policy;
        self
    }

    /// The same broker with another backoff for password tries.
    pub fn with_backoff(mut self, backoff: Backoff) -> Broker {
        self.backoff = backoff;
        self
    }

    /// Unix milliseconds, from the broker's clock.
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    pub(crate) fn password_policy(&self) -> password::Policy {
        self.password_policy
    }

    pub(crate) fn backoff_policy(&self) -> Backoff {
        self.backoff
    }

    pub(crate) fn hash_slots(&self) -> &tokio::sync::Semaphore {
        &self.hash_slots
    }

    /// The shards.
    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// Where the KEKs are.
    pub fn envelope(&self) -> &dyn Envelope {
        self.config.envelope.as_ref()
    }

    /// The broker's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The keys services verify assertions with.
    pub fn keys(&self) -> Jwks {
        Jwks::of(&[*self.config.assertion_key.verifying_key()])
    }

    fn mac(&self, parts: &[&[u8]]) -> Result<[u8; 32]> {
        let mut m = HmacSha256::new_from_slice(self.config.state_key.as_ref())
            .map_err(|e| BrokerError::Sign(format!("the state key: {e}")))?;
        for p in parts {
            m.update(p);
        }
        Ok(m.finalize().into_bytes().into())
    }
}
