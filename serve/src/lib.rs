//! # kagi-serve
//!
//! How kagi's servers (the TSM, the credential broker) are put on the network: one axum
//! [`Router`] served over plain HTTP for local runs or HTTPS (rustls, TLS 1.2/1.3, the ring
//! provider) with a certificate and key, stopped gracefully (the requests in flight finish,
//! 30 s at most), with a periodic background task (expiry sweeps, key rotation) that ends
//! with the server.
//!
//! Every connection is bounded ([`Limits`]): a header-read, a body-read and an idle timeout,
//! a cap on connections served at once with a small reserve that answers only `/v1/health`,
//! and (on the routes a server chooses, [`rate_limited`]) a per-client rate limit.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod conn;
pub mod files;
mod limits;
mod rate;

pub use conn::HEALTH;
pub use limits::{Limits, LimitsError, LimitsFile};
pub use rate::{peer_rate_limited, rate_limited};

use axum::Router;
use std::future::Future;
use std::time::Duration;

/// A server certificate and key (PEM) for HTTPS.
#[derive(Clone)]
pub struct TlsFiles {
    /// The certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM (PKCS#8).
    pub key_pem: zeroize::Zeroizing<Vec<u8>>,
}

/// Installs rustls's ring provider as the process default (once; later calls do nothing).
pub fn tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Serves `router` on `listener` (over HTTPS when `tls` is given) until `shutdown` resolves,
/// then finishes the requests in flight. `background` runs every `period` meanwhile. The
/// default [`Limits`] apply; [`serve_limited`] takes others.
pub async fn serve<B, F>(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    tls: Option<TlsFiles>,
    period: Duration,
    background: B,
) -> std::io::Result<()>
where
    B: FnMut() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    serve_limited(
        router,
        listener,
        shutdown,
        tls,
        &Limits::default(),
        period,
        background,
    )
    .await
}

/// [`serve`] under `limits`: the header-read, body-read and idle timeouts and the connection
/// cap (with its reserve for `/v1/health`). The rate limit is the router's
/// ([`rate_limited`]); every request carries the peer's address ([`axum::extract::ConnectInfo`]).
pub async fn serve_limited<B, F>(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    tls: Option<TlsFiles>,
    limits: &Limits,
    period: Duration,
    background: B,
) -> std::io::Result<()>
where
    B: FnMut() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let tls = match tls {
        None => None,
        Some(files) => {
            tls_provider();
            Some(
                axum_server::tls_rustls::RustlsConfig::from_pem(
                    files.cert_pem.clone(),
                    files.key_pem.to_vec(),
                )
                .await?,
            )
        }
    };
    serve_with(router, listener, shutdown, tls, limits, period, background).await
}

/// [`serve_limited`] over HTTPS that requires every client to present a certificate chaining
/// to `client_ca_pem` (PEM CA certificates; mutually authenticated TLS): a connection without
/// one, or with one from another CA, fails in the handshake and reaches no route.
#[allow(clippy::too_many_arguments)]
pub async fn serve_client_auth<B, F>(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    tls: &TlsFiles,
    client_ca_pem: &[u8],
    limits: &Limits,
    period: Duration,
    background: B,
) -> std::io::Result<()>
where
    B: FnMut() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let config = client_auth_config(tls, client_ca_pem)?;
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(std::sync::Arc::new(config));
    serve_with(
        router,
        listener,
        shutdown,
        Some(tls),
        limits,
        period,
        background,
    )
    .await
}

/// The rustls server configuration of [`serve_client_auth`].
pub fn client_auth_config(
    tls: &TlsFiles,
    client_ca_pem: &[u8],
) -> std::io::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &str, e: String| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca_pem) {
        let c = c.map_err(|e| invalid("the client CA", e.to_string()))?;
        roots
            .add(c)
            .map_err(|e| invalid("the client CA", e.to_string()))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| {
        invalid(
            "the client CA (give at least one CA certificate, PEM)",
            e.to_string(),
        )
    })?;
    let chain = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("the server certificate", e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem)
        .map_err(|e| invalid("the server key", e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| invalid("the server certificate and key", e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

async fn serve_with<B, F>(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    limits: &Limits,
    period: Duration,
    mut background: B,
) -> std::io::Result<()>
where
    B: FnMut() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            background().await;
        }
    });
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(30)));
    });
    let fitted = open_files().and_then(|n| limits.fitted_to_descriptors(n).map(|f| (n, f)));
    let limits = match &fitted {
        Some((n, f)) => {
            tracing::warn!(
                "the connection cap is lowered to {} (+{} for {}) from {} (+{}): the process may open only {n} files (RLIMIT_NOFILE); raise that limit for more connections",
                f.max_connections,
                f.health_reserve,
                conn::HEALTH,
                limits.max_connections,
                limits.health_reserve,
            );
            f
        }
        None => limits,
    };
    let acceptor = conn::CapAcceptor::new(router.clone(), limits);
    let make = router.into_make_service();
    let r = match tls {
        None => {
            let mut server = axum_server::from_tcp(listener.into_std()?)?
                .acceptor(acceptor)
                .handle(handle);
            configure(&mut server, limits);
            server.serve(make).await
        }
        Some(config) => {
            let tls = axum_server::tls_rustls::RustlsAcceptor::new(config)
                .handshake_timeout(limits.header_read_timeout)
                .acceptor(acceptor);
            let mut server = axum_server::from_tcp(listener.into_std()?)?
                .acceptor(tls)
                .handle(handle);
            configure(&mut server, limits);
            server.serve(make).await
        }
    };
    task.abort();
    r
}

/// The soft limit on open files of this process, if there is one.
fn open_files() -> Option<u64> {
    #[cfg(unix)]
    {
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
        (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft)
    }
    #[cfg(not(unix))]
    None
}

fn configure<A>(server: &mut axum_server::Server<std::net::SocketAddr, A>, limits: &Limits) {
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_read_timeout);
}
