//! Signed messages: every control request is signed by its service provider, every answer
//! and receipt by the TSM (ECDSA P-256 over SHA-256).
//!
//! What is signed is the canonical encoding of an [`Envelope`] (a [`Header`], which names the
//! message kind, and the body) after a domain tag naming the protocol, so a signature made
//! for one kind of message never verifies as another. The wire form ([`Sealed`]) carries exactly
//! those bytes and the signature; the receiver verifies the bytes it got, then decodes them
//! (canonically).
//!
//! A message is accepted only when: it decodes canonically; its key is trusted for its sender;
//! the signature verifies; its kind is the one expected; it is addressed to the receiver; it
//! is inside its validity window (not expired, not issued in the future beyond the allowed
//! clock skew, not valid for longer than the policy allows); and its `(sender, msg_id)` was
//! never seen before (kept at least until it expires).

use crate::codec::{self, CodecError};
use crate::ids::{IdempotencyKey, KeyId, MsgId, Nonce, PartyId};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// Prefix of every signed byte string.
const DOMAIN: &[u8] = b"kagi-tsm/1\0";

/// What a signed message is, part of what is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// A service provider's (or MNO's) request to the TSM.
    ControlRequest,
    /// The TSM's answer to a control request.
    ControlResponse,
    /// The TSM's execution receipt for a completed operation.
    Receipt,
}

/// Who sent a message to whom, when, and how it can be told apart from any other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Protocol version ([`PROTOCOL_VERSION`]).
    pub proto: u16,
    /// The kind of message.
    pub kind: Kind,
    /// Unique per sender.
    pub msg_id: MsgId,
    /// The signer.
    pub sender: PartyId,
    /// The only party that may accept the message.
    pub recipient: PartyId,
    /// The signing key.
    pub key_id: KeyId,
    /// When it was made (Unix milliseconds).
    pub issued_at: u64,
    /// When it stops being acceptable (Unix milliseconds).
    pub expires_at: u64,
    /// Fresh per message; an answer echoes its request's.
    pub nonce: Nonce,
    /// Requests: the client's idempotency key.
    pub idempotency_key: Option<IdempotencyKey>,
    /// Answers: the request answered, with that request's nonce.
    pub in_reply_to: Option<(MsgId, Nonce)>,
}

/// A header and a body: what is signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// The header.
    pub header: Header,
    /// The body.
    pub body: T,
}

/// The wire form: the canonical envelope bytes and the signature over them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Canonical encoding of an [`Envelope`].
    pub envelope: Vec<u8>,
    /// ECDSA P-256 signature, `r ‖ s` (64 bytes).
    pub signature: Vec<u8>,
}

impl Sealed {
    /// The wire bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }

    /// Parses wire bytes (canonically); nothing is verified yet.
    pub fn from_bytes(bytes: &[u8]) -> Result<Sealed, CodecError> {
        codec::decode(bytes)
    }

    /// The header, unverified: only to find which key to verify with, or to log.
    pub fn peek_header(&self) -> Result<Header, CodecError> {
        // The header is the envelope's first field: decode it alone.
        postcard::take_from_bytes::<Header>(&self.envelope)
            .map(|(h, _)| h)
            .map_err(|e| CodecError::Malformed(e.to_string()))
    }
}

