//! Messages to people: the access code a JPKI-to-SIM download needs goes to the user from the
//! SP-TSM (step ⑪ of seed 004's 別紙1). An [`Outbox`] either drops each message into a
//! **maildir** (the default: `tmp/` then `new/`, files 0600, for the operator's own mail system
//! or a test to pick up) or sends it by **SMTP** ([lettre](https://docs.rs/lettre) over rustls:
//! implicit TLS or STARTTLS with the server's certificate checked against the system's roots
//! or a given CA; plain SMTP only to a loopback relay).
//!
//! The message carries a secret (the access code): it is never logged (a log line names the
//! message id only), the formatted bytes kept here are zeroized after use, and the SMTP
//! password comes from a file readable by its owner only, never from the command line.

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{SmtpTransport, Transport};
use serde::{Deserialize, Serialize};
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

mod maildir;

/// How an SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
    /// Plain first, then STARTTLS, which must succeed (usually port 587).
    Starttls,
    /// No TLS at all: accepted for a relay on the loopback interface only.
    None,
}

/// Where an [`Outbox`] puts messages (the `[notify]` table of a service's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum OutboxConfig {
    /// Each message a file in the maildir at `path` (made, 0700, when missing).
    Maildir {
        /// The maildir.
        path: PathBuf,
    },
    /// An SMTP relay.
    Smtp {
        /// The relay's host name (also the name its certificate must carry).
        host: String,
        /// Its port.
        port: u16,
        /// How the connection is protected.
        tls: SmtpTls,
        /// A PEM file of the CA (or the pinned certificate) the relay's certificate must
        /// chain to; the system's roots when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<PathBuf>,
        /// The user to log in as (with `password_file`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        /// A file holding the password (mode 0600 or stricter).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password_file: Option<PathBuf>,
        /// Seconds to wait for the relay (30 when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u64>,
    },
}

/// Why a message was not accepted or not delivered.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// An address does not parse.
    #[error("`{0}` is not a mail address (expected name@domain)")]
    Address(String),
    /// The subject has a control character (a line break would start a new header).
    #[error("the subject has a control character; give it on one line")]
    Subject,
    /// The configuration cannot work; the message says what to change.
    #[error("the outbox configuration is not usable: {0}")]
    Config(String),
    /// The maildir could not be written.
    #[error(
        "could not write to the maildir {path}: {source}; check that it exists and is writable"
    )]
    Maildir {
        /// The maildir.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The SMTP relay refused the message or could not be reached.
    #[error("the SMTP relay {relay} did not take the message: {reason}")]
    Smtp {
        /// host:port.
        relay: String,
        /// What happened.
        reason: String,
        /// Whether trying again later may succeed (a 4xx answer, a connection failure).
        transient: bool,
    },
    /// The message could not be built.
    #[error("the message could not be built: {0}")]
    Build(String),
}

impl NotifyError {
    /// Whether trying the same message again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            NotifyError::Smtp { transient, .. } => *transient,
            NotifyError::Maildir { .. } => true,
            _ => false,
        }
    }
}

/// A message handed over: its `Message-ID` (what logs and audits may name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The `Message-ID` header's value.
    pub message_id: String,
}

enum Route {
    Maildir(PathBuf),
    Smtp {
        transport: Box<SmtpTransport>,
        relay: String,
    },
}

/// Sends messages from one sender address through one configured route.
pub struct Outbox {
    from: Mailbox,
    route: Route,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let route = match &self.route {
            Route::Maildir(p) => format!("maildir {}", p.display()),
            Route::Smtp { relay, .. } => format!("smtp {relay}"),
        };
        f.debug_struct("Outbox")
            .field("from", &self.from.to_string())
            .field("route", &route)
            .finish()
    }
}

fn mailbox(s: &str) -> Result<Mailbox, NotifyError> {
    s.parse::<Mailbox>()
        .map_err(|_| NotifyError::Address(s.chars().take(80).collect()))
}

/// Whether `host` names the loopback interface.
fn loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The password in `path`, refused unless only its owner may read it.
fn read_password(path: &Path) -> Result<Zeroizing<String>, NotifyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|e| NotifyError::Config(format!("{}: {e}", path.display())))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(NotifyError::Config(format!(
                "the password file {} may be read by others (mode {:o}); chmod 600 it",
                path.display(),
                mode & 0o777
            )));
        }
    }
    let s = Zeroizing::new(
        fs::read_to_string(path)
            .map_err(|e| NotifyError::Config(format!("{}: {e}", path.display())))?,
    );
    Ok(Zeroizing::new(s.trim_end_matches(['\r', '\n']).to_string()))
}

