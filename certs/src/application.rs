//! The application for a phone credential, signed with the My Number card (seed 004, 別紙1
//! steps ②③⑧): what is applied for — the SIM's ICCID, the provider, the subscriber
//! reference, the user's mail address (where the SP-TSM sends the access code, ⑪: signed by
//! the user, so no intermediary can redirect it), a fresh nonce and the time — signed with the card's **signature key** and
//! carrying the signature certificate.
//!
//! The document is versioned and canonically encoded (`kagi_signed::codec`); the card signs
//! [`DOMAIN`] followed by the canonical encoding of the [`Body`]. [`check`] is the checker's
//! side (the provider today, the JPKI issuer later): the signature verifies with the
//! certificate's key, the certificate chains to a trusted signature CA, is within its validity
//! and not revoked (CRLs or a revocation list, as [`crate::judge`] decides), and the
//! application is fresh and for this SIM and provider. The signature-certificate serial the
//! phone credential is linked to comes out of the verified certificate only. Replays inside the
//! time window are refused by [`NonceLog`].

use crate::{Trust, Verdict, judge};
use kagi_signed::certkey::CertKey;
use kagi_signed::codec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The version this code writes and reads.
pub const VERSION: u8 = 2;

/// What the card signs before the body's encoding (domain separation: these bytes are never
/// a valid other kagi message).
pub const DOMAIN: &[u8] = b"kagi jpki application v1\0";

/// What the card signs before the body of a **pin-reset** application (the holder's fresh
/// consent to a new PIN for the phone credential linked to this card): another domain, so an
/// issue application never passes for a pin-reset one, nor the other way round.
pub const DOMAIN_PIN_RESET: &[u8] = b"kagi jpki pin-reset v1\0";

/// What the card signs first for a **transfer** application (the holder's consent to move
/// the phone credential of one SIM to another, [`Body::signed_bytes_transfer`]): its own
/// domain, so neither an issue nor a pin-reset application passes for one.
pub const DOMAIN_TRANSFER: &[u8] = b"kagi jpki transfer v1\0";

/// The kinds of signed application (each signed under its own domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Apply for a phone credential ([`DOMAIN`]).
    Issue,
    /// Reset the PIN of the phone credential linked to the signing card
    /// ([`DOMAIN_PIN_RESET`]).
    PinReset,
}

impl Kind {
    /// The bytes signed before the body.
    pub fn domain(self) -> &'static [u8] {
        match self {
            Kind::Issue => DOMAIN,
            Kind::PinReset => DOMAIN_PIN_RESET,
        }
    }
}

/// How old an application may be by default (seconds).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

/// How far in the future an application's time may be (clock skew).
pub const MAX_SKEW: Duration = Duration::from_secs(120);

/// What is applied for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Body {
    /// The document's version ([`VERSION`]).
    pub version: u8,
    /// The SIM the credential is for.
    pub iccid: String,
    /// The service provider applied to (its party name).
    pub provider: String,
    /// The user's reference at the provider.
    pub subscriber_ref: String,
    /// The user's mail address (a bare `name@domain`, see [`check_contact`]): the SP-TSM
    /// sends the download's access code there (⑪).
    pub contact: String,
    /// A fresh random nonce (a replay is refused).
    pub nonce: [u8; 16],
    /// When it was made (seconds since the Unix epoch).
    pub created_at: u64,
}

