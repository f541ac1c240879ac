//! # kagi-example-service
//!
//! A service provider's whole integration with kagi's credential broker, to show it needs no
//! card logic: it depends on `broker-protocol` only for the [`Verifier`].
//!
//! - `POST /login/start` → `{"service", "nonce"}`: a fresh single-use nonce (valid 2 min).
//! - `POST /login/finish` with `{"nonce", "assertion"}` → `200 {"welcome", "assurance"}` if
//!   the broker's assertion is for this service and this nonce, fresh, strong enough and
//!   not replayed; else `401 {"error"}`. This is the relayed mode: the holder's client
//!   carries the assertion.
//! - `POST /login/finish` with `{"nonce", "code"}` (back channel, one-time-code mode, when
//!   the service was started with its signing key): the service redeems the code at the
//!   broker itself (`POST /v1/service/redeem`, signed with its key as `sp:<service>`) and
//!   checks the assertion it receives exactly as above. The holder's client never carries
//!   the assertion; the service's own nonce login is unchanged.
//! - `POST /login/finish` with `{"nonce", "delivered": true}` (back channel, push mode, when
//!   the service was started with the broker's client CA and signing key): the broker has
//!   already POSTed the assertion to the service's `POST /back-channel/push` (a separate
//!   listener over mutually authenticated TLS: only clients with a certificate from the
//!   broker's CA get through the handshake); the service checks it exactly as above.
//! - `POST /back-channel/push` ([`push_router`]): a [`Push`] signed by the broker to
//!   `sp:<service>`. Checked: the broker's signature, the recipient and service (this one),
//!   the validity window, the message id (kept until the push expires; a second push with
//!   the same id is refused), and a login of this service open for its nonce. Refusals are
//!   `401 {"code", "error"}` with `push.malformed`, `push.forged`, `push.misdirected`,
//!   `push.stale`, `push.replayed`, `push.unknown-login`, `push.no-proof`.
//! - `GET /health` → `ok`.
//!
//! The broker's keys are fetched from its `GET /v1/keys` at start (retried until the broker
//! answers) and again when an assertion names a key not yet known (a key rotation).
//!
//! ```text
//! kagi-example-service --broker http://127.0.0.1:8760 --service svc-example --listen 127.0.0.1:8770
//! kagi-example-service --broker http://127.0.0.1:8760 --service svc-example --service-key svc.key.pem
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use broker_protocol::api::{ActResult, ApiError, Push, Redeem};
use broker_protocol::assertion::AssertionError;
use broker_protocol::{Assurance, Jwks, Verifier};
use kagi_signed::PartyId;
use kagi_signed::signing::{
    Kind, MemoryReplayGuard, Policy, ProtocolError, ReplayGuard, Sealed, Signer, Trust,
};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The service: whom it trusts and the logins it started.
pub struct App {
    broker: String,
    service: String,
    /// One verifier for the service's life: its replay cache must outlive key refreshes.
    verifier: RwLock<Verifier>,
    /// Nonces given out and not yet used, with their expiry (Unix seconds).
    nonces: Mutex<HashMap<String, u64>>,
    http: reqwest::Client,
    /// The back channel: the service's signing key and the broker's party.
    back_channel: Option<(Signer, PartyId)>,
    /// Push mode: the broker's signing key, what a push must meet, the message ids seen.
    push: Option<PushCheck>,
    /// Push mode: the proofs delivered for open logins (nonce → assertion, card).
    delivered: Mutex<HashMap<String, (String, String)>>,
}

/// What a push must meet at this service.
struct PushCheck {
    trust: Trust,
    policy: Policy,
    seen: Mutex<MemoryReplayGuard>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The broker's published keys.
pub async fn fetch_keys(http: &reqwest::Client, broker: &str) -> Result<Jwks, String> {
    let url = format!("{broker}/v1/keys");
    let r = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let bytes = r.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: not a key set: {e}"))
}

async fn start(State(app): State<Arc<App>>) -> Response {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "no randomness").into_response();
    }
    let nonce: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let mut nonces = app.nonces.lock().unwrap_or_else(|e| e.into_inner());
    let t = now();
    nonces.retain(|_, exp| *exp >= t);
    nonces.insert(nonce.clone(), t + 120);
    app.delivered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|n, _| nonces.contains_key(n));
    Json(json!({"service": app.service, "nonce": nonce})).into_response()
}

