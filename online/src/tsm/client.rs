//! HTTP to the TSM: one POST with the protocol's binary bodies, retried with backoff when the
//! TSM cannot answer now (connection refused or reset — a restart —, `409`, `503`), and an
//! optional link delay that models a phone's network (3G ≈ 300 ms, LTE ≈ 50 ms round trip).

use std::time::{Duration, Instant};

/// A modelled network link between the relay and the TSM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Link {
    /// Round-trip time added to every request.
    pub rtt: Duration,
}

impl Link {
    /// `lte` (50 ms), `3g` (300 ms), `none`, or a number of milliseconds.
    pub fn parse(s: &str) -> Result<Link, String> {
        let ms = match s.to_ascii_lowercase().as_str() {
            "none" | "0" => 0,
            "lte" => 50,
            "3g" => 300,
            n => n
                .trim_end_matches("ms")
                .parse::<u64>()
                .map_err(|_| format!("link '{s}': use lte, 3g, none or a round trip in ms"))?,
        };
        Ok(Link {
            rtt: Duration::from_millis(ms),
        })
    }
}

/// What one exchange cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exchange {
    /// The TSM's own time (its `x-tsm-micros`), microseconds.
    pub tsm_micros: u64,
    /// Wall time including the link and retries.
    pub wall: Duration,
    /// Attempts made.
    pub attempts: u32,
}

/// Why the TSM could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Gave up after retrying.
    #[error("the TSM at {url} did not answer within {secs} s ({last}): is it running?")]
    Unreachable {
        /// Where.
        url: String,
        /// How long it was tried.
        secs: u64,
        /// The last failure.
        last: String,
    },
    /// Gave up after retrying, and the TSM's `/v1/health` says it cannot write its database
    /// (a disk full, a read-only file system): its operator must fix its storage.
    #[error(
        "the TSM cannot write its database (its /v1/health at {url} says: {health}); gave up after {secs} s: ask its operator to free space or fix its storage"
    )]
    CannotWrite {
        /// Where.
        url: String,
        /// How long it was tried.
        secs: u64,
        /// What the health check said.
        health: String,
    },
    /// The TSM refused the message (`400`): a bug or a mismatch of versions.
    #[error("the TSM refused the message: {0}")]
    Refused(String),
}

/// An HTTP client (rustls, ring) trusting the system's roots, or only `ca_pem` (a server's
/// own self-signed certificate, or a private CA).
pub fn http_client(ca_pem: Option<&[u8]>) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let Some(ca_pem) = ca_pem else {
        return Ok(reqwest::Client::new());
    };
    let bad = |e: reqwest::Error| format!("TLS set-up: {e}");
    let certs = reqwest::Certificate::from_pem_bundle(ca_pem).map_err(bad)?;
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .build()
        .map_err(bad)
}

/// A client of one TSM.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    link: Link,
    /// How long a message is retried before giving up.
    pub retry_for: Duration,
    /// Say on stderr, every few seconds, that the TSM is being waited for (for a person
    /// watching a command; off for libraries and benchmarks).
    pub tell_waiting: bool,
}

/// Past this, a person is told the TSM is being waited for, and again every
/// [`WAIT_NOTICE_EVERY`].
pub const WAIT_NOTICE_AFTER: Duration = Duration::from_secs(2);
/// How often the waiting is told.
pub const WAIT_NOTICE_EVERY: Duration = Duration::from_secs(10);