impl Body {
    /// A new application body made at `now` with a fresh nonce; refused when `contact` is not
    /// a mail address ([`check_contact`]).
    pub fn new(
        iccid: &str,
        provider: &str,
        subscriber_ref: &str,
        contact: &str,
        now: SystemTime,
    ) -> Result<Body, ApplicationError> {
        check_contact(contact)?;
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|e| ApplicationError::Local(e.to_string()))?;
        Ok(Body {
            version: VERSION,
            iccid: iccid.into(),
            provider: provider.into(),
            subscriber_ref: subscriber_ref.into(),
            contact: contact.into(),
            nonce,
            created_at: secs(now),
        })
    }

    /// The bytes the card signs: [`DOMAIN`] and the body's canonical encoding.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, ApplicationError> {
        self.signed_bytes_for(Kind::Issue)
    }

    /// The bytes the card signs for an application of `kind`: its domain and the body's
    /// canonical encoding.
    pub fn signed_bytes_for(&self, kind: Kind) -> Result<Vec<u8>, ApplicationError> {
        let mut m = kind.domain().to_vec();
        m.extend(codec::encode(self).map_err(|e| ApplicationError::Malformed(e.to_string()))?);
        Ok(m)
    }
}

impl Body {
    /// The bytes the card signs for a **transfer** of the phone credential on SIM
    /// `from_iccid` to this body's SIM: [`DOMAIN_TRANSFER`], the canonical encoding of
    /// `from_iccid`, then the body's. The old SIM is bound by the signature but not carried in
    /// the file: the checker takes it from the credential being moved ([`check_transfer`]).
    pub fn signed_bytes_transfer(&self, from_iccid: &str) -> Result<Vec<u8>, ApplicationError> {
        let mut m = DOMAIN_TRANSFER.to_vec();
        m.extend(
            codec::encode(&from_iccid).map_err(|e| ApplicationError::Malformed(e.to_string()))?,
        );
        m.extend(codec::encode(self).map_err(|e| ApplicationError::Malformed(e.to_string()))?);
        Ok(m)
    }
}

/// A signed application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// What is applied for.
    pub body: Body,
    /// The card's signature certificate (DER).
    pub certificate: Vec<u8>,
    /// The card's signature over [`Body::signed_bytes`] (RSA PKCS#1 v1.5 with SHA-256).
    pub signature: Vec<u8>,
}

impl Application {
    /// The canonical encoding (the file `kagi jpki apply` writes).
    pub fn encode(&self) -> Result<Vec<u8>, ApplicationError> {
        codec::encode(self).map_err(|e| ApplicationError::Malformed(e.to_string()))
    }

    /// Parses an application, refusing anything but its canonical encoding and unknown
    /// versions.
    pub fn decode(bytes: &[u8]) -> Result<Application, ApplicationError> {
        let a: Application =
            codec::decode(bytes).map_err(|e| ApplicationError::Malformed(e.to_string()))?;
        if a.body.version != VERSION {
            return Err(ApplicationError::Version(a.body.version));
        }
        Ok(a)
    }
}

/// Why an application is refused. Each has its own [`ApplicationError::code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplicationError {
    /// Not an application.
    #[error(
        "the application is malformed ({0}): make a new one with `kagi jpki apply … --out FILE`"
    )]
    Malformed(String),
    /// A version this checker does not know.
    #[error(
        "the application has version {0}, this checker reads version {VERSION}: make it with a matching kagi"
    )]
    Version(u8),
    /// The certificate it carries does not parse or has a key no card signs with.
    #[error("the application's signature certificate is unusable: {0}")]
    Certificate(String),
    /// The card's signature does not verify with the certificate's key.
    #[error(
        "the application's signature does not verify with its certificate (forged or altered): make a new one"
    )]
    BadSignature,
    /// No trusted signature CA issued the certificate.
    #[error(
        "the signature certificate was not issued by a trusted signature CA ({0}): sign with the My Number card's signature key"
    )]
    UnknownIssuer(String),
    /// The certificate is revoked.
    #[error(
        "the signature certificate {0} is revoked: the card cannot apply (the holder needs a new card certificate)"
    )]
    Revoked(String),
    /// The certificate is not valid at the checking time.
    #[error(
        "the signature certificate {0} is expired or not yet valid: the holder needs a renewed card certificate"
    )]
    Expired(String),
    /// Made too long ago, or in the future.
    #[error(
        "the application was made at {made} (unix), outside the accepted window at {now}: make a fresh one"
    )]
    Stale {
        /// Its time.
        made: u64,
        /// The checker's time.
        now: u64,
    },
    /// For another SIM.
    #[error("the application is for SIM {got}, not {want}")]
    WrongSim {
        /// What it names.
        got: String,
        /// What was expected.
        want: String,
    },
    /// For another provider.
    #[error("the application is for provider {got}, not {want}")]
    WrongProvider {
        /// What it names.
        got: String,
        /// What was expected.
        want: String,
    },
    /// The contact is not a mail address.
    #[error(
        "the application's contact `{0}` is not a mail address: give the user's own as name@domain (--contact)"
    )]
    Contact(String),
    /// Its nonce was seen before.
    #[error("the application was already used (replay): make a fresh one")]
    Replayed,
    /// A local failure (randomness, the nonce log).
    #[error("{0}")]
    Local(String),
}