/// Why a signed message was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    /// The bytes are not a message.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Another protocol version.
    #[error("protocol version {0} is not supported (this TSM speaks {PROTOCOL_VERSION})")]
    Version(u16),
    /// The key is not trusted for the sender.
    #[error("key {key} is not trusted for {sender}: register the sender's public key")]
    UnknownKey {
        /// The sender claimed.
        sender: PartyId,
        /// The key named.
        key: KeyId,
    },
    /// The signature does not verify.
    #[error("the signature does not verify: the message was altered or signed with another key")]
    BadSignature,
    /// Another kind of message than expected.
    #[error("a {got:?} message where a {want:?} was expected")]
    WrongKind {
        /// Expected.
        want: Kind,
        /// Received.
        got: Kind,
    },
    /// Addressed to someone else.
    #[error("the message is addressed to {to}, not to {me}")]
    Misdirected {
        /// The recipient named.
        to: PartyId,
        /// This party.
        me: PartyId,
    },
    /// Past its validity.
    #[error("the message expired at {expired_at} (now {now}): send a new one")]
    Expired {
        /// Its expiry.
        expired_at: u64,
        /// The receiver's clock.
        now: u64,
    },
    /// Issued later than the receiver's clock allows.
    #[error(
        "the message was issued at {issued_at}, ahead of this clock ({now}): check the sender's clock"
    )]
    FromTheFuture {
        /// Its issue time.
        issued_at: u64,
        /// The receiver's clock.
        now: u64,
    },
    /// Valid for longer than the policy allows (or expiring before issue).
    #[error("the message's validity window ({0} ms) is outside the allowed 1..={1} ms")]
    Validity(i128, u64),
    /// Seen before.
    #[error("message {0} from {1} was already received (replay)")]
    Replayed(MsgId, PartyId),
    /// The replay cache could not be consulted.
    #[error("replay check failed: {0}")]
    ReplayStore(String),
    /// The answer is not to the request it is expected for.
    #[error("the answer is not to this request (in_reply_to does not match)")]
    NotAnAnswer,
}

impl ProtocolError {
    /// The stable machine code of the refusal, `subject.reason` (`protocol.replayed`, ...), as
    /// the TSM's error reports and the broker's rejections carry it.
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::Codec(_) => "protocol.malformed",
            ProtocolError::Version(_) => "protocol.version",
            ProtocolError::UnknownKey { .. } => "protocol.unknown-key",
            ProtocolError::BadSignature => "protocol.bad-signature",
            ProtocolError::WrongKind { .. } => "protocol.wrong-kind",
            ProtocolError::Misdirected { .. } => "protocol.misdirected",
            ProtocolError::Expired { .. } => "protocol.expired",
            ProtocolError::FromTheFuture { .. } => "protocol.clock-skew",
            ProtocolError::Validity(..) => "protocol.validity",
            ProtocolError::Replayed(..) => "protocol.replayed",
            ProtocolError::ReplayStore(_) => "tsm.replay-store",
            ProtocolError::NotAnAnswer => "protocol.not-an-answer",
        }
    }
}

