//! # kagi-example-service
//!
//! A service provider's whole integration with kagi's credential broker, to show it needs no
//! card logic: it depends on `broker-protocol` only for the [`Verifier`].
//!
//! - `POST /login/start` → `{"service", "nonce"}`: a fresh single-use nonce (valid 2 min).
//! - `POST /login/finish` with `{"nonce", "assertion"}` → `200 {"welcome", "assurance"}` if
//!   the broker's assertion is for this service and this nonce, fresh, strong enough and
//!   not replayed; else `401 {"error"}`.
//! - `GET /health` → `ok`.
//!
//! The broker's keys are fetched from its `GET /v1/keys` at start (retried until the broker
//! answers) and again when an assertion names a key not yet known (a key rotation).
//!
//! ```text
//! kagi-example-service --broker http://127.0.0.1:8760 --service svc-example --listen 127.0.0.1:8770
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use broker_protocol::assertion::AssertionError;
use broker_protocol::{Assurance, Jwks, Verifier};
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
    let Some(token) = f.assertion else {
        return refuse("no assertion");
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
