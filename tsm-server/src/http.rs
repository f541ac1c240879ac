//! The TSM over HTTP (axum on tokio). Bodies are the protocol's canonical binary messages
//! (`application/octet-stream`):
//!
//! - `POST /v1/control` — a signed control request; the answer is signed.
//! - `POST /v1/relay` — the relay's messages (Hello, Credentials, Report); orders or a stop.
//!   The request names its relay-protocol version in `kagi-relay-version`; one this TSM
//!   does not speak (or none) is a `400` that says which it speaks.
//! - `GET /v1/revoked` — the revocation list (one `0x` serial per line).
//! - `GET /v1/health` — `ok`, the database backend and `db=writable` after a test write;
//!   `503` and `unwritable …: the TSM cannot write its database (…)` when it cannot.
//!
//! Plain HTTP for local runs; HTTPS with a certificate and key ([`serve_tls`]).
//!
//! Status codes: `400` a malformed message, `409` a conflict with another instance (send the
//! same message again), `503` the database is unavailable (retry later). Every answer carries
//! `x-tsm-micros`, the time the TSM spent on it.

use crate::service::{ServiceError, Tsm};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;
use std::time::Instant;
use tsm_protocol::relay;

fn answer(start: Instant, r: Result<Vec<u8>, ServiceError>) -> Response {
    let resp = match r {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            body,
        )
            .into_response(),
        Err(ServiceError::BadRequest(m)) => {
            (StatusCode::BAD_REQUEST, m.to_string()).into_response()
        }
        Err(ServiceError::Conflict) => (
            StatusCode::CONFLICT,
            "the operation changed meanwhile: send the same message again",
        )
            .into_response(),
        Err(ServiceError::Store(e)) => {
            tracing::error!(error = %e, "database");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the TSM's database is unavailable: retry later",
            )
                .into_response()
        }
        Err(
            e @ (ServiceError::Random(_)
            | ServiceError::Encode(_)
            | ServiceError::Poisoned
            | ServiceError::Hashing(_)),
        ) => {
            // The TSM's own failure, never the sender's: a 500, with the reason in the log.
            tracing::error!(error = %e, "internal");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the TSM could not answer (an internal error, logged): retry later",
            )
                .into_response()
        }
    };
    timed(start, resp)
}

/// `resp` with `x-tsm-micros`: the time since `start`.
fn timed(start: Instant, mut resp: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&start.elapsed().as_micros().to_string()) {
        resp.headers_mut().insert("x-tsm-micros", v);
    }
    resp
}

async fn control(State(tsm): State<Arc<Tsm>>, body: Bytes) -> Response {
    let start = Instant::now();
    answer(start, tsm.control(&body).await)
}

async fn relay(State(tsm): State<Arc<Tsm>>, headers: HeaderMap, body: Bytes) -> Response {
    let start = Instant::now();
    let named = headers
        .get(relay::VERSION_HEADER)
        .and_then(|v| v.to_str().ok());
    let mut resp = match relay::unsupported_version(named) {
        // Refused before decoding: another version's messages may not decode at all.
        Some(why) => timed(start, (StatusCode::BAD_REQUEST, why).into_response()),
        None => answer(start, tsm.relay(&body).await),
    };
    resp.headers_mut()
        .insert(relay::VERSION_HEADER, HeaderValue::from(relay::VERSION));
    resp
}

async fn revoked(State(tsm): State<Arc<Tsm>>) -> Response {
    match tsm.revocation_list().await {
        Ok(t) => ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], t).into_response(),
        Err(e) => answer(Instant::now(), Err(e)),
    }
}

async fn health(State(tsm): State<Arc<Tsm>>) -> Response {
    if let Err(e) = tsm.store().count_by_state().await {
        return answer(Instant::now(), Err(e.into()));
    }
    match tsm.store().writable().await {
        Ok(()) => format!(
            "ok {} {} db=writable\n",
            tsm.party(),
            tsm.store().describe()
        )
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "the database cannot be written");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "unwritable {} {}: {UNWRITABLE} ({e})\n",
                    tsm.party(),
                    tsm.store().describe()
                ),
            )
                .into_response()
        }
    }
}

/// What `/v1/health` says (after `unwritable …:`, status `503`) when the TSM's database
/// refuses a write (a disk full, a read-only file system).
pub const UNWRITABLE: &str = "the TSM cannot write its database";

/// The routes, without a rate limit (see [`router_with`]).
pub fn router(tsm: Arc<Tsm>) -> Router {
    router_with(
        tsm,
        &Limits {
            rate_per_second: 0,
            peer_rate_per_second: 0,
            ..Limits::default()
        },
    )
}

/// The routes, `/v1/relay` (where access codes and passwords are tried) under the per-client
/// rate limit of `limits`, `/v1/control` (signed requests of the provider and the other
/// services) under its rate for peers.
pub fn router_with(tsm: Arc<Tsm>, limits: &Limits) -> Router {
    let limited = kagi_serve::rate_limited(Router::new().route("/v1/relay", post(relay)), limits);
    let peers =
        kagi_serve::peer_rate_limited(Router::new().route("/v1/control", post(control)), limits);
    Router::new()
        .merge(peers)
        .merge(limited)
        .route("/v1/revoked", get(revoked))
        .route("/v1/health", get(health))
        .layer(DefaultBodyLimit::max(tsm_protocol::codec::MAX_MESSAGE))
        .with_state(tsm)
}

pub use kagi_serve::{Limits, TlsFiles, tls_provider};

/// Serves on `listener` until `shutdown` resolves, then finishes the requests in flight. A
/// background task expires operations past their time.
pub async fn serve(
    tsm: Arc<Tsm>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(tsm, listener, shutdown, None).await
}

/// [`serve`], over HTTPS when `tls` is given (TLS 1.2/1.3, rustls). The default [`Limits`]
/// without a rate limit; [`serve_limited`] takes others.
pub async fn serve_tls(
    tsm: Arc<Tsm>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    tls: Option<TlsFiles>,
) -> std::io::Result<()> {
    let limits = Limits {
        rate_per_second: 0,
        peer_rate_per_second: 0,
        ..Limits::default()
    };
    serve_limited(tsm, listener, shutdown, tls, &limits).await
}

/// [`serve_tls`] under `limits`: timeouts, the connection cap and the rate limit on
/// `/v1/relay`.
pub async fn serve_limited(
    tsm: Arc<Tsm>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    tls: Option<TlsFiles>,
    limits: &Limits,
) -> std::io::Result<()> {
    let sweeper = tsm.clone();
    kagi_serve::serve_limited(
        router_with(tsm, limits),
        listener,
        shutdown,
        tls,
        limits,
        std::time::Duration::from_secs(5),
        move || {
            let tsm = sweeper.clone();
            async move {
                match tsm.sweep().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "operations expired"),
                    Err(e) => tracing::warn!(error = %e, "sweep"),
                }
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsm_protocol::codec::CodecError;
    use tsm_protocol::signing::ProtocolError;

    /// HTTP's split (RFC 9110 §15.5, §15.6): the sender's fault is a 4xx, the server's own a
    /// 5xx — a TSM that cannot encode its answer or lost a lock must not say "bad request".
    #[test]
    fn the_tsms_own_failures_are_5xx_the_senders_4xx() {
        let status = |r| answer(Instant::now(), r).status();
        assert_eq!(
            status(Err(ServiceError::Poisoned)),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(Err(ServiceError::Encode(CodecError::TooLarge(1 << 20)))),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            status(Err(ServiceError::BadRequest(ProtocolError::BadSignature))),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status(Err(ServiceError::Conflict)), StatusCode::CONFLICT);
    }
}
