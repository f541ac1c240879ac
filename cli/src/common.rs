//! What the server commands share: configuration files (paths relative to the file, secrets
//! read into zeroizing buffers, private files written 0600), the runtime, logging and the
//! shutdown signal.

use super::{Failure, parse_hex};
use card_wire::scp03::AesKey;
use std::path::{Path, PathBuf};
use tsm_protocol::PartyId;
use zeroize::Zeroizing;

/// Reads a text file, naming it in the error.
pub fn read_text(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()).into())
}

/// A path in a configuration file, relative to that file.
pub fn rel(base: &Path, p: &str) -> PathBuf {
    base.parent().unwrap_or(Path::new(".")).join(p)
}

/// A secret read from a file: trimmed, zeroized when dropped.
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>, Failure> {
    let s = Zeroizing::new(read_text(path)?);
    Ok(Zeroizing::new(s.trim().to_string()))
}

/// An AES key file (hex).
pub fn aes_key_file(path: &Path) -> Result<AesKey, Failure> {
    let hexs = read_secret(path)?;
    let bytes = Zeroizing::new(parse_hex("key", &hexs)?);
    Ok(AesKey::new(&bytes).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// Writes a file readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Failure> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("{}: {e}", path.display()).into())
}

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
        }
        .apply(&mut l)
        .map_err(|e| e.to_string())?;
        Ok(l)
    }
}

/// Creates a directory (and its missing parents) readable by the owner only (0700).
pub fn create_private_dir(dir: &Path) -> Result<(), Failure> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()).into())
}

/// `n` random bytes as upper-case hex.
pub fn random_hex(n: usize) -> Result<Zeroizing<String>, Failure> {
    let mut b = Zeroizing::new(vec![0u8; n]);
    getrandom::fill(&mut b).map_err(|e| e.to_string())?;
    Ok(Zeroizing::new(hex::encode_upper(&*b)))
}

/// A party id, checked.
pub fn party_id(s: &str) -> Result<PartyId, Failure> {
    Ok(PartyId::new(s)?)
}

/// The servers' and clients' runtime (two workers: the machines are small).
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Logs on stderr (`KAGI_LOG` filters, default `info`), as JSON lines when asked.
pub fn init_logging(json: bool) {
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
            .with_writer(std::io::stderr)
            .init();
    }
}

/// Resolves at SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        } => {},
    }
    tracing::info!("shutting down: finishing the requests in flight");
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

/// For `init --tls`: a self-signed certificate for 127.0.0.1 and localhost (CN `name`) written
/// to `dir` (tls.crt.pem, tls.key.pem 0600). Returns the URL scheme, the server
/// configuration's lines, and the client configuration's line that pins the certificate
/// (`{client_key} = "tls.crt.pem"`); without `tls`, plain HTTP and no lines.
pub fn local_tls(
    dir: &Path,
    name: &str,
    client_key: &str,
    tls: bool,
) -> Result<(&'static str, String, String), Failure> {
    if !tls {
        return Ok(("http", String::new(), String::new()));
    }
    let (cert, key) = test_pki::tls_server_certificate(
        name,
        &["localhost"],
        &[std::net::IpAddr::from([127, 0, 0, 1])],
        365,
    )?;
    std::fs::write(dir.join("tls.crt.pem"), cert)?;
    write_private(&dir.join("tls.key.pem"), key.as_bytes())?;
    Ok((
        "https",
        "tls_cert = \"tls.crt.pem\"\ntls_key = \"tls.key.pem\"\n".into(),
        format!("{client_key} = \"tls.crt.pem\"\n"),
    ))
}

/// A server's certificate and key from its configuration's `tls_cert` and `tls_key`
/// (relative to the file `base`); neither: plain HTTP.
pub fn tls_files(
    base: &Path,
    cert: &Option<String>,
    key: &Option<String>,
) -> Result<Option<kagi_serve::TlsFiles>, Failure> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some(kagi_serve::TlsFiles {
            cert_pem: std::fs::read(rel(base, c)).map_err(|e| format!("{c}: {e}"))?,
            key_pem: Zeroizing::new(std::fs::read(rel(base, k)).map_err(|e| format!("{k}: {e}"))?),
        })),
        (None, None) => Ok(None),
        _ => Err("tls_cert and tls_key go together".into()),
    }
}
