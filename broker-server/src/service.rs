//! What the broker does: holder logins (the JPKI card's signature over a broker nonce, or a
//! password at lower assurance), acting for a holder at a service (a MAC or a signature with
//! the card's service key, or a signed assertion), and the administrators' requests.
//!
//! Per-service keys exist in clear only while a request uses them (zeroized afterwards);
//! every other copy is sealed ([`crate::envelope`]). A card revoked at the broker stops every
//! service at once: each act checks the card, not only the session. Challenges are stateless
//! (MAC'd with the broker's state key, valid two minutes) and single-use (recorded on the
//! card's shard in the same transaction as the session they open).

use crate::clock::{Clock, SystemClock};
use crate::envelope::{Envelope, SealedRecord};
use crate::password_login::Backoff;
use crate::store::{CredentialRow, Shard, Shards};
use broker_protocol::api::{
    self, Act, ActResult, AdminRequest, AdminResponse, ApiError, AuditEntry, CardLogin, Challenge,
    Method, ServicePolicy, Session,
};
use broker_protocol::assertion::{self, Assurance, Claims, Jwks};
use hmac::{Hmac, KeyInit, Mac};
use kagi_db::StoreError;
use kagi_signed::certkey::CertKey;
use kagi_signed::password;
use kagi_signed::signing::{self, Policy, Signer, Trust};
use sha2::{Digest, Sha256};
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
    /// Not a message.
    #[error("{0}")]
    BadRequest(String),
    /// The key store (HSM) failed or refused: nothing was changed.
    #[error("the key store failed: {0}")]
    Keys(String),
    /// Something that should not fail did (random numbers, encodings).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ApiError> for BrokerError {
    fn from(e: ApiError) -> Self {
        BrokerError::Refused(e)
    }
}

type Result<T> = std::result::Result<T, BrokerError>;

type HmacSha256 = Hmac<Sha256>;

/// A credential's secret, made at enrolment.
struct NewSecret {
    secret: Zeroizing<Vec<u8>>,
    public_key: Option<Vec<u8>>,
}

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::fill(b.as_mut()).map_err(|e| BrokerError::Internal(e.to_string()))?;
    Ok(b)
}

fn new_secret(method: Method) -> Result<NewSecret> {
    use p256::pkcs8::EncodePublicKey;
    let bad = |e: String| BrokerError::Internal(e);
    Ok(match method {
        Method::Mac => NewSecret {
            secret: Zeroizing::new(random::<16>()?.to_vec()),
            public_key: None,
        },
        Method::SignP256 => {
            use p256::elliptic_curve::Generate;
            let k = p256::ecdsa::SigningKey::try_generate().map_err(|e| bad(e.to_string()))?;
            NewSecret {
                secret: Zeroizing::new(k.to_bytes().to_vec()),
                public_key: Some(
                    k.verifying_key()
                        .to_public_key_der()
                        .map_err(|e| bad(e.to_string()))?
                        .as_bytes()
                        .to_vec(),
                ),
            }
        }
        Method::SignRsa => {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::pkcs8::EncodePublicKey as _;
            let k = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)
                .map_err(|e| bad(e.to_string()))?;
            NewSecret {
                secret: Zeroizing::new(
                    k.to_pkcs1_der()
                        .map_err(|e| bad(e.to_string()))?
                        .as_bytes()
                        .to_vec(),
                ),
                public_key: Some(
                    k.to_public_key()
                        .to_public_key_der()
                        .map_err(|e| bad(e.to_string()))?
                        .as_bytes()
                        .to_vec(),
                ),
            }
        }
        // An assertion service needs no per-card secret, only the pairwise id.
        Method::Assertion => NewSecret {
            secret: Zeroizing::new(Vec::new()),
            public_key: None,
        },
    })
}