#[derive(Deserialize)]
struct Finish {
    nonce: String,
    assertion: Option<String>,
    code: Option<String>,
    #[serde(default)]
    delivered: Option<bool>,
}

/// Redeems a one-time code at the broker for the assertion of login `nonce`.
async fn redeem(app: &App, code: &str, nonce: &str) -> Result<String, String> {
    let Some((signer, broker)) = &app.back_channel else {
        return Err("this service takes no codes (start it with --service-key)".into());
    };
    let r = Redeem {
        service: app.service.clone(),
        code: code.into(),
        challenge: None,
        nonce: Some(nonce.into()),
    };
    let out = kagi_signed::request::sign_request(
        signer,
        broker,
        &r,
        None,
        kagi_signed::signing::now_ms(),
        60_000,
    )
    .map_err(|e| e.to_string())?;
    let url = format!("{}/v1/service/redeem", app.broker);
    let resp = app
        .http
        .post(&url)
        .header("content-type", "application/octet-stream")
        .body(out.bytes)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let ok = resp.status().is_success();
    let bytes = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
    if !ok {
        let e: ApiError = serde_json::from_slice(&bytes)
            .map_err(|_| format!("{url}: {}", String::from_utf8_lossy(&bytes)))?;
        return Err(format!(
            "the broker refused the code: {} ({})",
            e.detail, e.code
        ));
    }
    let result: ActResult =
        serde_json::from_slice(&bytes).map_err(|e| format!("{url}: not an act result: {e}"))?;
    result
        .assertion
        .ok_or_else(|| "the broker answered no assertion".into())
}

fn refuse(why: impl std::fmt::Display) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": why.to_string()})),
    )
        .into_response()
}

async fn finish(State(app): State<Arc<App>>, Json(f): Json<Finish>) -> Response {
    // The nonce is used up whatever happens next.
    let known = app
        .nonces
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&f.nonce)
        .is_some_and(|exp| exp >= now());
    if !known {
        return refuse("unknown or expired login: start again");
    }
    // Push mode: the proof the broker delivered for this login, and the card it is for.
    let pushed = app
        .delivered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&f.nonce);
    let (token, card) = match (f.assertion, f.code, f.delivered) {
        (Some(a), None, None | Some(false)) => (a, None),
        (None, Some(code), None | Some(false)) => match redeem(&app, &code, &f.nonce).await {
            Ok(a) => (a, None),
            Err(e) => return refuse(e),
        },
        (None, None, Some(true)) => match pushed {
            Some((a, card)) => (a, Some(card)),
            None => return refuse("the broker has delivered no proof for this login"),
        },
        _ => return refuse("give the broker's assertion, its one-time code, or delivered"),
    };
    let mut result = app
        .verifier
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .verify(&token, &f.nonce, now());
    if let Err(AssertionError::UnknownKey(_)) = result {
        // The broker may have rotated its key: fetch its keys once more.
        if let Ok(keys) = fetch_keys(&app.http, &app.broker).await {
            let mut v = app.verifier.write().unwrap_or_else(|e| e.into_inner());
            v.keys = keys;
            result = v.verify(&token, &f.nonce, now());
        }
    }
    match result {
        Ok(claims) if card.as_ref().is_some_and(|c| *c != claims.sub) => {
            refuse("the delivered proof is for another card than the push said")
        }
        Ok(claims) => Json(json!({"welcome": claims.sub, "assurance": claims.acr})).into_response(),
        Err(e) => refuse(e),
    }
}

fn push_refused(code: &str, why: impl std::fmt::Display) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"code": code, "error": format!("{code}: {why}")})),
    )
        .into_response()
}

