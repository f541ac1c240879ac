//! The holder's and the administrator's side of kagi's credential broker
//! ([`broker_server`]): an HTTP client that fails over between broker instances, the card
//! login (the JPKI user-authentication key signs the broker's challenge after the PIN), and
//! signed administrator requests.

use broker_protocol::Jwks;
use broker_protocol::api::{
    self, Act, ActResult, AdminRequest, AdminResponse, ApiError, AuditEntry, CardLogin, Challenge,
    PasswordLogin, Session,
};
use kagi::channel::ApduChannel;
use kagi::jpki::{self, Pin};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::{Duration, Instant};
use tsm_protocol::PartyId;
use tsm_protocol::receipt::CertKey;
use tsm_protocol::signing::{Signer, Trust};
use zeroize::Zeroizing;

/// What went wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum BrokerClientError {
    /// The broker answered with a refusal (its code says why; see [`ApiError`]).
    #[error("the broker refused: {} ({})", .0.detail, .0.code)]
    Refused(ApiError),
    /// No instance answered in time.
    #[error("no broker instance answered within {secs} s ({last}): is it running?")]
    Unreachable {
        /// How long it was tried.
        secs: u64,
        /// The last failure.
        last: String,
    },
    /// Gave up after retrying, and a broker's `/v1/health` says it cannot write its database
    /// (a disk full, a read-only file system): its operator must fix its storage.
    #[error(
        "the broker cannot write its database (its /v1/health says: {health}); gave up after {secs} s: ask its operator to free space or fix its storage"
    )]
    CannotWrite {
        /// How long it was tried.
        secs: u64,
        /// What the health check said.
        health: String,
    },
    /// The answer was not what the protocol says.
    #[error("the broker's answer is malformed: {0}")]
    Malformed(String),
    /// The request could not be signed (randomness, encoding).
    #[error("the request could not be signed: {0}")]
    Sign(#[from] tsm_protocol::SignError),
    /// The card's certificate has no usable key, or the card's signature does not verify
    /// with it: the card is not a JPKI card of the kind the broker knows.
    #[error("the card's certificate: {0}")]
    CardCertificate(#[from] tsm_protocol::receipt::CertKeyError),
    /// The card failed.
    #[error(transparent)]
    Card(#[from] kagi::Error),
}

impl BrokerClientError {
    /// The refusal's code, if the broker refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            BrokerClientError::Refused(e) => Some(&e.code),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, BrokerClientError>;

/// A client of one broker, deployed as one or more instances sharing a database: a request
/// an instance cannot answer (refused connection, reset, `503`) goes to the next, for up to
/// `retry_for`. A refusal (`4xx`) is final.
#[derive(Clone)]
pub struct BrokerClient {
    http: reqwest::Client,
    bases: Vec<String>,
    /// How long a request is retried across instances.
    pub retry_for: Duration,
}

impl BrokerClient {
    /// A client of the instances at `bases` (`http://host:port`), trusting `ca_pem` only for
    /// HTTPS when given.
    pub fn new(bases: &[String], ca_pem: Option<&[u8]>) -> Result<BrokerClient> {
        if bases.is_empty() {
            return Err(BrokerClientError::Malformed(
                "no broker address given".into(),
            ));
        }
        Ok(BrokerClient {
            http: crate::tsm::client::http_client(ca_pem).map_err(BrokerClientError::Malformed)?,
            bases: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_string())
                .collect(),
            retry_for: Duration::from_secs(30),
        })
    }

    async fn send(
        &self,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
        bearer: Option<&str>,
    ) -> Result<Vec<u8>> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(20);
        let mut i = 0usize;
        let mut unwritable: Option<String> = None;
        loop {
            let base = &self.bases[i % self.bases.len()];
            let url = format!("{base}{path}");
            let mut req = match &body {
                Some((ct, b)) => self
                    .http
                    .post(&url)
                    .header("content-type", *ct)
                    .body(b.clone()),
                None => self.http.get(&url),
            };
            if let Some(t) = bearer {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let last = match req.send().await {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(b) => return Ok(b.to_vec()),
                    Err(e) => e.to_string(),
                },
                Ok(r)
                    if r.status().is_client_error()
                        && r.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
                {
                    let status = r.status();
                    let bytes = r.bytes().await.unwrap_or_default();
                    return Err(match serde_json::from_slice::<ApiError>(&bytes) {
                        Ok(e) => BrokerClientError::Refused(e),
                        Err(_) => BrokerClientError::Malformed(format!(
                            "HTTP {status}: {}",
                            String::from_utf8_lossy(&bytes)
                        )),
                    });
                }
                // A push-mode service behind the broker failed or refused (`push.*`): the
                // broker answered, so this is its refusal, not an instance to skip.
                Ok(r) if r.status() == reqwest::StatusCode::BAD_GATEWAY => {
                    let status = r.status();
                    let bytes = r.bytes().await.unwrap_or_default();
                    match serde_json::from_slice::<ApiError>(&bytes) {
                        Ok(e) => return Err(BrokerClientError::Refused(e)),
                        Err(_) => format!("{url}: HTTP {status}"),
                    }
                }
                Ok(r) => {
                    if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                        && let Ok(h) = self.http.get(format!("{base}/v1/health")).send().await
                        && let Ok(text) = h.text().await
                        && text.starts_with("unwritable ")
                    {
                        unwritable = Some(text.trim().to_string());
                    }
                    format!("{url}: HTTP {}", r.status())
                }
                Err(e) => format!("{url}: {e}"),
            };
            i += 1;
            if start.elapsed() + backoff > self.retry_for {
                if let Some(health) = unwritable {
                    return Err(BrokerClientError::CannotWrite {
                        secs: self.retry_for.as_secs(),
                        health,
                    });
                }
                return Err(BrokerClientError::Unreachable {
                    secs: self.retry_for.as_secs(),
                    last,
                });
            }
            tracing::debug!(error = %last, "broker instance unavailable, trying the next");
            // The next instance at once; a pause only after every instance was tried.
            if i.is_multiple_of(self.bases.len()) {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }

    async fn json<T: Serialize, R: DeserializeOwned>(&self, path: &str, body: &T) -> Result<R> {
        let b =
            serde_json::to_vec(body).map_err(|e| BrokerClientError::Malformed(e.to_string()))?;
        let out = self.send(path, Some(("application/json", b)), None).await?;
        serde_json::from_slice(&out).map_err(|e| BrokerClientError::Malformed(e.to_string()))
    }

    /// A login challenge.
    pub async fn challenge(&self) -> Result<Challenge> {
        self.json("/v1/holder/challenge", &serde_json::json!({}))
            .await
    }

    /// Sends a card's answer to a challenge.
    pub async fn login_card(&self, l: &CardLogin) -> Result<Session> {
        self.json("/v1/holder/login", l).await
    }

    /// The password login.
    pub async fn login_password(&self, l: &PasswordLogin) -> Result<Session> {
        self.json("/v1/holder/login-password", l).await
    }

    /// Acts at a service.
    pub async fn act(&self, a: &Act) -> Result<ActResult> {
        self.json("/v1/holder/act", a).await
    }

    /// The holder's audit trail.
    pub async fn audit(&self, session: &str) -> Result<Vec<AuditEntry>> {
        let out = self.send("/v1/holder/audit", None, Some(session)).await?;
        serde_json::from_slice(&out).map_err(|e| BrokerClientError::Malformed(e.to_string()))
    }

    /// The broker's assertion keys.
    pub async fn keys(&self) -> Result<Jwks> {
        let out = self.send("/v1/keys", None, None).await?;
        serde_json::from_slice(&out).map_err(|e| BrokerClientError::Malformed(e.to_string()))
    }

    /// A service redeems a one-time code (back channel): `redeem` signed by the service's key
    /// `signer` (party `sp:<service id>`) for the broker `broker`; the proof for the
    /// service's challenge or nonce.
    pub async fn redeem(
        &self,
        signer: &Signer,
        broker: &PartyId,
        redeem: &broker_protocol::api::Redeem,
    ) -> Result<ActResult> {
        let out = tsm_protocol::control::sign_request(
            signer,
            broker,
            redeem,
            None,
            tsm_protocol::signing::now_ms(),
            60_000,
        )?;
        let answer = self
            .send(
                "/v1/service/redeem",
                Some(("application/octet-stream", out.bytes)),
                None,
            )
            .await?;
        serde_json::from_slice(&answer).map_err(|e| BrokerClientError::Malformed(e.to_string()))
    }

    /// An administrator's request, signed by `signer` for the broker `broker` (trusted with
    /// `trust`); the signed answer is checked.
    pub async fn admin(
        &self,
        signer: &Signer,
        broker: &PartyId,
        trust: &Trust,
        req: &AdminRequest,
    ) -> Result<AdminResponse> {
        self.admin_with_key(signer, broker, trust, req, None).await
    }

    /// [`BrokerClient::admin`] under the idempotency key `key` (`None`: a fresh random one).
    /// The same key with the same request, even signed again by another run, gets the first
    /// answer and changes nothing more (a key rotation is done once).
    pub async fn admin_with_key(
        &self,
        signer: &Signer,
        broker: &PartyId,
        trust: &Trust,
        req: &AdminRequest,
        key: Option<tsm_protocol::IdempotencyKey>,
    ) -> Result<AdminResponse> {
        let now = tsm_protocol::signing::now_ms();
        // Every request carries an idempotency key: when an answer is lost and the same
        // bytes are sent again, a key rotation is not done twice — the broker answers its
        // first answer.
        let key = match key {
            Some(k) => k,
            None => tsm_protocol::IdempotencyKey::random()
                .map_err(|e| BrokerClientError::Malformed(format!("no random numbers: {e}")))?,
        };
        let out =
            tsm_protocol::control::sign_request(signer, broker, req, Some(key), now, 120_000)?;
        let answer = self
            .send(
                "/v1/admin",
                Some(("application/octet-stream", out.bytes)),
                None,
            )
            .await?;
        tsm_protocol::control::open_answer_as(
            &answer,
            &out.header,
            trust,
            tsm_protocol::signing::now_ms(),
        )
        .map_err(|e| BrokerClientError::Malformed(format!("the answer does not verify: {e}")))
    }
}

/// The card's part of a login: selects the JPKI applet, reads the user-authentication
/// certificate, verifies the PIN, and signs [`api::login_message`] of `challenge` with the
/// authentication key. The signature is checked against the certificate before it is sent.
pub fn card_answer(
    ch: &mut impl ApduChannel,
    pin: &Zeroizing<Vec<u8>>,
    challenge: &Challenge,
) -> Result<CardLogin> {
    let nonce = api::unb64(&challenge.nonce)
        .ok_or_else(|| BrokerClientError::Malformed("the challenge is not base64url".into()))?;
    jpki::select(ch)?;
    let cert = jpki::read_der(ch, jpki::EF_AUTH_CERT)?;
    jpki::verify(ch, Pin::Auth, pin)?;
    let key = CertKey::from_certificate(&cert)?;
    let message = api::login_message(&challenge.broker, &nonce);
    let sig = jpki::sign(ch, Pin::Auth, &key.to_be_signed(&message))?;
    key.verify(&message, &sig)?;
    Ok(CardLogin {
        nonce: challenge.nonce.clone(),
        certificate: api::b64(&cert),
        signature: api::b64(&sig),
    })
}

/// A whole card login: a challenge, the card's answer, the session. When the instance that
/// took the answer died before replying, the retry on another instance finds the challenge
/// used (or expired): the login starts over with a new challenge (three times at most); the
/// PIN is verified again, which costs no try.
pub async fn login_with_card(
    client: &BrokerClient,
    ch: &mut impl ApduChannel,
    pin: &Zeroizing<Vec<u8>>,
) -> Result<Session> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let c = client.challenge().await?;
        let answer = card_answer(ch, pin, &c)?;
        match client.login_card(&answer).await {
            Err(e)
                if attempt < 3
                    && matches!(e.code(), Some("login.replayed" | "login.challenge-expired")) =>
            {
                tracing::debug!(error = %e, "login starts over with a new challenge");
            }
            r => return r,
        }
    }
}

/// The card id the broker knows a card by: its authentication certificate's subject common
/// name.
pub fn card_id(cert_der: &[u8]) -> std::result::Result<String, String> {
    use der::Decode;
    let cert =
        x509_cert::Certificate::from_der(cert_der).map_err(|e| format!("certificate: {e}"))?;
    kagi_certs::subject_cn(&cert)
        .ok_or_else(|| "the certificate's subject has no common name".into())
}
