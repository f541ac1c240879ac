//! What the server commands share: configuration files (paths relative to the file, secrets
//! read into zeroizing buffers, private files written 0600), the runtime, logging and the
//! shutdown signal.

use super::Failure;
use tsm_protocol::PartyId;
use zeroize::Zeroizing;

pub use kagi_serve::files::{read_secret, read_text, rel, write_private};

/// A server's limits on its clients (each overrides the configuration file's `[limits]`,
/// which overrides the defaults; see the README's security section).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LimitArgs {
    /// Seconds a request's header may take to arrive (default 10).
    #[arg(long, value_name = "SECS")]
    pub header_timeout: Option<f64>,
    /// Seconds a request's body may take to arrive (default 30).
    #[arg(long, value_name = "SECS")]
    pub body_timeout: Option<f64>,
    /// Seconds a connection may stay without a byte moving either way (default 60).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<f64>,
    /// Connections served at once (default 512).
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Further connections that may still ask for /v1/health (default 16).
    #[arg(long, value_name = "N")]
    pub health_reserve: Option<usize>,
    /// Per client address, requests a second to the login / access-code endpoints
    /// (default 5; 0 turns the rate limit off).
    #[arg(long, value_name = "N")]
    pub rate_per_second: Option<u32>,
    /// Per client address, the burst allowed above that rate (default 20).
    #[arg(long, value_name = "N")]
    pub rate_burst: Option<u32>,
    /// Per client address, requests a second to the endpoints of signed requests between
    /// services (default 2000; 0 turns that rate limit off).
    #[arg(long, value_name = "N")]
    pub peer_rate_per_second: Option<u32>,
    /// Per client address, the burst allowed above that rate (default 4000).
    #[arg(long, value_name = "N")]
    pub peer_rate_burst: Option<u32>,
}

impl LimitArgs {
    /// The defaults, then the file's `[limits]`, then these flags.
    pub fn limits(
        &self,
        file: Option<&kagi_serve::LimitsFile>,
    ) -> Result<kagi_serve::Limits, Failure> {
        let mut l = kagi_serve::Limits::default();
        if let Some(f) = file {
            f.apply(&mut l)
                .map_err(|e| format!("the configuration's [limits]: {e}"))?;
        }
        kagi_serve::LimitsFile {
            header_timeout_secs: self.header_timeout,
            body_timeout_secs: self.body_timeout,
            idle_timeout_secs: self.idle_timeout,
            max_connections: self.max_connections,
            health_reserve: self.health_reserve,
            rate_per_second: self.rate_per_second,
            rate_burst: self.rate_burst,
            peer_rate_per_second: self.peer_rate_per_second,
            peer_rate_burst: self.peer_rate_burst,
        }
        .apply(&mut l)
        .map_err(|e| e.to_string())?;
        Ok(l)
    }
}

/// A server's runtime.
#[derive(clap::Args, Debug, Clone)]
pub struct RuntimeArgs {
    /// Threads that serve requests. Several services on one small machine serve more, with
    /// lower tails, at 1 each (fewer thread switches; `scripts/tsm-bench.sh` measures it);
    /// a service alone on a machine may use one per core.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: u16,
}

impl RuntimeArgs {
    /// The runtime with these workers.
    pub fn runtime(&self) -> Result<tokio::runtime::Runtime, Failure> {
        runtime_with(usize::from(self.workers))
    }
}

/// A party id, checked.
pub fn party_id(s: &str) -> Result<PartyId, Failure> {
    Ok(PartyId::new(s)?)
}

/// The servers' and clients' runtime (two workers: the machines are small).
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    runtime_with(2)
}

fn runtime_with(workers: usize) -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?)
}

/// Logs on stderr (`KAGI_LOG` filters, default `info`), as JSON lines when asked; colours only
/// when stderr is a terminal (`NO_COLOR` turns them off there too), never in a log file.
pub fn init_logging(json: bool) {
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let filter = tracing_subscriber::EnvFilter::try_from_env("KAGI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    } else {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .init();
    }
}

/// Resolves on the first SIGINT or SIGTERM. The handlers are installed when this is called
/// (inside the runtime: `let _in = rt.enter()`), not when the future is first polled, so a
/// signal that arrives while the server is still starting up stops it cleanly too, instead of
/// killing it.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static, Failure>
{
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| format!("cannot install the SIGTERM handler: {e}"))?;
    let mut int = signal(SignalKind::interrupt())
        .map_err(|e| format!("cannot install the SIGINT handler: {e}"))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        tracing::info!("shutting down: finishing the requests in flight");
    })
}

/// For `init --tls`: a self-signed development certificate for 127.0.0.1 and localhost (CN
/// `name`), valid a year: (certificate PEM, key PEM).
pub fn dev_tls_certificate(name: &str) -> Result<(String, Zeroizing<String>), Failure> {
    let (cert, key) = test_pki::tls_server_certificate(
        name,
        &["localhost"],
        &[std::net::IpAddr::from([127, 0, 0, 1])],
        365,
    )?;
    Ok((cert, Zeroizing::new(key)))
}

/// A Unix time (seconds) in RFC 3339, as every kagi output writes times.
pub fn rfc3339(secs: u64) -> String {
    der::DateTime::from_unix_duration(std::time::Duration::from_secs(secs))
        .map(|d| d.to_string())
        .unwrap_or_else(|_| secs.to_string())
}

/// A Unix time in milliseconds in RFC 3339 with milliseconds (`2026-12-03T23:36:43.120Z`).
pub fn rfc3339_ms(ms: i64) -> String {
    let Ok(ms) = u64::try_from(ms) else {
        return ms.to_string();
    };
    let whole = rfc3339(ms / 1000);
    match whole.strip_suffix('Z') {
        Some(head) => format!("{head}.{:03}Z", ms % 1000),
        None => whole,
    }
}

/// Rewrites the named fields of a JSON object from Unix seconds to RFC 3339 text.
pub fn times_rfc3339(value: &mut serde_json::Value, keys: &[&str]) {
    if let Some(obj) = value.as_object_mut() {
        for k in keys {
            if let Some(secs) = obj.get(*k).and_then(serde_json::Value::as_u64) {
                obj.insert((*k).to_string(), serde_json::Value::String(rfc3339(secs)));
            }
        }
    }
}
