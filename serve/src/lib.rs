//! # kagi-serve
//!
//! How kagi's servers (the TSM, the credential broker) are put on the network: one axum
//! [`Router`] served over plain HTTP for local runs or HTTPS (rustls, TLS 1.2/1.3, the ring
//! provider) with a certificate and key, stopped gracefully (the requests in flight finish,
//! 30 s at most), with a periodic background task (expiry sweeps, key rotation) that ends
//! with the server.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

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
/// then finishes the requests in flight. `background` runs every `period` meanwhile.
pub async fn serve<B, F>(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    tls: Option<TlsFiles>,
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
    let r = match tls {
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(files) => {
            tls_provider();
            let config = axum_server::tls_rustls::RustlsConfig::from_pem(
                files.cert_pem.clone(),
                files.key_pem.to_vec(),
            )
            .await?;
            let handle = axum_server::Handle::new();
            let h = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                h.graceful_shutdown(Some(Duration::from_secs(30)));
            });
            axum_server::from_tcp_rustls(listener.into_std()?, config)?
                .handle(handle)
                .serve(router.into_make_service())
                .await
        }
    };
    task.abort();
    r
}