impl ApplicationError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApplicationError::Malformed(_) => "malformed",
            ApplicationError::Version(_) => "version",
            ApplicationError::Certificate(_) => "certificate",
            ApplicationError::BadSignature => "bad-signature",
            ApplicationError::UnknownIssuer(_) => "unknown-issuer",
            ApplicationError::Revoked(_) => "revoked",
            ApplicationError::Expired(_) => "expired",
            ApplicationError::Stale { .. } => "stale",
            ApplicationError::WrongSim { .. } => "wrong-sim",
            ApplicationError::WrongProvider { .. } => "wrong-provider",
            ApplicationError::Contact(_) => "contact",
            ApplicationError::Replayed => "replayed",
            ApplicationError::Local(_) => "local",
        }
    }
}

/// What the checker expects.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// The SIM the credential goes to.
    pub iccid: &'a str,
    /// The checker's own provider name.
    pub provider: &'a str,
    /// The checking time.
    pub now: SystemTime,
    /// How old an application may be.
    pub max_age: Duration,
}

/// An application that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The application.
    pub application: Application,
    /// The signature certificate's serial (upper-case hex, no sign padding), from the
    /// verified certificate.
    pub sign_serial: String,
    /// The certificate's notAfter (seconds since the Unix epoch).
    pub not_after: u64,
}

/// The longest mail address accepted (RFC 5321's path limit less the angle brackets).
pub const MAX_CONTACT: usize = 254;

