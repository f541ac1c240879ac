//! The broker's own configuration file (`broker.toml`), a development configuration made by
//! [`init`], and start-up ([`load`], [`open`], [`serve`]). Where the key-encryption keys live
//! (an HSM or a development file store) is the caller's choice: [`load`] asks for the key store
//! through a closure, so this crate never links a PKCS#11 library.

use crate::{Broker, Config, Envelope, FileEnvelope, Shards};
use kagi_serve::files::{self, FileError, rel};
use kagi_signed::PartyId;
use kagi_signed::signing::{Policy, Signer, Trust};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The broker could not be configured or started.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A file could not be read, written or understood.
    #[error(transparent)]
    File(#[from] FileError),
    /// The configuration names something invalid, or a file it needs is missing.
    #[error("{config}: {message}")]
    Config {
        /// The configuration file (or directory).
        config: PathBuf,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The key store could not be opened, or lacks a KEK.
    #[error("key store: {0}")]
    Keys(String),
    /// A signing key, public key or party name could not be used.
    #[error("{0}")]
    Party(String),
    /// A party name in the configuration is not one.
    #[error(transparent)]
    PartyName(#[from] kagi_signed::BadPartyId),
    /// A signing or public key file could not be read or written.
    #[error(transparent)]
    KeyFile(#[from] kagi_signed::KeyFileError),
    /// The card CAs or revocation lists could not be read.
    #[error("card trust: {0}")]
    CardTrust(#[from] kagi_certs::CertError),
    /// The databases could not be opened.
    #[error(transparent)]
    Store(#[from] kagi_db::StoreError),
    /// The listening address could not be bound.
    #[error("cannot listen on {listen}: {source}")]
    Listen {
        /// The address.
        listen: String,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP server stopped with an error.
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

impl From<String> for SetupError {
    fn from(message: String) -> Self {
        SetupError::Party(message)
    }
}

impl From<getrandom::Error> for SetupError {
    fn from(e: getrandom::Error) -> Self {
        SetupError::Keys(format!("the system's random source failed: {e}"))
    }
}

impl From<crate::envelope::EnvelopeError> for SetupError {
    fn from(e: crate::envelope::EnvelopeError) -> Self {
        SetupError::Keys(e.to_string())
    }
}

/// `broker.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BrokerFile {
    name: String,
    signing_key: String,
    assertion_key: String,
    state_key: String,
    database: Vec<String>,
    listen: String,
    default_kek: String,
    #[serde(default = "default_session_minutes")]
    session_minutes: u64,
    card_cas: Vec<String>,
    #[serde(default)]
    revocation: Vec<String>,
    #[serde(default)]
    tls_cert: Option<String>,
    #[serde(default)]
    tls_key: Option<String>,
    /// Push-mode services: the broker's TLS client certificate (PEM chain) and its key
    /// (PEM, a file only its owner may read).
    #[serde(default)]
    push_client_cert: Option<String>,
    #[serde(default)]
    push_client_key: Option<String>,
    #[serde(default)]
    admin: Vec<AdminEntry>,
    /// Timeouts, connection cap, rate limit (see the README's security section).
    #[serde(default)]
    limits: Option<kagi_serve::LimitsFile>,
}

fn default_session_minutes() -> u64 {
    30
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminEntry {
    party: String,
    public_key: String,
}

/// The broker's configuration file, read: its config, databases, address and TLS files.
pub struct Loaded {
    /// The service's configuration.
    pub config: Config,
    /// One database per shard (SQLite paths or PostgreSQL URLs).
    pub databases: Vec<String>,
    /// The listening address.
    pub listen: String,
    /// HTTPS certificate and key; `None`: plain HTTP.
    pub tls: Option<kagi_serve::TlsFiles>,
    /// The file's `[limits]` (the caller merges its own overrides and the defaults).
    pub limits: Option<kagi_serve::LimitsFile>,
    /// The TLS client identity for push-mode services (`push_client_cert`,
    /// `push_client_key`); `None`: push mode is refused.
    pub push: Option<crate::service::push::PushIdentity>,
}

/// The push client identity the configuration names: both files or neither; the key file
/// must be readable by its owner only.
fn push_identity(
    path: &Path,
    cert: &Option<String>,
    key: &Option<String>,
) -> Result<Option<crate::service::push::PushIdentity>, SetupError> {
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (rel(path, c), rel(path, k)),
        _ => {
            return Err(SetupError::Config {
                config: path.to_path_buf(),
                message: "push_client_cert and push_client_key go together: give both, or neither (no push mode)".into(),
            });
        }
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&key).map_err(|source| FileError::Io {
            path: key.clone(),
            source,
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(FileError::invalid(
                &key,
                format!(
                    "the push client key is readable by others (mode {:o}): chmod 600 it",
                    meta.permissions().mode() & 0o777
                ),
            )
            .into());
        }
    }
    let cert_pem = files::read_text(&cert)?;
    let key_pem = files::read_secret(&key)?;
    crate::service::push::PushIdentity::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())
        .map(Some)
        .map_err(|e| SetupError::Config {
            config: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// The key store, opened when [`load`] needs it.
pub type KeyStore<'a> = dyn Fn() -> Result<Arc<dyn Envelope>, String> + 'a;

fn p256_key(path: &Path) -> Result<p256::ecdsa::SigningKey, SetupError> {
    use p256::pkcs8::DecodePrivateKey;
    let pem = files::read_secret(path)?;
    p256::ecdsa::SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| FileError::invalid(path, format!("not a P-256 PKCS#8 key: {e}")).into())
}

/// Reads `broker.toml` at `path` (files it names are relative to it). `databases`, when not
/// empty, replaces the file's; `keys` opens the key store, which must hold the default KEK.
pub fn load(path: &Path, databases: &[String], keys: &KeyStore<'_>) -> Result<Loaded, SetupError> {
    let text = files::read_text(path)?;
    let f: BrokerFile =
        toml::from_str(&text).map_err(|e| FileError::invalid(path, e.to_string()))?;
    let me = PartyId::new(&f.name)?;
    let mut admin_trust = Trust::new();
    for a in &f.admin {
        admin_trust.add_pem(
            PartyId::new(&a.party)?,
            &files::read_text(&rel(path, &a.public_key))?,
        )?;
    }
    let state_file = rel(path, &f.state_key);
    let state = files::read_hex_secret(&state_file)?;
    let state_key: [u8; 32] = state.as_slice().try_into().map_err(|_| {
        FileError::invalid(&state_file, "state_key: 32 bytes (64 hex digits) expected")
    })?;
    let envelope = keys().map_err(SetupError::Keys)?;
    if !envelope.keks().contains(&f.default_kek) {
        return Err(SetupError::Keys(format!(
            "the key store ({}) holds no KEK '{}' (default_kek): make it with `kagi broker new-kek --id {}`",
            envelope.describe(),
            f.default_kek,
            f.default_kek
        )));
    }
    let config = Config {
        name: f.name.clone(),
        signer: Signer::from_pkcs8_pem(
            me.clone(),
            &files::read_secret(&rel(path, &f.signing_key))?,
        )?,
        assertion_key: p256_key(&rel(path, &f.assertion_key))?,
        admin_trust,
        policy: Policy::new(me),
        card_trust: crate::service::CardTrust::new(
            f.card_cas.iter().map(|c| rel(path, c)).collect(),
            f.revocation.iter().map(|c| rel(path, c)).collect(),
        ),
        envelope,
        default_kek: f.default_kek.clone(),
        state_key: Zeroizing::new(state_key),
        session_secs: f.session_minutes * 60,
    };
    // Fail at start, not at the first login, when a CA file is missing or malformed.
    config.card_trust.current()?;
    let databases = if databases.is_empty() {
        file_databases(path, &f)
    } else {
        databases.to_vec()
    };
    Ok(Loaded {
        config,
        databases,
        listen: f.listen,
        tls: files::tls_files(path, &f.tls_cert, &f.tls_key)?,
        limits: f.limits,
        push: push_identity(path, &f.push_client_cert, &f.push_client_key)?,
    })
}

fn file_databases(path: &Path, f: &BrokerFile) -> Vec<String> {
    f.database
        .iter()
        .map(|d| {
            if d.starts_with("postgres") {
                d.clone()
            } else {
                rel(path, d).display().to_string()
            }
        })
        .collect()
}

/// The databases `broker.toml` at `path` names, one per shard in order (SQLite paths made
/// relative to the file, PostgreSQL URLs), without opening any key store.
pub fn databases(path: &Path) -> Result<Vec<String>, SetupError> {
    let text = files::read_text(path)?;
    let f: BrokerFile =
        toml::from_str(&text).map_err(|e| FileError::invalid(path, e.to_string()))?;
    Ok(file_databases(path, &f))
}

/// Opens the broker's shards and the broker itself.
pub async fn open(config: Config, databases: &[String]) -> Result<Arc<Broker>, SetupError> {
    let backends: Vec<kagi_db::Backend> = databases
        .iter()
        .map(|d| kagi_db::Backend::parse(d))
        .collect();
    let shards = Shards::open(&backends).await?;
    Ok(Arc::new(Broker::new(config, shards)))
}

/// Serves the broker at `listen` until `shutdown` resolves, within `limits`, sweeping expired
/// sessions every `sweep`.
pub async fn serve(
    loaded: Loaded,
    listen: &str,
    sweep: std::time::Duration,
    limits: &kagi_serve::Limits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), SetupError> {
    let shards = loaded.databases.len();
    let locations: Vec<String> = loaded
        .databases
        .iter()
        .map(|d| kagi_db::Backend::parse(d).location())
        .collect();
    let shards_open = Shards::open(
        &loaded
            .databases
            .iter()
            .map(|d| kagi_db::Backend::parse(d))
            .collect::<Vec<_>>(),
    )
    .await?;
    let mut broker = Broker::new(loaded.config, shards_open);
    if let Some(identity) = loaded.push {
        broker = broker.with_push_identity(identity);
    }
    let broker = Arc::new(broker);
    let bind_error = |source| SetupError::Listen {
        listen: listen.to_string(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    tracing::info!(
        listen = %addr,
        https = loaded.tls.is_some(),
        shards,
        database = %locations.join(", "),
        keys = %broker.envelope().describe(),
        name = %broker.name(),
        "broker serving"
    );
    tracing::info!(?limits, "limits");
    crate::http::serve_limited(broker, listener, shutdown, loaded.tls, sweep, limits)
        .await
        .map_err(SetupError::Serve)
}

pub use kagi_serve::files::DevTls;

/// Writes a development broker in `dir`: its signing, assertion and state keys, an
/// administrator (`admin.toml`, `admin.key.pem`), `broker.toml` serving at `listen` (HTTPS with
/// `tls`) trusting the card CA in `ca_dir`, and, with `file_kek`, a first KEK `k1` in
/// `dir/keys` (development file store; 0700, files 0600). Refuses a directory that already
/// holds a broker.
pub fn init(
    dir: &Path,
    listen: &str,
    ca_dir: &Path,
    tls: Option<DevTls>,
    file_kek: bool,
) -> Result<(), SetupError> {
    files::create_private_dir(&dir.join("keys"))?;
    if dir.join("broker.toml").exists() {
        return Err(SetupError::Config {
            config: dir.join("broker.toml"),
            message: "this directory already holds a broker configuration: choose another".into(),
        });
    }
    let ca_dir = std::path::absolute(ca_dir).map_err(|source| FileError::Io {
        path: ca_dir.to_path_buf(),
        source,
    })?;
    if !ca_dir.join("auth-ca.crt.pem").exists() {
        return Err(SetupError::Config {
            config: ca_dir.clone(),
            message: format!(
                "no auth-ca.crt.pem: create the test CAs with `kagi ca init --ca-dir {}`",
                ca_dir.display()
            ),
        });
    }
    let broker = Signer::generate(PartyId::new("broker:kagi")?)?;
    let admin = Signer::generate(PartyId::new("admin:ops")?)?;
    let assertion = Signer::generate(PartyId::new("broker:kagi")?)?;
    for (name, s) in [("broker", &broker), ("admin", &admin)] {
        files::write_key_pair(dir, name, &s.to_pkcs8_pem()?, &s.public_pem()?)?;
    }
    files::write_private(
        &dir.join("assertion.key.pem"),
        assertion.to_pkcs8_pem()?.as_bytes(),
    )?;
    files::write_private(&dir.join("state.key"), files::random_hex(32)?.as_bytes())?;
    if file_kek {
        FileEnvelope::new_kek(&dir.join("keys"), "k1")?;
    }
    let (scheme, tls_lines, ca_line) =
        files::write_dev_tls(dir, tls, || "broker_ca = \"tls.crt.pem\"\n".to_string())?;
    let ca = ca_dir.display();
    files::write_private(
        &dir.join("broker.toml"),
        format!(
            "# kagi credential broker (generated by `kagi broker init`)\n\
name = \"broker:kagi\"\n\
signing_key = \"broker.key.pem\"\n\
assertion_key = \"assertion.key.pem\"\n\
state_key = \"state.key\"\n\
# One database per shard (SQLite files or postgres://…); cards are spread by hash.\n\
database = [\"broker.db\"]\n\
listen = \"{listen}\"\n\
default_kek = \"k1\"          # the KEK of new records until an administrator rotates it\n\
session_minutes = 30\n\
card_cas = [\"{ca}/auth-ca.crt.pem\"]\n\
# CRLs (.crl/.der/PEM) or serial lists; re-read when they change.\n\
revocation = [\"{ca}/auth-ca.crl.der\", \"{ca}/auth-ca.revoked\"]\n\
{tls_lines}\n\
[[admin]]\n\
party = \"admin:ops\"\n\
public_key = \"admin.pub.pem\"\n"
        )
        .as_bytes(),
    )?;
    files::write_private(
        &dir.join("admin.toml"),
        format!(
            "party = \"admin:ops\"\nsigning_key = \"admin.key.pem\"\nbroker = [\"{scheme}://{listen}\"]\nbroker_party = \"broker:kagi\"\nbroker_public_key = \"broker.pub.pem\"\n{ca_line}"
        )
        .as_bytes(),
    )?;
    Ok(())
}