/// Why this party could not make a message of its own: nothing the other side did.
#[derive(Debug, Error)]
pub enum SignError {
    /// The system's random numbers (for the message's id and nonce) failed.
    #[error("no random numbers for the message's id and nonce: {0}")]
    Random(#[from] getrandom::Error),
    /// The message could not be encoded (too large, or not encodable).
    #[error(transparent)]
    Encode(#[from] CodecError),
}

/// Why a key file's text was refused, or a key could not be written as one.
#[derive(Debug, Error)]
pub enum KeyFileError {
    /// Not a P-256 private key in PKCS#8 PEM.
    #[error("not a P-256 PKCS#8 private key: {0}")]
    PrivateKey(p256::pkcs8::Error),
    /// Not a P-256 public key in SubjectPublicKeyInfo PEM.
    #[error("not a P-256 public key (SubjectPublicKeyInfo PEM): {0}")]
    PublicKey(p256::pkcs8::spki::Error),
    /// The key could not be encoded as PEM.
    #[error("the key could not be written as PEM: {0}")]
    Encode(String),
}

/// A party's signing key.
pub struct Signer {
    party: PartyId,
    key: SigningKey,
    key_id: KeyId,
}

impl Signer {
    /// A signer from a P-256 key.
    pub fn new(party: PartyId, key: SigningKey) -> Signer {
        let key_id = KeyId::of(key.verifying_key());
        Signer { party, key, key_id }
    }

    /// A new random key.
    pub fn generate(party: PartyId) -> Result<Signer, getrandom::Error> {
        use p256::elliptic_curve::Generate;
        Ok(Signer::new(party, SigningKey::try_generate()?))
    }

    /// A key from a PKCS#8 PEM file's text.
    pub fn from_pkcs8_pem(party: PartyId, pem: &str) -> Result<Signer, KeyFileError> {
        use p256::pkcs8::DecodePrivateKey;
        SigningKey::from_pkcs8_pem(pem)
            .map(|k| Signer::new(party, k))
            .map_err(KeyFileError::PrivateKey)
    }

    /// The key as PKCS#8 PEM (for a key file, mode 0600).
    pub fn to_pkcs8_pem(&self) -> Result<zeroize::Zeroizing<String>, KeyFileError> {
        use p256::pkcs8::EncodePrivateKey;
        self.key
            .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
            .map(|s| zeroize::Zeroizing::new(s.to_string()))
            .map_err(|e| KeyFileError::Encode(e.to_string()))
    }

    /// The public key as SubjectPublicKeyInfo PEM (to give the other party).
    pub fn public_pem(&self) -> Result<String, KeyFileError> {
        use p256::pkcs8::EncodePublicKey;
        self.key
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .map_err(|e| KeyFileError::Encode(e.to_string()))
    }

    /// Who signs.
    pub fn party(&self) -> &PartyId {
        &self.party
    }

    /// The key's id.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// The public key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        self.key.verifying_key()
    }

    /// A header for a new message of `kind` to `recipient`, valid `validity_ms` from `now`.
    pub fn header(
        &self,
        kind: Kind,
        recipient: &PartyId,
        now: u64,
        validity_ms: u64,
    ) -> Result<Header, getrandom::Error> {
        Ok(Header {
            proto: PROTOCOL_VERSION,
            kind,
            msg_id: MsgId::random()?,
            sender: self.party.clone(),
            recipient: recipient.clone(),
            key_id: self.key_id,
            issued_at: now,
            expires_at: now.saturating_add(validity_ms),
            nonce: Nonce::random()?,
            idempotency_key: None,
            in_reply_to: None,
        })
    }

    /// The signed answer (kind `ControlResponse`, valid five minutes) to the request whose
    /// header is `request`: addressed to its sender, echoing its id and nonce. What a server
    /// of the control envelope (the TSM, the broker) sends back.
    pub fn answer<T: Serialize>(
        &self,
        request: &Header,
        body: &T,
        now: u64,
    ) -> Result<Vec<u8>, SignError> {
        let mut h = self.header(Kind::ControlResponse, &request.sender, now, 300_000)?;
        h.in_reply_to = Some((request.msg_id, request.nonce));
        Ok(self.seal(h, body).and_then(|s| s.to_bytes())?)
    }

    /// Signs a header and body.
    pub fn seal<T: Serialize>(&self, header: Header, body: &T) -> Result<Sealed, CodecError> {
        #[derive(Serialize)]
        struct Ref<'a, T> {
            header: Header,
            body: &'a T,
        }
        let envelope = codec::encode(&Ref { header, body })?;
        let sig: Signature = self.key.sign(&signed_bytes(&envelope));
        Ok(Sealed {
            envelope,
            signature: sig.to_bytes().to_vec(),
        })
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({} key {})", self.party, self.key_id)
    }
}

fn signed_bytes(envelope: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + envelope.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(envelope);
    m
}

/// The public keys a party trusts, each for one sender.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    keys: BTreeMap<KeyId, (PartyId, VerifyingKey)>,
}

impl Trust {
    /// An empty trust store.
    pub fn new() -> Trust {
        Trust::default()
    }

    /// Trusts `key` for messages from `party`.
    pub fn add(&mut self, party: PartyId, key: VerifyingKey) -> KeyId {
        let id = KeyId::of(&key);
        self.keys.insert(id, (party, key));
        id
    }

