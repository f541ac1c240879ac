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
