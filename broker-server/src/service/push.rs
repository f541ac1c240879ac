//! The back channel, push mode: for a service registered with [`BackChannel::Push`], the
//! broker delivers the proof of an act to the service itself. It POSTs a [`Push`] — signed as
//! the broker, addressed to `sp:<service>`, with a fresh message id, bound to the service,
//! its challenge (or nonce) and the card's pairwise id — to the service's endpoint over TLS,
//! presenting the broker's client certificate ([`PushIdentity`]) and accepting only a
//! service certificate that chains to the CA registered for the service. The holder's client
//! is answered `delivered` and never carries the proof.
//!
//! Refusals of the act, each its own code: `push.no-client-certificate` (this broker has no
//! client identity configured), `push.bad-service-ca` (the registered CA is unusable),
//! `push.unreachable` (no connection, or no answer in time), `push.service-untrusted` (the
//! service's certificate does not chain to the registered CA or does not name the URL's
//! host), `push.tls` (another TLS failure, such as the service refusing the broker's client
//! certificate), `push.refused` (the service answered with an error).
//!
//! Retry-safe: an act consumes nothing at the broker (no code, no counter), and a push only
//! attaches a proof to a login the service has open. When the answer is lost after the
//! service accepted, the holder's client acts again for the same challenge: the broker signs
//! a new push (a new message id, so the service's replay check passes it) and the service's
//! login, used up only when the holder finishes it, completes once.

use super::back_channel::ProofInput;
use super::{Broker, Result, refuse};
use broker_protocol::api::{self, ActResult, ApiError, Push};
use kagi_signed::ids::PartyId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a push may take (connection, TLS and the service's answer).
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a push is valid for the service (it must arrive within this, and the service
/// keeps its message id at least as long).
const PUSH_VALIDITY_MS: u64 = 60_000;

/// The broker's TLS client identity toward push-mode services: a certificate chain and its
/// private key (zeroized when dropped).
pub struct PushIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// The broker's push identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PushIdentityError {
    /// The certificate file holds no certificate.
    #[error("the push client certificate: {0} (give a PEM certificate chain, leaf first)")]
    Certificate(String),
    /// The key file holds no private key.
    #[error("the push client key: {0} (give the certificate's private key, PEM PKCS#8)")]
    Key(String),
}

impl PushIdentity {
    /// From a PEM certificate chain (leaf first) and its PEM private key.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> std::result::Result<PushIdentity, PushIdentityError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| PushIdentityError::Certificate(e.to_string()))?;
        if chain.is_empty() {
            return Err(PushIdentityError::Certificate(
                "no certificate found".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| PushIdentityError::Key(e.to_string()))?;
        Ok(PushIdentity { chain, key })
    }
}

impl Drop for PushIdentity {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.key.zeroize();
    }
}

impl std::fmt::Debug for PushIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PushIdentity({} certificates, <key>)", self.chain.len())
    }
}

/// The broker's push client: its identity and one HTTP client per registered service CA.
pub(crate) struct Pusher {
    identity: PushIdentity,
    clients: Mutex<HashMap<[u8; 32], reqwest::Client>>,
}

impl Pusher {
    pub(crate) fn new(identity: PushIdentity) -> Pusher {
        Pusher {
            identity,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The HTTP client trusting only `service_ca` and presenting the broker's identity.
    pub(crate) fn client(&self, service_ca: &[u8]) -> std::result::Result<reqwest::Client, String> {
        let id: [u8; 32] = Sha256::digest(service_ca).into();
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&id) {
            return Ok(c.clone());
        }
        let roots = roots(service_ca)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.identity.chain.clone(), self.identity.key.clone_key())
            .map_err(|e| format!("the broker's client certificate and key: {e}"))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PUSH_TIMEOUT)
            .build()
            .map_err(|e| e.to_string())?;
        clients.insert(id, client.clone());
        Ok(client)
    }
}

/// The trust anchors of a registered service CA (PEM certificates).
pub(crate) fn roots(service_ca: &[u8]) -> std::result::Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(service_ca) {
        let c = c.map_err(|e| format!("not PEM certificates: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no certificate found (give the CA certificate, PEM)".into());
    }
    Ok(roots)
}