    /// Trusts a SubjectPublicKeyInfo PEM key for `party`.
    pub fn add_pem(&mut self, party: PartyId, pem: &str) -> Result<KeyId, KeyFileError> {
        use p256::pkcs8::DecodePublicKey;
        let key = VerifyingKey::from_public_key_pem(pem).map_err(KeyFileError::PublicKey)?;
        Ok(self.add(party, key))
    }

    /// The senders trusted.
    pub fn parties(&self) -> Vec<&PartyId> {
        let mut v: Vec<&PartyId> = self.keys.values().map(|(p, _)| p).collect();
        v.dedup();
        v
    }
}

/// What a receiver accepts.
#[derive(Debug, Clone)]
pub struct Policy {
    /// This party: messages to anyone else are refused.
    pub me: PartyId,
    /// How far ahead of this clock an issue time may be.
    pub max_skew_ms: u64,
    /// The longest validity window accepted.
    pub max_validity_ms: u64,
}

impl Policy {
    /// Thirty seconds of clock skew, five minutes of validity.
    pub fn new(me: PartyId) -> Policy {
        Policy {
            me,
            max_skew_ms: 30_000,
            max_validity_ms: 300_000,
        }
    }
}

/// Remembers which messages were received, at least until they expire.
pub trait ReplayGuard {
    /// `Ok(true)` the first time `(sender, msg_id)` is presented, `Ok(false)` after.
    fn first_seen(
        &mut self,
        sender: &PartyId,
        msg_id: MsgId,
        keep_until: u64,
    ) -> Result<bool, String>;
}

/// A replay guard in memory (one process; the TSM server keeps its guard in its database).
#[derive(Debug, Default)]
pub struct MemoryReplayGuard {
    seen: BTreeMap<(PartyId, MsgId), u64>,
    now: u64,
}

