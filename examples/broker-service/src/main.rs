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

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use broker_protocol::assertion::AssertionError;
use broker_protocol::{Assurance, Jwks, Verifier};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Parser)]
#[command(about = "An example service that authenticates holders only through kagi's broker")]
struct Args {
    /// The broker (http://host:port), for its published keys.
    #[arg(long)]
    broker: String,
    /// The broker's name (the `iss` of its assertions).
    #[arg(long, default_value = "broker:kagi")]
    broker_name: String,
    /// This service's id at the broker (the assertions' audience).
    #[arg(long, default_value = "svc-example")]
    service: String,
    /// The weakest holder login accepted: card or password.
    #[arg(long, default_value = "card")]
    min_assurance: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8770")]
    listen: String,
}

struct App {
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

async fn fetch_keys(http: &reqwest::Client, broker: &str) -> Result<Jwks, String> {
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

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let min = Assurance::parse(&args.min_assurance)
        .ok_or_else(|| format!("--min-assurance {}: card or password", args.min_assurance))?;
    let http = reqwest::Client::new();
    let broker = args.broker.trim_end_matches('/').to_string();
    let mut waited = Duration::ZERO;
    let keys = loop {
        match fetch_keys(&http, &broker).await {
            Ok(k) => break k,
            Err(e) if waited < Duration::from_secs(30) => {
                eprintln!("waiting for the broker: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                waited += Duration::from_millis(500);
            }
            Err(e) => return Err(e.into()),
        }
    };
    let app = Arc::new(App {
        broker,
        service: args.service.clone(),
        verifier: RwLock::new(Verifier::new(keys, &args.broker_name, &args.service, min)),
        nonces: Mutex::new(HashMap::new()),
        http,
    });
    let router = Router::new()
        .route("/login/start", post(start))
        .route("/login/finish", post(finish))
        .route("/health", get(|| async { "ok\n" }))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    eprintln!(
        "{} listening on {} (trusting {} at {})",
        args.service,
        listener.local_addr()?,
        args.broker_name,
        args.broker
    );
    axum::serve(listener, router).await?;
    Ok(())
}
