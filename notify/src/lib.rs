//! Messages to people: the access code a JPKI-to-SIM download needs goes to the user from the
//! SP-TSM (step ⑪ of seed 004's 別紙1). An [`Outbox`] either drops each message into a
//! **maildir** (the default: `tmp/` then `new/`, files 0600, for the operator's own mail system
//! or a test to pick up) or sends it by **SMTP** ([lettre](https://docs.rs/lettre) over rustls:
//! implicit TLS or STARTTLS with the server's certificate checked against the system's roots
//! or a given CA; plain SMTP only to a loopback relay).
//!
//! The message carries a secret (the access code): it is never logged (a log line names the
//! message id only); lettre builds the headers around a placeholder and never holds the body
//! (its buffers are not zeroized): the body goes into the formatted bytes here, which are
//! zeroized after use; the SMTP password comes from a file readable by its owner only, never
//! from the command line.

use lettre::message::header::{ContentTransferEncoding, ContentType};
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
    /// The body is not plain 7-bit text.
    #[error(
        "the message body must be 7-bit ASCII text with lines of at most 998 characters (it \
         is sent as it is, 7bit); write it so"
    )]
    Body,
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

    /// Sends a plain-text message to `to`. The body may hold a secret: it is not logged, and
    /// no buffer outside this call keeps it (see the crate documentation).
    pub fn send(&self, to: &str, subject: &str, body: &str) -> Result<Sent, NotifyError> {
        let (message, bytes, message_id) = self.compose(to, subject, body)?;
        match &self.route {
            Route::Maildir(path) => {
                maildir::deliver(path, &bytes)?;
            }
            Route::Smtp { transport, relay } => {
                transport
                    .send_raw(message.envelope(), &bytes)
                    .map_err(|e| NotifyError::Smtp {
                        relay: relay.clone(),
                        reason: e.to_string(),
                        transient: !e.is_permanent(),
                    })?;
            }
        }
        tracing::info!(message_id = %message_id, "message handed over");
        Ok(Sent { message_id })
    }

    /// The message lettre built (headers, envelope, a placeholder for the body) and its
    /// bytes with the body in place of the placeholder.
    fn compose(
        &self,
        to: &str,
        subject: &str,
        body: &str,
    ) -> Result<(Message, Zeroizing<Vec<u8>>, String), NotifyError> {
        if subject.chars().any(char::is_control) {
            return Err(NotifyError::Subject);
        }
        let body = seven_bit(body)?;
        let to = mailbox(to)?;
        let message_id = message_id(&self.from)?;
        let mut slot = [0u8; 16];
        getrandom::fill(&mut slot).map_err(|e| NotifyError::Build(format!("randomness: {e}")))?;
        let slot = format!("kagi-body-{}", hex(&slot));
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .message_id(Some(message_id.clone()))
            .header(ContentType::TEXT_PLAIN)
            .header(ContentTransferEncoding::SevenBit)
            .body(slot.clone())
            .map_err(|e| NotifyError::Build(e.to_string()))?;
        let formatted = Zeroizing::new(message.formatted());
        let at = formatted
            .windows(slot.len())
            .position(|w| w == slot.as_bytes())
            .ok_or_else(|| NotifyError::Build("the body's place was not found".into()))?;
        let mut bytes = Zeroizing::new(Vec::with_capacity(formatted.len() + body.len()));
        bytes.extend_from_slice(&formatted[..at]);
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&formatted[at + slot.len()..]);
        Ok((message, bytes, message_id))
    }
}

/// `body` as 7-bit text with CRLF line ends, or [`NotifyError::Body`].
fn seven_bit(body: &str) -> Result<Zeroizing<Vec<u8>>, NotifyError> {
    let mut out = Zeroizing::new(Vec::with_capacity(body.len() + 16));
    for (i, line) in body.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.len() > 998
            || !line
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7F).contains(&b))
        {
            return Err(NotifyError::Body);
        }
        if i > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(line.as_bytes());
    }
    Ok(out)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// lettre's message (whose buffers are not zeroized) holds a placeholder, never the body;
    /// the bytes sent are lettre's with the body, CRLF line ends, in the placeholder's place.
    #[test]
    fn the_body_never_enters_lettres_message() {
        let dir = std::env::temp_dir().join(format!("kagi-notify-unit-{}", std::process::id()));
        let outbox = Outbox::open(
            &OutboxConfig::Maildir { path: dir.clone() },
            "SP-TSM <tsm@sp.example.jp>",
        )
        .unwrap();
        let body = "Your code: 7Q4M-2XKD-SECRET\nBye\n";
        let (message, bytes, _) = outbox.compose("u@example.jp", "Code", body).unwrap();
        let lettre_bytes = message.formatted();
        let lettre_text = String::from_utf8_lossy(&lettre_bytes);
        assert!(!lettre_text.contains("7Q4M-2XKD-SECRET"), "{lettre_text}");
        let sent = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(
            sent.contains("\r\n\r\nYour code: 7Q4M-2XKD-SECRET\r\nBye\r\n"),
            "{sent}"
        );
        assert!(
            sent.contains("Content-Transfer-Encoding: 7bit\r\n"),
            "{sent}"
        );
        // lettre's headers as they are, only the body differs.
        let head = |t: &str| t.split("\r\n\r\n").next().unwrap().to_string();
        assert_eq!(head(&sent), head(&lettre_text));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A body that is not 7-bit text (non-ASCII, a control character, a line longer than
    /// SMTP allows) is refused before anything is written.
    #[test]
    fn a_body_that_is_not_seven_bit_text_is_refused() {
        let dir = std::env::temp_dir().join(format!("kagi-notify-8bit-{}", std::process::id()));
        let outbox = Outbox::open(
            &OutboxConfig::Maildir { path: dir.clone() },
            "SP-TSM <tsm@sp.example.jp>",
        )
        .unwrap();
        let long = "x".repeat(999);
        for body in ["アクセスコード 1234", "a\u{7}b", long.as_str()] {
            assert!(matches!(
                outbox.send("u@example.jp", "Code", body),
                Err(NotifyError::Body)
            ));
        }
        assert_eq!(std::fs::read_dir(dir.join("new")).unwrap().count(), 0);
        assert!(
            outbox
                .send("u@example.jp", "Code", &"x".repeat(998))
                .is_ok()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