impl MemoryReplayGuard {
    /// Forgets entries that expired before `now`.
    pub fn purge(&mut self, now: u64) {
        self.now = now;
        self.seen.retain(|_, until| *until >= now);
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

impl ReplayGuard for MemoryReplayGuard {
    fn first_seen(
        &mut self,
        sender: &PartyId,
        msg_id: MsgId,
        keep_until: u64,
    ) -> Result<bool, String> {
        let key = (sender.clone(), msg_id);
        if self.seen.contains_key(&key) {
            return Ok(false);
        }
        self.seen.insert(key, keep_until);
        Ok(true)
    }
}

/// A request as a server of the control envelope receives it: the header it claims (to
/// address the answer, even a refusal) and the request verified by [`verify`] with kind
/// `ControlRequest`. `Err` only when the bytes are not a message at all.
#[allow(clippy::type_complexity)]
pub fn receive_request<T: Serialize + DeserializeOwned>(
    body: &[u8],
    trust: &Trust,
    policy: &Policy,
    now: u64,
) -> Result<(Header, Result<Envelope<T>, ProtocolError>), CodecError> {
    let sealed = Sealed::from_bytes(body)?;
    let header = sealed.peek_header()?;
    let verified = verify::<T>(&sealed, Kind::ControlRequest, trust, policy, now);
    Ok((header, verified))
}

/// Verifies everything but the replay check: encoding, key, signature, kind, recipient and
/// validity window. Use [`open`] unless the replay cache is consulted separately (the
/// server's is in its database); then check `(header.sender, header.msg_id)` right after.
pub fn verify<T: Serialize + DeserializeOwned>(
    sealed: &Sealed,
    kind: Kind,
    trust: &Trust,
    policy: &Policy,
    now: u64,
) -> Result<Envelope<T>, ProtocolError> {
    let claimed = sealed.peek_header()?;
    if claimed.proto != PROTOCOL_VERSION {
        return Err(ProtocolError::Version(claimed.proto));
    }
    let env: Envelope<T> = verify_document(sealed, kind, trust)?;
    let h = &env.header;
    if h.recipient != policy.me {
        return Err(ProtocolError::Misdirected {
            to: h.recipient.clone(),
            me: policy.me.clone(),
        });
    }
    let window = i128::from(h.expires_at) - i128::from(h.issued_at);
    if window <= 0 || window > i128::from(policy.max_validity_ms) {
        return Err(ProtocolError::Validity(window, policy.max_validity_ms));
    }
    if now > h.expires_at {
        return Err(ProtocolError::Expired {
            expired_at: h.expires_at,
            now,
        });
    }
    if h.issued_at > now.saturating_add(policy.max_skew_ms) {
        return Err(ProtocolError::FromTheFuture {
            issued_at: h.issued_at,
            now,
        });
    }
    Ok(env)
}

/// Verifies a stored document (a receipt kept for years): the encoding, the key trusted for
/// its sender, the signature and the kind — not its validity window, recipient or novelty,
/// which only matter when it is delivered.
pub fn verify_document<T: Serialize + DeserializeOwned>(
    sealed: &Sealed,
    kind: Kind,
    trust: &Trust,
) -> Result<Envelope<T>, ProtocolError> {
    let claimed = sealed.peek_header()?;
    let Some((party, key)) = trust.keys.get(&claimed.key_id) else {
        return Err(ProtocolError::UnknownKey {
            sender: claimed.sender,
            key: claimed.key_id,
        });
    };
    if *party != claimed.sender {
        return Err(ProtocolError::UnknownKey {
            sender: claimed.sender,
            key: claimed.key_id,
        });
    }
    let sig = Signature::from_slice(&sealed.signature).map_err(|_| ProtocolError::BadSignature)?;
    key.verify(&signed_bytes(&sealed.envelope), &sig)
        .map_err(|_| ProtocolError::BadSignature)?;
    let env: Envelope<T> = codec::decode(&sealed.envelope)?;
    if env.header.kind != kind {
        return Err(ProtocolError::WrongKind {
            want: kind,
            got: env.header.kind,
        });
    }
    Ok(env)
}

/// Verifies a message ([`verify`]) and records it in `guard`: a second delivery is refused.
pub fn open<T: Serialize + DeserializeOwned>(
    sealed: &Sealed,
    kind: Kind,
    trust: &Trust,
    policy: &Policy,
    now: u64,
    guard: &mut dyn ReplayGuard,
) -> Result<Envelope<T>, ProtocolError> {
    let env = verify::<T>(sealed, kind, trust, policy, now)?;
    let h = &env.header;
    // Kept past expiry by the skew, so a message cannot come back in the skew window.
    let until = h.expires_at.saturating_add(policy.max_skew_ms);
    if !guard
        .first_seen(&h.sender, h.msg_id, until)
        .map_err(ProtocolError::ReplayStore)?
    {
        return Err(ProtocolError::Replayed(h.msg_id, h.sender.clone()));
    }
    Ok(env)
}

/// Checks that an answer is to `request` (its msg_id and nonce echoed).
pub fn check_answer(answer: &Header, request: &Header) -> Result<(), ProtocolError> {
    if answer.in_reply_to != Some((request.msg_id, request.nonce))
        || answer.recipient != request.sender
        || answer.sender != request.recipient
    {
        return Err(ProtocolError::NotAnAnswer);
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parties() -> (Signer, Trust, Policy) {
        let sp = Signer::generate(PartyId::new("sp:bank").unwrap()).unwrap();
        let mut trust = Trust::new();
        trust.add(sp.party().clone(), *sp.verifying_key());
        let policy = Policy::new(PartyId::new("tsm:one").unwrap());
        (sp, trust, policy)
    }

    fn sealed(sp: &Signer, to: &str, now: u64, validity: u64) -> Sealed {
        let h = sp
            .header(
                Kind::ControlRequest,
                &PartyId::new(to).unwrap(),
                now,
                validity,
            )
            .unwrap();
        sp.seal(h, &"issue".to_string()).unwrap()
    }

    #[test]
    fn accepted_once_then_replay_refused() {
        let (sp, trust, policy) = parties();
        let now = 1_000_000;
        let s = sealed(&sp, "tsm:one", now, 60_000);
        let mut guard = MemoryReplayGuard::default();
        let env: Envelope<String> = open(
            &s,
            Kind::ControlRequest,
            &trust,
            &policy,
            now + 5,
            &mut guard,
        )
        .unwrap();
        assert_eq!(env.body, "issue");
        let again = open::<String>(
            &s,
            Kind::ControlRequest,
            &trust,
            &policy,
            now + 6,
            &mut guard,
        );
        assert!(matches!(again, Err(ProtocolError::Replayed(..))));
        // Round trip through the wire form.
        let wire = s.to_bytes().unwrap();
        assert_eq!(Sealed::from_bytes(&wire).unwrap(), s);
    }

    #[test]
    fn every_rule_refuses() {
        let (sp, trust, policy) = parties();
        let now = 5_000_000;
        let mut g = MemoryReplayGuard::default();
        let mut check = |s: &Sealed, at: u64| {
            open::<String>(s, Kind::ControlRequest, &trust, &policy, at, &mut g).unwrap_err()
        };
        assert!(matches!(
            check(&sealed(&sp, "tsm:other", now, 1000), now),
            ProtocolError::Misdirected { .. }
        ));
        assert!(matches!(
            check(&sealed(&sp, "tsm:one", now, 1000), now + 1001),
            ProtocolError::Expired { .. }
        ));
        assert!(matches!(
            check(&sealed(&sp, "tsm:one", now + 60_000, 1000), now),
            ProtocolError::FromTheFuture { .. }
        ));
        assert!(matches!(
            check(&sealed(&sp, "tsm:one", now, 3_600_000), now),
            ProtocolError::Validity(..)
        ));
        // Another key claiming the same sender.
        let mallory = Signer::generate(PartyId::new("sp:bank").unwrap()).unwrap();
        assert!(matches!(
            check(&sealed(&mallory, "tsm:one", now, 1000), now),
            ProtocolError::UnknownKey { .. }
        ));
        // Wrong kind.
        let h = sp
            .header(Kind::Receipt, &PartyId::new("tsm:one").unwrap(), now, 1000)
            .unwrap();
        let r = sp.seal(h, &"x".to_string()).unwrap();
        assert!(matches!(check(&r, now), ProtocolError::WrongKind { .. }));
    }

    #[test]
    fn a_key_trusted_for_another_party_does_not_sign_for_this_one() {
        let (sp, mut trust, policy) = parties();
        let other = Signer::generate(PartyId::new("sp:shop").unwrap()).unwrap();
        trust.add(other.party().clone(), *other.verifying_key());
        // `other` signs a message claiming to be from sp:bank with its own key id.
        let mut h = other
            .header(
                Kind::ControlRequest,
                &PartyId::new("tsm:one").unwrap(),
                10,
                1000,
            )
            .unwrap();
        h.sender = sp.party().clone();
        let s = other.seal(h, &"x".to_string()).unwrap();
        assert!(matches!(
            verify::<String>(&s, Kind::ControlRequest, &trust, &policy, 10),
            Err(ProtocolError::UnknownKey { .. })
        ));
    }

    proptest! {
        #[test]
        fn any_altered_byte_is_refused(pos in 0usize..400, bit in 0u8..8) {
            let (sp, trust, policy) = parties();
            let s = sealed(&sp, "tsm:one", 1000, 60_000);
            let mut wire = s.to_bytes().unwrap();
            let pos = pos % wire.len();
            wire[pos] ^= 1 << bit;
            let res = Sealed::from_bytes(&wire).map_err(ProtocolError::from).and_then(|t| {
                verify::<String>(&t, Kind::ControlRequest, &trust, &policy, 1001)
            });
            prop_assert!(res.is_err());
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let (_, trust, policy) = parties();
            if let Ok(s) = Sealed::from_bytes(&b) {
                let _ = verify::<String>(&s, Kind::ControlRequest, &trust, &policy, 0);
            }
        }
    }
}