/// Checks that `contact` is one bare mail address (`name@domain.tld`: no display name, no
/// comment, no line break, at most [`MAX_CONTACT`] bytes), as the `email_address` crate
/// parses RFC 5322 addr-specs.
pub fn check_contact(contact: &str) -> Result<(), ApplicationError> {
    use email_address::{EmailAddress, Options};
    let shown = || ApplicationError::Contact(contact.chars().take(80).collect());
    if contact.len() > MAX_CONTACT || contact.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(shown());
    }
    let options = Options::default()
        .without_display_text()
        .without_domain_literal()
        .with_required_tld();
    match EmailAddress::parse_with_options(contact, options) {
        Ok(a) if a.as_str() == contact => Ok(()),
        _ => Err(shown()),
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Checks `bytes` as an application against the signature CAs, CRLs and revocation list in
/// `trust` and what the checker expects. Replays are the caller's to refuse
/// ([`NonceLog::claim`]) once this passes.
pub fn check(bytes: &[u8], trust: &Trust, expect: &Expect) -> Result<Verified, ApplicationError> {
    check_kind(bytes, trust, expect, Kind::Issue)
}

/// [`check`] for an application of `kind`: signed under that kind's domain (an application
/// of another kind does not verify: [`ApplicationError::BadSignature`]).
pub fn check_kind(
    bytes: &[u8],
    trust: &Trust,
    expect: &Expect,
    kind: Kind,
) -> Result<Verified, ApplicationError> {
    check_signed(bytes, trust, expect, |b| b.signed_bytes_for(kind))
}

/// [`check`] for a **transfer** application moving the credential of SIM `from_iccid` to
/// `expect.iccid` ([`Body::signed_bytes_transfer`]): one signed for another old SIM, or of
/// another kind, does not verify ([`ApplicationError::BadSignature`]).
pub fn check_transfer(
    bytes: &[u8],
    trust: &Trust,
    expect: &Expect,
    from_iccid: &str,
) -> Result<Verified, ApplicationError> {
    check_signed(bytes, trust, expect, |b| {
        b.signed_bytes_transfer(from_iccid)
    })
}

fn check_signed(
    bytes: &[u8],
    trust: &Trust,
    expect: &Expect,
    message: impl Fn(&Body) -> Result<Vec<u8>, ApplicationError>,
) -> Result<Verified, ApplicationError> {
    let app = Application::decode(bytes)?;
    check_contact(&app.body.contact)?;
    let key = CertKey::from_certificate(&app.certificate)
        .map_err(|e| ApplicationError::Certificate(e.to_string()))?;
    let CertKey::Rsa(_) = key else {
        return Err(ApplicationError::Certificate(
            "a My Number card's signature key is RSA".into(),
        ));
    };
    key.verify(&message(&app.body)?, &app.signature)
        .map_err(|_| ApplicationError::BadSignature)?;
    let j = judge(&app.certificate, trust, expect.now);
    let serial = j.serial.clone().unwrap_or_default();
    match j.verdict {
        Verdict::Eligible => {}
        Verdict::UnknownIssuer => {
            return Err(ApplicationError::UnknownIssuer(
                j.issuer.unwrap_or_default(),
            ));
        }
        Verdict::Revoked => return Err(ApplicationError::Revoked(serial)),
        Verdict::Expired => return Err(ApplicationError::Expired(serial)),
        Verdict::NotAJpkiCard => {
            return Err(ApplicationError::Certificate(j.reasons.join("; ")));
        }
    }
    let now = secs(expect.now);
    let made = app.body.created_at;
    if made > now.saturating_add(MAX_SKEW.as_secs())
        || made < now.saturating_sub(expect.max_age.as_secs())
    {
        return Err(ApplicationError::Stale { made, now });
    }
    if app.body.iccid != expect.iccid {
        return Err(ApplicationError::WrongSim {
            got: app.body.iccid.clone(),
            want: expect.iccid.into(),
        });
    }
    if app.body.provider != expect.provider {
        return Err(ApplicationError::WrongProvider {
            got: app.body.provider.clone(),
            want: expect.provider.into(),
        });
    }
    Ok(Verified {
        sign_serial: serial,
        not_after: j.not_after.unwrap_or(0),
        application: app,
    })
}

/// The nonces of applications already accepted, one file per nonce in a directory: claiming
/// creates the file with `O_EXCL`, so of two checkers racing with the same application exactly
/// one wins, and a replay is refused. Entries older than the time window can be dropped
/// ([`NonceLog::prune`]): an application that old is refused as stale anyway.
#[derive(Debug, Clone)]
pub struct NonceLog {
    dir: PathBuf,
}

impl NonceLog {
    /// The log in `dir` (created, 0700).
    pub fn open(dir: &Path) -> Result<NonceLog, ApplicationError> {
        let local = |e: std::io::Error| ApplicationError::Local(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(local)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(local)?;
        }
        Ok(NonceLog { dir: dir.into() })
    }

    /// Records `v`'s nonce (per signature certificate); [`ApplicationError::Replayed`] when it
    /// is there already.
    pub fn claim(&self, v: &Verified) -> Result<(), ApplicationError> {
        let name = format!(
            "{}-{}",
            v.sign_serial,
            hex::encode(v.application.body.nonce)
        );
        let p = self.dir.join(name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(ApplicationError::Replayed)
            }
            Err(e) => Err(ApplicationError::Local(format!("{}: {e}", p.display()))),
        }
    }

    /// Drops entries older than `max_age` at `now` (by file time).
    pub fn prune(&self, now: SystemTime, max_age: Duration) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t + max_age + MAX_SKEW < now);
            if old {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