/// Checks a push endpoint as registered: an `https://` URL and a usable CA.
pub(crate) fn check_endpoint(url: &str, service_ca: &[u8]) -> std::result::Result<(), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("the URL {url}: {e}"))?;
    if u.scheme() != "https" || u.host_str().is_none() {
        return Err(format!(
            "the URL {url} is not https://host…: push mode runs over TLS only"
        ));
    }
    roots(service_ca).map(|_| ())
}

/// The TLS error inside an error's chain: through its sources and through the errors
/// `std::io::Error`s wrap (whose `source` skips them).
fn tls_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = err.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        .and_then(|inner| tls_error(inner as &(dyn std::error::Error + 'static)))
    {
        return Some(inner);
    }
    err.source().and_then(tls_error)
}

/// What a failed push tells the holder's client.
fn failed(e: &reqwest::Error, url: &str) -> ApiError {
    if let Some(t) = tls_error(e) {
        return match t {
            rustls::Error::InvalidCertificate(why) => refuse(
                "push.service-untrusted",
                format!(
                    "the service at {url} showed a certificate the broker does not accept ({why:?}): its certificate must chain to the CA registered for it (`kagi broker admin back-channel --service-ca`)"
                ),
            ),
            other => refuse(
                "push.tls",
                format!(
                    "TLS with the service at {url} failed ({other}): the service must accept the broker's client certificate"
                ),
            ),
        };
    }
    refuse(
        "push.unreachable",
        format!("the service at {url} could not be reached ({e}): try again later"),
    )
}

impl Broker {
    /// Delivers `proof` to the push-mode service at `url` (its TLS certificate under
    /// `service_ca`); the holder's client gets only `delivered`.
    pub(super) async fn push(
        &self,
        pairwise: &str,
        input: &ProofInput,
        proof: ActResult,
        url: &str,
        service_ca: &[u8],
    ) -> Result<ActResult> {
        let Some(pusher) = &self.pusher else {
            return Err(refuse(
                "push.no-client-certificate",
                "this broker has no client certificate for push-mode services: set push_client_cert and push_client_key in broker.toml",
            )
            .into());
        };
        let service = proof.service.clone();
        let method = proof.method;
        let (challenge, nonce) = match input {
            ProofInput::Challenge(c) => (Some(api::b64(c)), None),
            ProofInput::Nonce(n) => (None, Some(n.clone())),
        };
        let push = Push {
            service: service.clone(),
            card: pairwise.into(),
            challenge,
            nonce,
            method,
            mac: proof.mac,
            signature: proof.signature,
            assertion: proof.assertion,
        };
        let to = PartyId::new(&api::service_party(&service))
            .map_err(|e| refuse("push.refused", format!("the service id: {e}")))?;
        let out = kagi_signed::request::sign_request(
            &self.config.signer,
            &to,
            &push,
            None,
            kagi_signed::signing::now_ms(),
            PUSH_VALIDITY_MS,
        )
        .map_err(|e| super::BrokerError::Sign(e.to_string()))?;
        let client = pusher.client(service_ca).map_err(|why| {
            refuse(
                "push.bad-service-ca",
                format!("the CA registered for {service}: {why}: register it again"),
            )
        })?;
        let mut resp = client
            .post(url)
            .header("content-type", "application/octet-stream")
            .body(out.bytes)
            .send()
            .await
            .map_err(|e| failed(&e, url))?;
        let status = resp.status();
        if !status.is_success() {
            // What the service said, its first 300 bytes (never more is read).
            let mut body = Vec::new();
            while body.len() < 300 {
                match resp.chunk().await {
                    Ok(Some(c)) => body.extend_from_slice(&c),
                    _ => break,
                }
            }
            body.truncate(300);
            let said = String::from_utf8_lossy(&body).into_owned();
            return Err(refuse(
                "push.refused",
                format!("the service at {url} refused the proof ({status}: {said})"),
            )
            .into());
        }
        tracing::info!(service = %service, msg_id = ?out.header.msg_id, "proof pushed");
        Ok(ActResult {
            service,
            method,
            mac: None,
            signature: None,
            assertion: None,
            code: None,
            delivered: true,
        })
    }
}
