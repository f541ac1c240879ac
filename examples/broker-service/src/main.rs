//! `kagi-example-service`: the example service on the network (see the library's docs).

#![forbid(unsafe_code)]

use broker_protocol::Assurance;
use clap::Parser;
use kagi_example_service::{App, fetch_keys, router};
use std::time::Duration;

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
    /// The service's signing key (P-256, PKCS#8 PEM), registered at the broker for the back
    /// channel: the service then takes one-time codes and redeems them itself.
    #[arg(long)]
    service_key: Option<std::path::PathBuf>,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8770")]
    listen: String,
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
    let app = match &args.service_key {
        None => App::new(&broker, &args.broker_name, &args.service, keys, min),
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| format!("--service-key {}: {e}", path.display()))?;
            let party =
                kagi_signed::PartyId::new(&broker_protocol::api::service_party(&args.service))?;
            let signer = kagi_signed::signing::Signer::from_pkcs8_pem(party, &pem)
                .map_err(|e| format!("--service-key {}: {e}", path.display()))?;
            let broker_party = kagi_signed::PartyId::new(&args.broker_name)?;
            App::with_back_channel(
                &broker,
                &args.broker_name,
                &args.service,
                keys,
                min,
                signer,
                broker_party,
            )
        }
    };
    let router = router(app);
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    eprintln!(
        "{} listening on {} (trusting {} at {})",
        args.service,
        listener.local_addr()?,
        args.broker_name,
        args.broker
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(stop_signal())
        .await?;
    eprintln!("{} stopped", args.service);
    Ok(())
}

/// SIGINT or SIGTERM: the service finishes the requests in flight and exits 0.
async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {},
    }
}