impl Outbox {
    /// An outbox sending as `from` through `config`: the maildir is made when missing, an
    /// SMTP configuration is checked (plain SMTP only to loopback; the CA and password files
    /// read) — nothing is sent yet.
    pub fn open(config: &OutboxConfig, from: &str) -> Result<Outbox, NotifyError> {
        let from = mailbox(from)?;
        let route = match config {
            OutboxConfig::Maildir { path } => {
                maildir::prepare(path)?;
                Route::Maildir(path.clone())
            }
            OutboxConfig::Smtp {
                host,
                port,
                tls,
                ca_file,
                user,
                password_file,
                timeout_secs,
            } => {
                let relay = format!("{host}:{port}");
                let params = || -> Result<TlsParameters, NotifyError> {
                    let mut b = TlsParameters::builder(host.clone());
                    if let Some(ca) = ca_file {
                        let pem = fs::read(ca).map_err(|e| {
                            NotifyError::Config(format!("the CA file {}: {e}", ca.display()))
                        })?;
                        let cert = Certificate::from_pem(&pem).map_err(|e| {
                            NotifyError::Config(format!("the CA file {}: {e}", ca.display()))
                        })?;
                        b = b.add_root_certificate(cert);
                    }
                    b.build_rustls()
                        .map_err(|e| NotifyError::Config(format!("TLS for {relay}: {e}")))
                };
                let tls = match tls {
                    SmtpTls::Tls => Tls::Wrapper(params()?),
                    SmtpTls::Starttls => Tls::Required(params()?),
                    SmtpTls::None if loopback(host) => Tls::None,
                    SmtpTls::None => {
                        return Err(NotifyError::Config(format!(
                            "tls = \"none\" would send access codes in clear to {relay}; use \
                             \"starttls\" or \"tls\" (plain SMTP is for a loopback relay only)"
                        )));
                    }
                };
                let mut b = SmtpTransport::builder_dangerous(host.as_str())
                    .port(*port)
                    .tls(tls)
                    .timeout(Some(Duration::from_secs(timeout_secs.unwrap_or(30))));
                match (user, password_file) {
                    (Some(u), Some(p)) => {
                        let password = read_password(p)?;
                        b = b.credentials(Credentials::new(u.clone(), password.to_string()));
                    }
                    (None, None) => {}
                    _ => {
                        return Err(NotifyError::Config(
                            "give both user and password_file, or neither".into(),
                        ));
                    }
                }
                Route::Smtp {
                    transport: Box::new(b.build()),
                    relay,
                }
            }
        };
        Ok(Outbox { from, route })
    }

    /// Sends a plain-text message to `to`. The body may hold a secret: it is not logged.
    pub fn send(&self, to: &str, subject: &str, body: &str) -> Result<Sent, NotifyError> {
        if subject.chars().any(char::is_control) {
            return Err(NotifyError::Subject);
        }
        let to = mailbox(to)?;
        let message_id = message_id(&self.from)?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(message_id.clone()))
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_string())
            .map_err(|e| NotifyError::Build(e.to_string()))?;
        match &self.route {
            Route::Maildir(path) => {
                let bytes = Zeroizing::new(message.formatted());
                maildir::deliver(path, &bytes)?;
            }
            Route::Smtp { transport, relay } => {
                transport.send(&message).map_err(|e| NotifyError::Smtp {
                    relay: relay.clone(),
                    reason: e.to_string(),
                    transient: !e.is_permanent(),
                })?;
            }
        }
        tracing::info!(message_id = %message_id, "message handed over");
        Ok(Sent { message_id })
    }
}

/// A fresh `Message-ID`: time, a counter and 64 random bits at the sender's domain.
fn message_id(from: &Mailbox) -> Result<String, NotifyError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).map_err(|e| NotifyError::Build(format!("randomness: {e}")))?;
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(format!(
        "<{t}.{n}.{:016x}@{}>",
        u64::from_be_bytes(r),
        from.email.domain()
    ))
}
