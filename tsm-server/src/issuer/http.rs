//! The JPKI issuer over HTTP: `POST /v1/issuer` (a signed [`tsm_protocol::issuer`] request;
//! the answer is signed), `GET /v1/crl` (the CRL of its phone certificates, DER,
//! `application/pkix-crl`, after syncing the signature CA's revocations; the published file
//! is rewritten with it), `GET /v1/health`. `400` a malformed message, `503` the database is
//! unavailable, `500` the issuer's own failure (logged).

use super::{Issuer, IssuerError};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::Arc;

async fn issuer(State(i): State<Arc<Issuer>>, body: Bytes) -> Response {
    match i.handle(&body).await {
        Ok(b) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            b,
        )
            .into_response(),
        Err(IssuerError::BadRequest(m)) => (StatusCode::BAD_REQUEST, m).into_response(),
        Err(IssuerError::Store(e)) => {
            tracing::error!(error = %e, "database");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the issuer's database is unavailable: retry later",
            )
                .into_response()
        }
        Err(e @ IssuerError::Internal(_)) => {
            tracing::error!(error = %e, "internal");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the issuer could not answer (an internal error, logged): retry later",
            )
                .into_response()
        }
    }
}

async fn crl(State(i): State<Arc<Issuer>>) -> Response {
    let made = match i.sync_revocations().await {
        Ok(_) => i.current_crl().await,
        Err(e) => Err(e),
    };
    match made {
        Ok((_, der)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/pkix-crl")],
            der,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "CRL");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the issuer could not make its CRL (logged): retry later",
            )
                .into_response()
        }
    }
}

async fn health(State(i): State<Arc<Issuer>>) -> Response {
    match i.db().writable().await {
        Ok(()) => format!("ok {} {} db=writable\n", i.party(), i.db().describe()).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unwritable {}: {e}\n", i.party()),
        )
            .into_response(),
    }
}

/// The issuer's routes (without a rate limit; see [`router_with`]).
pub fn router(i: Arc<Issuer>) -> Router {
    router_with(
        i,
        &kagi_serve::Limits {
            peer_rate_per_second: 0,
            ..kagi_serve::Limits::default()
        },
    )
}

/// The issuer's routes, `/v1/issuer` (the SP-TSM's signed requests) under the rate for
/// peers of `limits`.
pub fn router_with(i: Arc<Issuer>, limits: &kagi_serve::Limits) -> Router {
    let peers =
        kagi_serve::peer_rate_limited(Router::new().route("/v1/issuer", post(issuer)), limits);
    Router::new()
        .merge(peers)
        .route("/v1/crl", get(crl))
        .route("/v1/health", get(health))
        .layer(DefaultBodyLimit::max(tsm_protocol::codec::MAX_MESSAGE))
        .with_state(i)
}

/// Serves on `listener` until `shutdown` resolves; every 5 s the issuer syncs the signature
/// CA's revocations ([`Issuer::sweep`]).
pub async fn serve(
    i: Arc<Issuer>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    tls: Option<kagi_serve::TlsFiles>,
    limits: &kagi_serve::Limits,
) -> std::io::Result<()> {
    let sweeper = i.clone();
    kagi_serve::serve_limited(
        router_with(i, limits),
        listener,
        shutdown,
        tls,
        limits,
        std::time::Duration::from_secs(5),
        move || {
            let i = sweeper.clone();
            async move {
                if let Err(e) = i.sweep().await {
                    tracing::warn!(error = %e, "issuer sweep");
                }
            }
        },
    )
    .await
}
