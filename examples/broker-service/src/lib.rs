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
use broker_protocol::api::{ActResult, ApiError, Redeem};
use broker_protocol::assertion::AssertionError;
use broker_protocol::{Assurance, Jwks, Verifier};
use kagi_signed::PartyId;
use kagi_signed::signing::Signer;
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
    Json(json!({"service": app.service, "nonce": nonce})).into_response()
}

#[derive(Deserialize)]
struct Finish {
    nonce: String,
    assertion: Option<String>,
    code: Option<String>,
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
    let token = match (f.assertion, f.code) {
        (Some(a), None) => a,
        (None, Some(code)) => match redeem(&app, &code, &f.nonce).await {
            Ok(a) => a,
            Err(e) => return refuse(e),
        },
        _ => return refuse("give the broker's assertion or its one-time code"),
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
        Ok(claims) => Json(json!({"welcome": claims.sub, "assurance": claims.acr})).into_response(),
        Err(e) => refuse(e),
    }
}

impl App {
    /// A service `service` trusting the broker `broker_name` at `broker` (whose keys are
    /// `keys`), accepting holders who logged in at least with `min`.
    pub fn new(
        broker: &str,
        broker_name: &str,
        service: &str,
        keys: Jwks,
        min: Assurance,
    ) -> Arc<App> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Arc::new(App {
            broker: broker.trim_end_matches('/').to_string(),
            service: service.into(),
            verifier: RwLock::new(Verifier::new(keys, broker_name, service, min)),
            nonces: Mutex::new(HashMap::new()),
            http: reqwest::Client::new(),
            back_channel: None,
        })
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
        })
    }
}

/// The service's routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/login/start", post(start))
        .route("/login/finish", post(finish))
        .route("/health", get(|| async { "ok\n" }))
        .with_state(app)
}