/// `POST /back-channel/push`: the broker delivers the proof of a login (see the crate docs).
async fn pushed(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let Some(check) = &app.push else {
        return push_refused("push.not-push-mode", "this service takes no pushes");
    };
    let sealed = match Sealed::from_bytes(&body) {
        Ok(s) => s,
        Err(e) => return push_refused("push.malformed", e),
    };
    let now_ms = kagi_signed::signing::now_ms();
    let env = match kagi_signed::signing::verify::<Push>(
        &sealed,
        Kind::ControlRequest,
        &check.trust,
        &check.policy,
        now_ms,
    ) {
        Ok(env) => env,
        Err(e @ ProtocolError::Misdirected { .. }) => return push_refused("push.misdirected", e),
        Err(e @ (ProtocolError::Expired { .. } | ProtocolError::FromTheFuture { .. })) => {
            return push_refused("push.stale", e);
        }
        Err(e) => return push_refused("push.forged", e),
    };
    let (h, push) = (env.header, env.body);
    if push.service != app.service {
        return push_refused(
            "push.misdirected",
            format!("a proof for {} sent to {}", push.service, app.service),
        );
    }
    // The message id, once: checked and recorded in one step under the lock.
    let first = {
        let mut seen = check.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.purge(now_ms);
        seen.first_seen(
            &h.sender,
            h.msg_id,
            h.expires_at.saturating_add(check.policy.max_skew_ms),
        )
    };
    match first {
        Ok(true) => {}
        Ok(false) => return push_refused("push.replayed", "this push was delivered already"),
        Err(e) => return push_refused("push.replayed", e),
    }
    let Some(nonce) = push.nonce else {
        return push_refused("push.unknown-login", "this service logs in with nonces");
    };
    let open = app
        .nonces
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&nonce)
        .is_some_and(|exp| *exp >= now());
    if !open {
        return push_refused("push.unknown-login", "no open login has this nonce");
    }
    let Some(assertion) = push.assertion else {
        return push_refused("push.no-proof", "the push carries no assertion");
    };
    app.delivered
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(nonce, (assertion, push.card));
    Json(json!({"ok": true})).into_response()
}

impl App {
    fn build(broker: &str, broker_name: &str, service: &str, keys: Jwks, min: Assurance) -> App {
        let _ = rustls::crypto::ring::default_provider().install_default();
        App {
            broker: broker.trim_end_matches('/').to_string(),
            service: service.into(),
            verifier: RwLock::new(Verifier::new(keys, broker_name, service, min)),
            nonces: Mutex::new(HashMap::new()),
            http: reqwest::Client::new(),
            back_channel: None,
            push: None,
            delivered: Mutex::new(HashMap::new()),
        }
    }

    /// A service `service` trusting the broker `broker_name` at `broker` (whose keys are
    /// `keys`), accepting holders who logged in at least with `min`.
    pub fn new(
        broker: &str,
        broker_name: &str,
        service: &str,
        keys: Jwks,
        min: Assurance,
    ) -> Arc<App> {
        Arc::new(App::build(broker, broker_name, service, keys, min))
    }

    /// The same service taking pushed proofs (back channel, push mode): pushes must be
    /// signed by `broker_key` as `broker_party`, to `sp:<service>`. Serve [`push_router`]
    /// over TLS that requires the broker's client certificate.
    pub fn with_push(
        broker: &str,
        broker_name: &str,
        service: &str,
        keys: Jwks,
        min: Assurance,
        broker_key: p256::ecdsa::VerifyingKey,
        broker_party: PartyId,
    ) -> Result<Arc<App>, kagi_signed::BadPartyId> {
        let mut app = App::build(broker, broker_name, service, keys, min);
        let mut trust = Trust::new();
        trust.add(broker_party, broker_key);
        app.push = Some(PushCheck {
            trust,
            policy: Policy::new(PartyId::new(&broker_protocol::api::service_party(service))?),
            seen: Mutex::new(MemoryReplayGuard::default()),
        });
        Ok(Arc::new(app))
    }

    /// The same service taking one-time codes (back channel): it redeems them at the
    /// broker (party `broker_party`) with requests signed by `signer` (its key registered
    /// at the broker, party `sp:<service>`).
    pub fn with_back_channel(
        broker: &str,
        broker_name: &str,
        service: &str,
        keys: Jwks,
        min: Assurance,
        signer: Signer,
        broker_party: PartyId,
    ) -> Arc<App> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Arc::new(App {
            broker: broker.trim_end_matches('/').to_string(),
            service: service.into(),
            verifier: RwLock::new(Verifier::new(keys, broker_name, service, min)),
            nonces: Mutex::new(HashMap::new()),
            http: reqwest::Client::new(),
            back_channel: Some((signer, broker_party)),
            push: None,
            delivered: Mutex::new(HashMap::new()),
        })
    }
}

/// The push endpoint (`POST /back-channel/push`), to serve apart from [`router`] over TLS
/// that requires a client certificate from the broker's CA
/// (`kagi_serve::serve_client_auth`).
pub fn push_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/back-channel/push", post(pushed))
        .with_state(app)
}

/// The service's routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/login/start", post(start))
        .route("/login/finish", post(finish))
        .route("/health", get(|| async { "ok\n" }))
        .with_state(app)
}