impl Client {
    /// A client of the TSM at `base` (`http://host:port`; `https://` uses the system's roots).
    pub fn new(base: &str, link: Link) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            link,
            retry_for: Duration::from_secs(300),
            tell_waiting: false,
        }
    }

    /// A client of an HTTPS TSM whose certificate chains to `ca_pem` only (a local TSM's own
    /// self-signed certificate, or a private CA).
    pub fn with_ca(base: &str, link: Link, ca_pem: &[u8]) -> Result<Client, ClientError> {
        let http = http_client(Some(ca_pem)).map_err(ClientError::Refused)?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            link,
            retry_for: Duration::from_secs(300),
            tell_waiting: false,
        })
    }

    /// A client of another server at `base`, with this one's link, trust roots and retry
    /// policy (the operator's TSM the provider's TSM sends the relay to).
    pub fn with_base(&self, base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_string(),
            ..self.clone()
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// POSTs `body` to `path`, retrying what a restart or a busy TSM causes.
    pub async fn post(&self, path: &str, body: &[u8]) -> Result<(Vec<u8>, Exchange), ClientError> {
        self.post_with(path, &[], body).await
    }

    /// [`Client::post`] with extra request `headers` (the relay's protocol version).
    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(Vec<u8>, Exchange), ClientError> {
        let url = format!("{}{path}", self.base);
        let start = Instant::now();
        let mut backoff = Duration::from_millis(20);
        let mut attempts = 0;
        let mut next_notice = WAIT_NOTICE_AFTER;
        let mut unwritable: Option<String> = None;
        loop {
            attempts += 1;
            if !self.link.rtt.is_zero() {
                tokio::time::sleep(self.link.rtt / 2).await;
            }
            let mut request = self
                .http
                .post(&url)
                .header("content-type", "application/octet-stream");
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let sent = request.body(body.to_vec()).send().await;
            let last = match sent {
                Ok(r) if r.status().is_success() => {
                    let tsm_micros = r
                        .headers()
                        .get("x-tsm-micros")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    match r.bytes().await {
                        Ok(b) => {
                            if !self.link.rtt.is_zero() {
                                tokio::time::sleep(self.link.rtt / 2).await;
                            }
                            return Ok((
                                b.to_vec(),
                                Exchange {
                                    tsm_micros,
                                    wall: start.elapsed(),
                                    attempts,
                                },
                            ));
                        }
                        Err(e) => e.to_string(),
                    }
                }
                Ok(r) if r.status() == reqwest::StatusCode::BAD_REQUEST => {
                    return Err(ClientError::Refused(r.text().await.unwrap_or_default()));
                }
                Ok(r) => {
                    if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                        unwritable = self.unwritable().await;
                    }
                    format!("HTTP {}", r.status())
                }
                Err(e) => e.to_string(),
            };
            if start.elapsed() + backoff > self.retry_for {
                if let Some(health) = unwritable {
                    return Err(ClientError::CannotWrite {
                        url: self.base.clone(),
                        secs: self.retry_for.as_secs(),
                        health,
                    });
                }
                return Err(ClientError::Unreachable {
                    url,
                    secs: self.retry_for.as_secs(),
                    last,
                });
            }
            tracing::debug!(url = %url, error = %last, "retrying");
            if self.tell_waiting && start.elapsed() >= next_notice {
                let why = match &unwritable {
                    Some(_) => "it cannot write its database".to_string(),
                    None => last.clone(),
                };
                eprintln!(
                    "waiting for the TSM at {} ({why}); {} s so far, giving up after {} s",
                    self.base,
                    start.elapsed().as_secs(),
                    self.retry_for.as_secs()
                );
                next_notice = start.elapsed() + WAIT_NOTICE_EVERY;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// What `/v1/health` says when the TSM reports that it cannot write its database.
    async fn unwritable(&self) -> Option<String> {
        let r = self
            .http
            .get(format!("{}/v1/health", self.base))
            .send()
            .await
            .ok()?;
        let text = r.text().await.ok()?;
        text.starts_with("unwritable ")
            .then(|| text.trim().to_string())
    }

    /// GETs `path` as text.
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.base);
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                secs: 0,
                last: e.to_string(),
            })?;
        r.text().await.map_err(|e| ClientError::Unreachable {
            url,
            secs: 0,
            last: e.to_string(),
        })
    }
}
