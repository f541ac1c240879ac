//! The broker over HTTP (axum on tokio).
//!
//! Holders (JSON, [`broker_protocol::api`]):
//! - `POST /v1/holder/challenge` — a login challenge.
//! - `POST /v1/holder/login` — the card's signature over it → a session.
//! - `POST /v1/holder/login-password` — the lower-assurance login → a session.
//! - `POST /v1/holder/act` — act for the holder at a service.
//! - `GET /v1/holder/audit` (`Authorization: Bearer <session>`) — the holder's audit trail.
//!
//! Services: `GET /v1/keys` — the assertion keys (JWKS); `POST /v1/service/redeem` — a
//! one-time code redeemed by the service it was made for (a signed [`broker_protocol::api::Redeem`];
//! the answer is the JSON `ActResult`, refusals `redeem.*` with `401` for `redeem.forged`).
//! Administrators: `POST /v1/admin` — a signed request (binary, as the TSM's control API);
//! the answer is signed. `GET /v1/health` — `ok`, the name, the databases and the key store, `db=writable`
//! after a test write on every shard; `503` and `unwritable …: the broker cannot write its
//! database (…)` when one cannot.
//!
//! Refusals are `{"code", "detail"}` with `401` (login and session refusals), `403` (acts
//! refused by policy, revocation or consent), `400` (malformed) or `502` (`push.*`: a
//! push-mode service could not be reached, failed TLS or refused the proof). `503`: a database or the
//! key store is unavailable (retry later; nothing was changed).

use crate::service::{Broker, BrokerError};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use broker_protocol::api::{Act, ApiError, CardLogin, PasswordLogin};
use serde::Serialize;
use std::sync::Arc;

pub use kagi_serve::{Limits, TlsFiles};

fn json<T: Serialize>(r: Result<T, BrokerError>) -> Response {
    match r {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => refusal(e),
    }
}

fn refusal(e: BrokerError) -> Response {
    let (status, body) = match e {
        BrokerError::Refused(e) => {
            let status = if e.code.starts_with("push.") {
                // The service behind the broker failed or refused (push mode).
                StatusCode::BAD_GATEWAY
            } else if e.code.ends_with(".malformed") {
                StatusCode::BAD_REQUEST
            } else if e.code.starts_with("login.")
                || e.code.starts_with("session.")
                || e.code == "redeem.forged"
            {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::FORBIDDEN
            };
            (status, e)
        }
        e @ (BrokerError::BadJson(_) | BrokerError::NotAMessage(_)) => (
            StatusCode::BAD_REQUEST,
            ApiError {
                code: "request.malformed".into(),
                detail: e.to_string(),
            },
        ),
        other => {
            tracing::error!(error = %other, "unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                ApiError {
                    code: "broker.unavailable".into(),
                    detail: "the broker's database or key store is unavailable: retry later".into(),
                },
            )
        }
    };
    (status, axum::Json(body)).into_response()
}

/// Parses a JSON body, refusing with `400` and the reason.
fn body<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, BrokerError> {
    Ok(serde_json::from_slice(b)?)
}

async fn challenge(State(b): State<Arc<Broker>>) -> Response {
    json(b.challenge())
}

async fn login(State(b): State<Arc<Broker>>, raw: Bytes) -> Response {
    match body::<CardLogin>(&raw) {
        Ok(l) => json(b.login_card(&l).await),
        Err(e) => refusal(e),
    }
}

