//! The per-client rate limit (tower_governor, keyed by the peer's IP address).

use crate::Limits;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use std::sync::Arc;
use std::time::Duration;
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::PeerIpKeyExtractor;
use tower_governor::{GovernorError, GovernorLayer};

/// Puts the per-client rate limit of `limits` on every route of `routes` (a router of only the
/// endpoints to limit: logins, access codes); over it a client gets `429 Too Many Requests`
/// with `Retry-After` (seconds). `rate_per_second = 0` leaves the routes unlimited.
///
/// The client is the connection's peer address, which [`crate::serve`] gives every request;
/// behind a reverse proxy every client shares the proxy's address.
pub fn rate_limited<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    limits: &Limits,
) -> Router<S> {
    limited(routes, limits.rate_per_second, limits.rate_burst)
}

/// [`rate_limited`] at the rate for signed requests between services
/// ([`Limits::peer_rate_per_second`], [`Limits::peer_rate_burst`]): a partner's own traffic
/// stays far below it; one address flooding the endpoint with requests whose signatures
/// must each be checked is held to it.
pub fn peer_rate_limited<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    limits: &Limits,
) -> Router<S> {
    limited(routes, limits.peer_rate_per_second, limits.peer_rate_burst)
}

fn limited<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    per_second: u32,
    burst: u32,
) -> Router<S> {
    if per_second == 0 {
        return routes;
    }
    let period =
        Duration::from_nanos(1_000_000_000 / u64::from(per_second)).max(Duration::from_nanos(1));
    let Some(config) = GovernorConfigBuilder::default()
        .key_extractor(PeerIpKeyExtractor)
        .period(period)
        .burst_size(burst.max(1))
        .finish()
    else {
        return routes;
    };
    let config = Arc::new(config);
    // Forget clients that have been quiet for a while, once a minute, for as long as the
    // routes exist.
    let weak = Arc::downgrade(&config);
    let _ = std::thread::Builder::new()
        .name("kagi-rate-limit-gc".into())
        .spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(60));
                match weak.upgrade() {
                    Some(c) => c.limiter().retain_recent(),
                    None => break,
                }
            }
        });
    routes.layer(GovernorLayer::new(config).error_handler(refusal))
}

/// `429` with `Retry-After` rounded up to whole seconds (governor rounds down, which says
/// `0` for a wait under a second), or `500` if the peer's address is missing.
fn refusal(e: GovernorError) -> Response<Body> {
    match e {
        GovernorError::TooManyRequests { wait_time, .. } => {
            let wait = wait_time.saturating_add(1);
            let mut r = Response::new(Body::from(format!(
                "too many requests from this address: retry in {wait} s\n"
            )));
            *r.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            r
        }
        other => {
            tracing::error!(error = %other, "rate limit");
            let mut r = Response::new(Body::from("the rate limit could not tell the client\n"));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}
