//! `kagi-example-service`: the example service on the network (see the library's docs).

#![forbid(unsafe_code)]

use broker_protocol::Assurance;
use clap::Parser;
use kagi_example_service::{App, fetch_keys, push_router, router};
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
    /// Push mode: where the broker delivers proofs (HTTPS requiring the broker's client
    /// certificate; give --push-cert, --push-key, --broker-client-ca, --broker-public-key).
    #[arg(long)]
    push_listen: Option<String>,
    /// Push mode: this service's TLS certificate (PEM chain).
    #[arg(long)]
    push_cert: Option<std::path::PathBuf>,
    /// Push mode: its private key (PEM PKCS#8).
    #[arg(long)]
    push_key: Option<std::path::PathBuf>,
    /// Push mode: the CA (PEM) the broker's client certificate must chain to.
    #[arg(long)]
    broker_client_ca: Option<std::path::PathBuf>,
    /// Push mode: the broker's signing public key (PEM), which signs its pushes.
    #[arg(long)]
    broker_public_key: Option<std::path::PathBuf>,
}

/// Push mode's files, read.
struct PushFiles {
    listen: String,
    tls: kagi_serve::TlsFiles,
    client_ca: Vec<u8>,
    broker_key: p256::ecdsa::VerifyingKey,
}

fn push_files(args: &Args) -> Result<Option<PushFiles>, Box<dyn std::error::Error>> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    match (
        &args.push_listen,
        &args.push_cert,
        &args.push_key,
        &args.broker_client_ca,
        &args.broker_public_key,
    ) {
        (None, None, None, None, None) => Ok(None),
        (Some(listen), Some(cert), Some(key), Some(ca), Some(pubkey)) => {
            use p256::pkcs8::DecodePublicKey;
            let pem = String::from_utf8(read(pubkey)?)
                .map_err(|_| format!("{}: not PEM", pubkey.display()))?;
            let broker_key = p256::ecdsa::VerifyingKey::from_public_key_pem(&pem)
                .map_err(|e| format!("{}: not a P-256 public key: {e}", pubkey.display()))?;
            Ok(Some(PushFiles {
                listen: listen.clone(),
                tls: kagi_serve::TlsFiles {
                    cert_pem: read(cert)?,
                    key_pem: zeroize::Zeroizing::new(read(key)?),
                },
                client_ca: read(ca)?,
                broker_key,
            }))
        }
        _ => Err("push mode needs all of --push-listen, --push-cert, --push-key, --broker-client-ca, --broker-public-key".into()),
    }
}

/// Runs the service; a failure is printed as one line and exits 1 (a usage error, from
/// clap, exits 2).
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kagi-example-service: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let min = Assurance::parse(&args.min_assurance)
        .ok_or_else(|| format!("--min-assurance {}: card or password", args.min_assurance))?;
    // The flags are checked before the broker is asked for anything: a bad one ends the
    // service at once, not after waiting for the broker.
    let push = push_files(&args)?;
    if args.service_key.is_some() && push.is_some() {
        return Err("--service-key (code mode) and push mode exclude each other".into());
    }
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
    let app = match (&args.service_key, &push) {
        (Some(_), Some(_)) => {
            return Err("--service-key (code mode) and push mode exclude each other".into());
        }
        (None, None) => App::new(&broker, &args.broker_name, &args.service, keys, min),
        (None, Some(p)) => App::with_push(
            &broker,
            &args.broker_name,
            &args.service,
            keys,
            min,
            p.broker_key,
            kagi_signed::PartyId::new(&args.broker_name)?,
        )?,
        (Some(path), None) => {
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
    if let Some(p) = push {
        let listener = tokio::net::TcpListener::bind(&p.listen).await?;
        eprintln!(
            "{} takes pushes on https://{}/back-channel/push (client certificates from the broker's CA only)",
            args.service,
            listener.local_addr()?
        );
        let push_router = push_router(app.clone());
        tokio::spawn(async move {
            let r = kagi_serve::serve_client_auth(
                push_router,
                listener,
                stop_signal(),
                &p.tls,
                &p.client_ca,
                &kagi_serve::Limits::default(),
                Duration::from_secs(3600),
                || async {},
            )
            .await;
            if let Err(e) = r {
                eprintln!("the push listener stopped: {e}");
            }
        });
    }
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