/// The card CAs and their revocation data, from files: CA certificates (PEM or DER), and
/// revocation files — CRLs (`.crl`, `.der`, or PEM `X509 CRL`; each must be signed by its CA)
/// or plain lists of serials (one per line, decimal or `0x` hex, as `kagi ca` writes them).
/// Re-read when any file's modification time changes; a missing revocation file counts as
/// empty (a CRL not yet published), a missing CA as an error.
pub struct CardTrust {
    cas: Vec<std::path::PathBuf>,
    revocations: Vec<std::path::PathBuf>,
    cache: std::sync::Mutex<Option<TrustCache>>,
}

type TrustCache = (Vec<Option<std::time::SystemTime>>, Arc<kagi_certs::Trust>);

impl CardTrust {
    /// Trust from these files (read at the first login and whenever they change).
    pub fn new(cas: Vec<std::path::PathBuf>, revocations: Vec<std::path::PathBuf>) -> CardTrust {
        CardTrust {
            cas,
            revocations,
            cache: std::sync::Mutex::new(None),
        }
    }

    fn stamps(&self) -> Vec<Option<std::time::SystemTime>> {
        self.cas
            .iter()
            .chain(&self.revocations)
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// The trust as the files say now.
    pub fn current(&self) -> std::result::Result<Arc<kagi_certs::Trust>, kagi_certs::CertError> {
        let stamps = self.stamps();
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| kagi_certs::CertError("trust cache poisoned".into()))?;
        if let Some((s, t)) = cache.as_ref()
            && *s == stamps
        {
            return Ok(t.clone());
        }
        let named = |p: &std::path::Path, e: kagi_certs::CertError| {
            kagi_certs::CertError(format!("{}: {e}", p.display()))
        };
        let mut trust = kagi_certs::Trust::default();
        for p in &self.cas {
            let bytes = std::fs::read(p)
                .map_err(|e| kagi_certs::CertError(format!("{}: {e}", p.display())))?;
            trust.add_ca_file(&bytes).map_err(|e| named(p, e))?;
        }
        for p in &self.revocations {
            let Ok(bytes) = std::fs::read(p) else {
                continue;
            };
            let crl = bytes.starts_with(b"-----BEGIN X509 CRL")
                || p.extension().is_some_and(|e| e == "crl" || e == "der");
            if crl {
                trust.add_crl_file(&bytes)
            } else {
                trust.add_revoked_list(&String::from_utf8_lossy(&bytes))
            }
            .map_err(|e| named(p, e))?;
        }
        let trust = Arc::new(trust);
        *cache = Some((stamps, trust.clone()));
        Ok(trust)
    }
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
        }
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
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        for p in parts {
            m.update(p);
        }
        Ok(m.finalize().into_bytes().into())
    }

    // ------------------------------------------------------------ holders

    /// A login challenge: 16 random bytes and an expiry, MAC'd (stateless, valid 2 minutes).
    pub fn challenge(&self) -> Result<Challenge> {
        let r = random::<16>()?;
        let expires = (self.now() / 1000 + 120) as u64;
        let mut nonce = r.to_vec();
        nonce.extend_from_slice(&expires.to_be_bytes());
        let tag = self.mac(&[b"challenge", &nonce])?;
        nonce.extend_from_slice(&tag[..16]);
        Ok(Challenge {
            nonce: api::b64(&nonce),
            broker: self.config.name.clone(),
            expires_at: expires,
        })
    }

    /// Checks a challenge this broker issued; returns its expiry (Unix seconds).
    fn check_challenge(&self, nonce: &[u8]) -> std::result::Result<i64, ApiError> {
        let bad = || {
            refuse(
                "login.bad-challenge",
                "not a challenge of this broker: ask for a new one",
            )
        };
        if nonce.len() != 40 {
            return Err(bad());
        }
        let tag = self.mac(&[b"challenge", &nonce[..24]]).map_err(|_| bad())?;
        if !kagi_signed::access::same(
            &{
                let mut t = [0u8; 32];
                t[..16].copy_from_slice(&tag[..16]);
                t
            },
            &{
                let mut t = [0u8; 32];
                t[..16].copy_from_slice(&nonce[24..]);
                t
            },
        ) {
            return Err(bad());
        }
        let expires = u64::from_be_bytes(nonce[16..24].try_into().map_err(|_| bad())?) as i64;
        if expires < self.now() / 1000 {
            return Err(refuse(
                "login.challenge-expired",
                "the challenge expired: ask for a new one",
            ));
        }
        Ok(expires)
    }

    fn session_token(&self, card: &str) -> Result<(String, [u8; 32])> {
        let shard = self.shards.index_of(card);
        let r = random::<32>()?;
        let token = format!("{shard}.{}", api::b64(r.as_ref()));
        Ok((token.clone(), Sha256::digest(token.as_bytes()).into()))
    }

    /// A card login: the card signed [`api::login_message`] of a fresh challenge with its
    /// user-authentication key; the certificate chains to a trusted CA, is valid now, is not
    /// revoked, and its card is enrolled and not revoked here.
    pub async fn login_card(&self, l: &CardLogin) -> Result<Session> {
        use der::{Decode, Encode};
        let nonce = api::unb64(&l.nonce)
            .ok_or_else(|| refuse("login.malformed", "nonce is not base64url"))?;
        let nonce_expiry = self.check_challenge(&nonce)?;
        let der = api::unb64(&l.certificate)
            .ok_or_else(|| refuse("login.malformed", "certificate is not base64url"))?;
        let sig = api::unb64(&l.signature)
            .ok_or_else(|| refuse("login.malformed", "signature is not base64url"))?;
        let cert = x509_cert::Certificate::from_der(&der).map_err(|e| {
            refuse(
                "login.bad-certificate",
                format!("the certificate does not parse: {e}"),
            )
        })?;
        let card = kagi_certs::subject_cn(&cert)
            .ok_or_else(|| refuse("login.bad-certificate", "the certificate names no card"))?;
        let trust = self
            .config
            .card_trust
            .current()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let judged = kagi_certs::judge(&der, &trust, std::time::SystemTime::now());
        match judged.verdict {
            kagi_certs::Verdict::Eligible => {}
            kagi_certs::Verdict::Revoked => {
                self.audit(&card, "", Assurance::Card, "login", "login.revoked")
                    .await?;
                return Err(refuse("login.revoked", "the certificate is revoked").into());
            }
            kagi_certs::Verdict::Expired => {
                return Err(refuse("login.expired", "the certificate is not valid now").into());
            }
            kagi_certs::Verdict::UnknownIssuer => {
                return Err(refuse(
                    "login.unknown-issuer",
                    format!(
                        "no trusted CA issued this certificate ({})",
                        judged.issuer.unwrap_or_default()
                    ),
                )
                .into());
            }
            kagi_certs::Verdict::NotAJpkiCard => {
                return Err(refuse("login.bad-certificate", judged.reasons.join("; ")).into());
            }
        }
        let spki = cert
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        let key = CertKey::from_spki(&spki).map_err(|e| refuse("login.bad-certificate", e))?;
        if key
            .verify(&api::login_message(&self.config.name, &nonce), &sig)
            .is_err()
        {
            return Err(refuse("login.bad-signature", "the card's signature does not verify: wrong PIN-protected key, or another challenge").into());
        }
        let shard = self.shards.of(&card);
        match shard.card(&card).await? {
            None => {
                return Err(refuse(
                    "login.not-enrolled",
                    format!("card {card} is not enrolled at this broker"),
                )
                .into());
            }
            Some(c) if c.state != "active" => {
                self.audit(&card, "", Assurance::Card, "login", "login.revoked")
                    .await?;
                return Err(refuse("login.revoked", format!("card {card} is revoked")).into());
            }
            Some(_) => {}
        }
        self.open_session(shard, &card, Assurance::Card, Some((&nonce, nonce_expiry)))
            .await
    }

    pub(crate) async fn open_session(
        &self,
        shard: &Shard,
        card: &str,
        assurance: Assurance,
        nonce: Option<(&[u8], i64)>,
    ) -> Result<Session> {
        let (token, hash) = self.session_token(card)?;
        let t = self.now();
        let expires = t / 1000 + self.config.session_secs as i64;
        let mut batch = Vec::new();
        if let Some((n, exp)) = nonce {
            batch.push(Shard::use_nonce(n, exp * 1000));
        }
        // The card must still be active when the session is written: a revoke committed
        // first fails this batch, one after it ends the session.
        let guard = batch.len();
        batch.push(Shard::still_active(card, t));
        batch.push(Shard::put_session(&hash, card, assurance, expires));
        batch.push(Shard::audit(card, t, "", assurance.name(), "login", "ok"));
        match shard.commit(batch).await {
            Ok(()) => {}
            Err(StoreError::Conflict(0)) if nonce.is_some() => {
                return Err(refuse(
                    "login.replayed",
                    "this challenge was already used: ask for a new one",
                )
                .into());
            }
            Err(StoreError::Conflict(i)) if i == guard => {
                return Err(refuse("login.revoked", format!("card {card} is revoked")).into());
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(card = %card, assurance = assurance.name(), "login");
        Ok(Session {
            session: token,
            assurance,
            expires_at: expires as u64,
        })
    }

    /// The card and assurance of a live session, if its card is still active.
    async fn session(&self, token: &str) -> Result<(String, Assurance, &Shard)> {
        let bad = || {
            refuse(
                "session.unknown",
                "no such session (expired or ended): log in again",
            )
        };
        let shard = token
            .split_once('.')
            .and_then(|(i, _)| i.parse::<usize>().ok())
            .and_then(|i| self.shards.get(i))
            .ok_or_else(bad)?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let (card, assurance) = shard
            .session(&hash, self.now() / 1000)
            .await?
            .ok_or_else(bad)?;
        match shard.card(&card).await? {
            Some(c) if c.state == "active" => Ok((card, assurance, shard)),
            _ => Err(refuse("session.revoked", "the card is revoked").into()),
        }
    }

    async fn audit(
        &self,
        card: &str,
        service: &str,
        a: Assurance,
        event: &str,
        outcome: &str,
    ) -> Result<()> {
        self.shards
            .of(card)
            .commit(vec![Shard::audit(
                card,
                self.now(),
                service,
                a.name(),
                event,
                outcome,
            )])
            .await?;
        Ok(())
    }

    /// Acts for the holder at a service: checks the session, the card, the consent and the
    /// service's policy, then answers the service's challenge with the card's key for it, or
    /// signs an assertion.
    pub async fn act(&self, a: &Act) -> Result<ActResult> {
        let (card, assurance, shard) = self.session(&a.session).await?;
        let result = self.act_for(&card, assurance, shard, a).await;
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(BrokerError::Refused(e)) => e.code.clone(),
            Err(_) => "error".to_string(),
        };
        shard
            .commit(vec![Shard::audit(
                &card,
                self.now(),
                &a.service,
                assurance.name(),
                "act",
                &outcome,
            )])
            .await?;
        result
    }

    async fn act_for(
        &self,
        card: &str,
        assurance: Assurance,
        shard: &Shard,
        a: &Act,
    ) -> Result<ActResult> {
        if !a.consent {
            return Err(refuse(
                "act.no-consent",
                "the holder has not consented to this service",
            )
            .into());
        }
        // An unknown service and one this card has no credential for answer alike (the
        // holder learns nothing about services that are not theirs).
        let not_yours = || {
            refuse(
                "act.not-enrolled",
                format!("the card has no credential for {}", a.service),
            )
        };
        let policy = shard.service(&a.service).await?.ok_or_else(not_yours)?;
        let cred = shard
            .active_credential(card, &a.service)
            .await?
            .ok_or_else(not_yours)?;
        if assurance < policy.min_assurance {
            return Err(refuse(
                "act.assurance",
                format!(
                    "{} requires a {} login",
                    policy.id,
                    policy.min_assurance.name()
                ),
            )
            .into());
        }
        let hour = ((self.now() / 3_600_000) % 24) as u8;
        if !policy.allows_hour(hour) {
            return Err(refuse(
                "act.outside-hours",
                format!("{} is not available at {hour}:00 UTC", policy.id),
            )
            .into());
        }
        let challenge = || {
            a.challenge
                .as_deref()
                .and_then(api::unb64)
                .filter(|c| !c.is_empty() && c.len() <= 1024)
                .ok_or_else(|| {
                    refuse(
                        "act.no-challenge",
                        "this service needs its challenge (1 to 1024 bytes, base64url)",
                    )
                })
        };
        let mut out = ActResult {
            service: a.service.clone(),
            method: policy.method,
            mac: None,
            signature: None,
            assertion: None,
        };
        match policy.method {
            Method::Assertion => {
                let nonce = a
                    .nonce
                    .clone()
                    .filter(|n| !n.is_empty() && n.len() <= 256)
                    .ok_or_else(|| {
                        refuse("act.no-nonce", "an assertion needs the service's nonce")
                    })?;
                let iat = (self.now() / 1000) as u64;
                let claims = Claims {
                    iss: self.config.name.clone(),
                    sub: cred.pairwise.clone(),
                    aud: policy.id.clone(),
                    iat,
                    exp: iat + 120,
                    nonce,
                    acr: assurance.acr().into(),
                    jti: api::b64(random::<16>()?.as_ref()),
                };
                out.assertion = Some(
                    assertion::sign(&self.config.assertion_key, &claims)
                        .map_err(|e| BrokerError::Internal(e.to_string()))?,
                );
            }
            Method::Mac => {
                let c = challenge()?;
                let secret = self.open(&cred)?;
                let key = card_wire::scp03::AesKey::new(&secret)
                    .map_err(|_| BrokerError::Internal("a stored MAC key is malformed".into()))?;
                out.mac = Some(api::b64(&card_wire::scp03::crypto::cmac(&key, &c)));
            }
            Method::SignP256 => {
                use p256::ecdsa::signature::Signer as _;
                let c = challenge()?;
                let secret = self.open(&cred)?;
                let key = p256::ecdsa::SigningKey::from_slice(&secret)
                    .map_err(|_| BrokerError::Internal("a stored P-256 key is malformed".into()))?;
                let sig: p256::ecdsa::Signature = key.sign(&c);
                out.signature = Some(api::b64(&sig.to_bytes()));
            }
            Method::SignRsa => {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                use rsa::signature::{SignatureEncoding, Signer as _};
                let c = challenge()?;
                let secret = self.open(&cred)?;
                let key = rsa::PrivateKey::from_pkcs1_der(&secret)
                    .map_err(|_| BrokerError::Internal("a stored RSA key is malformed".into()))?;
                let sig = rsa::pkcs1v15::SigningKey::<Sha256>::new(key).sign(&c);
                out.signature = Some(api::b64(&sig.to_vec()));
            }
        }
        tracing::info!(card = %card, service = %policy.id, method = policy.method.name(), "acted");
        Ok(out)
    }

    fn open(&self, cred: &CredentialRow) -> Result<Zeroizing<Vec<u8>>> {
        self.config
            .envelope
            .open(
                &CredentialRow::aad(&cred.card, &cred.service, cred.version),
                &cred.sealed,
            )
            .map_err(|e| BrokerError::Keys(e.to_string()))
    }

    /// The holder's own audit trail: who (which service), when, with which assurance.
    pub async fn holder_audit(&self, token: &str) -> Result<Vec<AuditEntry>> {
        let (card, _, shard) = self.session(token).await?;
        Ok(shard.audit_trail(Some(&card)).await?)
    }

    // ------------------------------------------------------------ administrators

    /// Handles a signed administrator's request; the answer is signed.
    pub async fn admin(&self, body: &[u8]) -> Result<Vec<u8>> {
        let (header, verified) = signing::receive_request::<AdminRequest>(
            body,
            &self.config.admin_trust,
            &self.config.policy,
            signing::now_ms(),
        )
        .map_err(|e| BrokerError::BadRequest(e.to_string()))?;
        let answer = match verified {
            Err(e) => AdminResponse::Rejected {
                code: e.code().to_string(),
                detail: e.to_string(),
            },
            Ok(env) if env.header.sender.role() != "admin" => AdminResponse::Rejected {
                code: "admin.not-an-administrator".into(),
                detail: format!("{} is not an administrator", env.header.sender),
            },
            Ok(env) => {
                let h = &env.header;
                let keep = h.expires_at.saturating_add(self.config.policy.max_skew_ms) as i64;
                if !self
                    .shards
                    .first()
                    .first_seen(&h.sender.0, &h.msg_id.to_hex(), keep)
                    .await?
                {
                    AdminResponse::Rejected {
                        code: "protocol.replayed".into(),
                        detail: "this request was already received".into(),
                    }
                } else {
                    match self.handle_admin(env.body).await {
                        Ok(r) => r,
                        Err(BrokerError::Refused(e)) => AdminResponse::Rejected {
                            code: e.code,
                            detail: e.detail,
                        },
                        Err(e) => return Err(e),
                    }
                }
            }
        };
        self.config
            .signer
            .answer(&header, &answer, signing::now_ms())
            .map_err(BrokerError::Internal)
    }

    /// The KEK new records are sealed under.
    pub async fn current_kek(&self) -> Result<String> {
        Ok(self
            .shards
            .first()
            .setting("current_kek")
            .await?
            .unwrap_or_else(|| self.config.default_kek.clone()))
    }

    async fn handle_admin(&self, req: AdminRequest) -> Result<AdminResponse> {
        let t = self.now();
        match req {
            AdminRequest::RegisterService(p) => {
                self.shards
                    .everywhere(vec![Shard::put_service(&p, t)])
                    .await?;
                tracing::info!(service = %p.id, method = p.method.name(), "service registered");
                Ok(AdminResponse::Ok)
            }
            AdminRequest::EnrolCard {
                card,
                holder,
                password,
            } => {
                if let Some(p) = &password {
                    password::accept(p, &self.password_policy)
                        .map_err(|e| refuse("admin.weak-password-verifier", e.to_string()))?;
                }
                let shard = self.shards.of(&card);
                // One conditional upsert: a revoked card stays revoked, whatever else runs.
                match shard
                    .commit(vec![
                        Shard::enrol_card(&card, &holder, password.as_deref(), t),
                        Shard::audit(&card, t, "", "", "enrol-card", "ok"),
                    ])
                    .await
                {
                    Ok(()) => Ok(AdminResponse::Ok),
                    Err(StoreError::Conflict(0)) => {
                        Err(refuse("admin.revoked", format!("card {card} is revoked")).into())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            AdminRequest::EnrolCredential { card, service } => {
                self.enrol(&card, &service, false).await
            }
            AdminRequest::RotateServiceKey { card, service } => {
                self.enrol(&card, &service, true).await
            }
            AdminRequest::RotateKek { to } => {
                // A KEK made for this rotation while the broker runs.
                if !self.config.envelope.keks().contains(&to) {
                    self.config
                        .envelope
                        .refresh()
                        .map_err(|e| BrokerError::Keys(e.to_string()))?;
                }
                if !self.config.envelope.keks().contains(&to) {
                    return Err(refuse(
                        "admin.unknown-kek",
                        format!("the key store holds no KEK '{to}'"),
                    )
                    .into());
                }
                self.shards
                    .everywhere(vec![Shard::put_setting("current_kek", &to)])
                    .await?;
                let (rewrapped, remaining) = self.rewrap_some(&to, 20_000).await?;
                Ok(AdminResponse::Rotation {
                    kek: to,
                    rewrapped,
                    remaining,
                })
            }
            AdminRequest::RevokeCard { card } => {
                let shard = self.shards.of(&card);
                // Only the state changes, in one statement with the end of the sessions:
                // nothing a login or an act writes can bring the card back.
                match shard
                    .commit(vec![
                        Shard::revoke_card(&card, t),
                        Shard::end_sessions(&card),
                        Shard::audit(&card, t, "", "", "revoke-card", "ok"),
                    ])
                    .await
                {
                    Ok(()) => {}
                    Err(StoreError::Conflict(0)) => {
                        return Err(refuse(
                            "admin.unknown-card",
                            format!("card {card} is not enrolled"),
                        )
                        .into());
                    }
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(card = %card, "card revoked");
                Ok(AdminResponse::Ok)
            }
            AdminRequest::Audit { card } => {
                let mut all = Vec::new();
                match &card {
                    Some(c) => all = self.shards.of(c).audit_trail(Some(c)).await?,
                    None => {
                        for s in self.shards.all() {
                            all.extend(s.audit_trail(None).await?);
                        }
                        all.sort_by_key(|a| a.at);
                    }
                }
                Ok(AdminResponse::Audit(all))
            }
        }
    }

    /// A new credential: its secret generated here and sealed at once under `kek`.
    fn make_credential(
        &self,
        kek: &str,
        card: &str,
        service: &str,
        method: Method,
        version: i64,
    ) -> Result<(CredentialRow, NewSecret)> {
        let secret = new_secret(method)?;
        let sealed: SealedRecord = self
            .config
            .envelope
            .seal(
                kek,
                &CredentialRow::aad(card, service, version),
                &secret.secret,
            )
            .map_err(|e| BrokerError::Keys(e.to_string()))?;
        let pairwise = hex::encode(
            &self.mac(&[b"pairwise", card.as_bytes(), &[0], service.as_bytes()])?[..16],
        );
        let row = CredentialRow {
            card: card.into(),
            service: service.into(),
            version,
            state: "active".into(),
            sealed,
            public_key: secret.public_key.clone(),
            pairwise,
        };
        Ok((row, secret))
    }

    /// Enrols many new cards at once (a migration from another system, or a synthetic load):
    /// each card active with holder id = card id, and a credential for each of `services`
    /// (which must be registered), made and sealed as a single enrolment makes them. A card's
    /// rows are committed together, 200 cards per transaction per shard. Cards already
    /// enrolled keep what they have (their rows are skipped). Returns the credentials made.
    pub async fn enrol_many(&self, cards: &[String], services: &[String]) -> Result<u64> {
        let mut policies = Vec::new();
        for s in services {
            let p = self
                .shards
                .first()
                .service(s)
                .await?
                .ok_or_else(|| refuse("admin.unknown-service", format!("no service {s}")))?;
            policies.push(p);
        }
        let kek = self.current_kek().await?;
        let mut made = 0u64;
        let mut pending: Vec<Vec<kagi_db::Stmt>> = vec![Vec::new(); self.shards.all().len()];
        let mut in_batch = vec![0usize; pending.len()];
        for card in cards {
            let i = self.shards.index_of(card);
            let t = self.now();
            pending[i].push(Shard::insert_card_if_new(card, t));
            for p in &policies {
                let (row, _secret) = self.make_credential(&kek, card, &p.id, p.method, 1)?;
                let mut insert = Shard::insert_credential(&row, t);
                insert.expect = kagi_db::Expect::Any;
                pending[i].push(insert);
                made += 1;
            }
            pending[i].push(Shard::audit(card, t, "", "", "enrol-bulk", "ok"));
            in_batch[i] += 1;
            if in_batch[i] == 200 {
                self.shards.all()[i]
                    .commit(std::mem::take(&mut pending[i]))
                    .await?;
                in_batch[i] = 0;
            }
        }
        for (i, batch) in pending.into_iter().enumerate() {
            if !batch.is_empty() {
                self.shards.all()[i].commit(batch).await?;
            }
        }
        Ok(made)
    }

    /// Makes a card's credential for a service (or, with `rotate`, a new version of it): the
    /// secret generated here, sealed at once, its new version and the old one's retirement in
    /// one transaction — no half-rotated key.
    async fn enrol(&self, card: &str, service: &str, rotate: bool) -> Result<AdminResponse> {
        let shard = self.shards.of(card);
        match shard.card(card).await? {
            Some(c) if c.state == "active" => {}
            Some(_) => {
                return Err(refuse("admin.revoked", format!("card {card} is revoked")).into());
            }
            None => {
                return Err(
                    refuse("admin.unknown-card", format!("card {card} is not enrolled")).into(),
                );
            }
        }
        let policy: ServicePolicy = shard
            .service(service)
            .await?
            .ok_or_else(|| refuse("admin.unknown-service", format!("no service {service}")))?;
        let existing = shard.active_credential(card, service).await?;
        if let (Some(c), false) = (&existing, rotate) {
            // Enrolled already: the same answer again.
            let shared = if policy.method == Method::Mac {
                Some(self.open(c)?.to_vec())
            } else {
                None
            };
            return Ok(AdminResponse::Credential {
                version: c.version as u32,
                public_key: c.public_key.clone(),
                shared_key: shared,
            });
        }
        let version = existing.as_ref().map(|c| c.version + 1).unwrap_or(1);
        let kek = self.current_kek().await?;
        let (row, secret) = self.make_credential(&kek, card, service, policy.method, version)?;
        let t = self.now();
        let mut batch = vec![Shard::insert_credential(&row, t)];
        if let Some(old) = &existing {
            batch.push(Shard::retire_credential(card, service, old.version));
        }
        batch.push(Shard::audit(
            card,
            t,
            service,
            "",
            if rotate { "rotate-key" } else { "enrol" },
            "ok",
        ));
        match shard.commit(batch).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(refuse(
                    "admin.conflict",
                    "another request changed this credential meanwhile: ask again",
                )
                .into());
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(card = %card, service = %service, version, "credential made");
        Ok(AdminResponse::Credential {
            version: version as u32,
            public_key: secret.public_key,
            shared_key: (policy.method == Method::Mac).then(|| secret.secret.to_vec()),
        })
    }

    /// Re-wraps up to `budget` records under `to`, shard by shard; returns how many, and how
    /// many remain under another KEK. Each record changes in its own statement, only if still
    /// under the KEK it was read with: an interrupted rotation leaves every record whole under
    /// one KEK, and any instance continues it.
    pub async fn rewrap_some(&self, to: &str, budget: u64) -> Result<(u64, u64)> {
        let mut done = 0u64;
        for shard in self.shards.all() {
            while done < budget {
                let batch = shard
                    .credentials_not_under(to, (budget - done).min(500) as i64)
                    .await?;
                if batch.is_empty() {
                    break;
                }
                let mut stmts = Vec::with_capacity(batch.len());
                for c in &batch {
                    let new = self
                        .config
                        .envelope
                        .rewrap(&c.sealed, to)
                        .map_err(|e| BrokerError::Keys(e.to_string()))?;
                    let mut s = Shard::rewrap_stmt(c, &c.sealed.kek, &new);
                    s.expect = kagi_db::Expect::Any;
                    stmts.push(s);
                }
                shard.commit(stmts).await?;
                done += batch.len() as u64;
            }
        }
        let mut remaining = 0;
        for shard in self.shards.all() {
            remaining += shard.count_not_under(to).await? as u64;
        }
        Ok((done, remaining))
    }

    /// Opens every stored credential (an integrity check: after a rotation, a restore, or
    /// with a suspect key store). The secrets are zeroized as soon as each is opened.
    pub async fn verify_records(&self) -> Result<RecordCheck> {
        let mut check = RecordCheck::default();
        for shard in self.shards.all() {
            let mut after = (String::new(), String::new(), 0i64);
            loop {
                let page = shard.credentials_after(&after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = (last.card.clone(), last.service.clone(), last.version);
                for c in &page {
                    check.records += 1;
                    *check.by_kek.entry(c.sealed.kek.clone()).or_default() += 1;
                    match self.open(c) {
                        Ok(_) => check.opened += 1,
                        Err(_) => check.failed.push(format!(
                            "{} / {} v{} (under {})",
                            c.card, c.service, c.version, c.sealed.kek
                        )),
                    }
                }
            }
        }
        Ok(check)
    }

    /// Background work: continues a KEK rotation, forgets expired sessions and nonces.
    pub async fn sweep(&self) -> Result<u64> {
        let kek = self.current_kek().await?;
        let (n, _) = self.rewrap_some(&kek, 5_000).await?;
        for s in self.shards.all() {
            s.purge(self.now() / 1000).await?;
        }
        Ok(n)
    }
}