/// The client's address for the per-client password backoff: the peer of the connection when
/// the server records it (`ConnectInfo`), else none.
fn client_of(ext: &axum::http::Extensions) -> Option<String> {
    ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

async fn login_password(
    State(b): State<Arc<Broker>>,
    ext: axum::http::Extensions,
    raw: Bytes,
) -> Response {
    let client = client_of(&ext);
    match body::<PasswordLogin>(&raw) {
        Ok(l) => json(b.login_password(&l, client.as_deref()).await),
        Err(e) => refusal(e),
    }
}

async fn act(State(b): State<Arc<Broker>>, raw: Bytes) -> Response {
    match body::<Act>(&raw) {
        Ok(a) => json(b.act(&a).await),
        Err(e) => refusal(e),
    }
}

async fn audit(State(b): State<Arc<Broker>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    json(b.holder_audit(token).await)
}

async fn keys(State(b): State<Arc<Broker>>) -> Response {
    axum::Json(b.keys()).into_response()
}

async fn admin(State(b): State<Arc<Broker>>, raw: Bytes) -> Response {
    match b.admin(&raw).await {
        Ok(v) => ([(header::CONTENT_TYPE, "application/octet-stream")], v).into_response(),
        Err(e) => refusal(e),
    }
}

async fn redeem(State(b): State<Arc<Broker>>, raw: Bytes) -> Response {
    json(b.redeem(&raw).await)
}

async fn health(State(b): State<Arc<Broker>>) -> Response {
    for (i, shard) in b.shards().all().iter().enumerate() {
        if let Err(e) = shard.writable().await {
            tracing::error!(error = %e, shard = i, "the database cannot be written");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "unwritable {} shard={i} {}: {UNWRITABLE} ({e})\n",
                    b.name(),
                    shard.describe()
                ),
            )
                .into_response();
        }
    }
    match b.current_kek().await {
        Ok(kek) => format!(
            "ok {} shards={} {} kek={kek} keys={} db=writable\n",
            b.name(),
            b.shards().all().len(),
            b.shards().first().0.describe(),
            b.envelope().describe()
        )
        .into_response(),
        Err(e) => refusal(e),
    }
}

/// What `/v1/health` says (after `unwritable …:`, status `503`) when a shard's database
/// refuses a write (a disk full, a read-only file system).
pub const UNWRITABLE: &str = "the broker cannot write its database";

/// The routes, without a rate limit (see [`router_with`]).
pub fn router(broker: Arc<Broker>) -> Router {
    router_with(
        broker,
        &Limits {
            rate_per_second: 0,
            peer_rate_per_second: 0,
            ..Limits::default()
        },
    )
}

/// The routes, the logins (`/v1/holder/login`, `/v1/holder/login-password`) under the
/// per-client rate limit of `limits`, the services' signed requests (`/v1/service/redeem`,
/// `/v1/admin`) under its rate for peers.
pub fn router_with(broker: Arc<Broker>, limits: &Limits) -> Router {
    let limited = kagi_serve::rate_limited(
        Router::new()
            .route("/v1/holder/login", post(login))
            .route("/v1/holder/login-password", post(login_password)),
        limits,
    );
    let peers = kagi_serve::peer_rate_limited(
        Router::new()
            .route("/v1/service/redeem", post(redeem))
            .route("/v1/admin", post(admin)),
        limits,
    );
    Router::new()
        .route("/v1/holder/challenge", post(challenge))
        .merge(limited)
        .merge(peers)
        .route("/v1/holder/act", post(act))
        .route("/v1/holder/audit", get(audit))
        .route("/v1/keys", get(keys))
        .route("/v1/health", get(health))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(broker)
}

/// Serves on `listener` (HTTPS when `tls` is given) until `shutdown` resolves. A background
/// task, every `sweep_every`, continues any KEK rotation and forgets expired sessions and
/// nonces. The default [`Limits`] without a rate limit; [`serve_limited`] takes others.
pub async fn serve(
    broker: Arc<Broker>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    tls: Option<TlsFiles>,
    sweep_every: std::time::Duration,
) -> std::io::Result<()> {
    let limits = Limits {
        rate_per_second: 0,
        peer_rate_per_second: 0,
        ..Limits::default()
    };
    serve_limited(broker, listener, shutdown, tls, sweep_every, &limits).await
}

/// [`serve`] under `limits`: timeouts, the connection cap and the rate limit on the logins.
pub async fn serve_limited(
    broker: Arc<Broker>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    tls: Option<TlsFiles>,
    sweep_every: std::time::Duration,
    limits: &Limits,
) -> std::io::Result<()> {
    let sweeper = broker.clone();
    kagi_serve::serve_limited(
        router_with(broker, limits),
        listener,
        shutdown,
        tls,
        limits,
        sweep_every,
        move || {
            let b = sweeper.clone();
            async move {
                match b.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rewrapped = n, "KEK rotation continued"),
                    Err(e) => tracing::warn!(error = %e, "sweep"),
                }
            }
        },
    )
    .await
}
