//! The exit codes of the whole CLI (one table for every command) and the JSON form of errors.
//!
//! Scripts drive kagi: the exit code says what happened, `--json` says the details. The table
//! is printed by `kagi --help` ([`TABLE`]) and repeated in the README; `host/tests/exit_codes.rs`
//! tests every row.

use serde_json::{Value, json};
use std::fmt;
use std::process::ExitCode;

/// What a finished command reports to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It did what was asked.
    Success,
    /// It could not do what was asked (card, reader, server, file or key trouble).
    Failure,
    /// The command line was wrong (unknown flag, missing or malformed argument).
    Usage,
    /// A batch ran to its end but some cards failed or need rework, or records were unusable.
    DoneWithFailures,
    /// An eligibility read judged the card not eligible (the verdict is in the output).
    NotEligible,
    /// Interrupted (SIGINT/SIGTERM) at a safe point; the output says how to continue.
    Interrupted,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
            Exit::DoneWithFailures => 3,
            Exit::NotEligible => 4,
            Exit::Interrupted => 130,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e.code())
    }
}

/// The table shown by `kagi --help` (keep the README's copy in step).
pub const TABLE: &str = "Exit codes:\n  0    success\n  1    failure: the command could not do what was asked (card, reader, server, file, keys)\n  2    usage: the command line is wrong\n  3    done with failures: a batch finished, but cards failed or need rework, or records were unusable\n  4    not eligible: an eligibility read judged the card revoked, expired, unknown-issuer or not-a-jpki-card\n  130  interrupted: stopped at a safe point by SIGINT/SIGTERM; the output names the resume command\nWith --json, errors are one JSON document: {\"error\": {\"code\": \"...\", \"message\": \"...\"}, \"schema_version\": 1}.";

/// A command that finished with a non-zero outcome that is not an error: its output was already
/// printed (a batch summary, a verdict); the CLI exits with [`Exit::code`] and prints `note`, if
/// any, on stderr.
#[derive(Debug)]
pub struct Finished {
    /// The outcome.
    pub exit: Exit,
    /// One line for stderr, if any.
    pub note: Option<String>,
}

impl Finished {
    /// An outcome with a line for stderr.
    pub fn new(exit: Exit, note: impl Into<String>) -> Finished {
        Finished {
            exit,
            note: Some(note.into()),
        }
    }
}

impl fmt::Display for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.note {
            Some(n) => f.write_str(n),
            None => write!(f, "finished with exit code {}", self.exit.code()),
        }
    }
}

impl std::error::Error for Finished {}

/// A stable machine-readable code for an error, with the fields a script needs (`tries_left`,
/// `sw`, ...). Codes are dotted words; new codes may appear, existing ones do not change.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> (String, serde_json::Map<String, Value>) {
    let mut fields = serde_json::Map::new();
    let code: String = if let Some(k) = e.downcast_ref::<kagi::Error>() {
        card_code(k, &mut fields)
    } else if let Some(p) = e.downcast_ref::<kagi_perso::Error>() {
        use kagi_perso::Error as P;
        match p {
            P::Card(k) => card_code(k, &mut fields),
            P::Hsm(_) => "hsm".into(),
            P::Profile(_) => "perso.profile".into(),
            P::NeedsRework(_) => "perso.rework".into(),
            P::AwaitingCa(_) => "perso.awaiting-ca".into(),
            P::File { .. } => "io".into(),
            P::Certificate(_) => "perso.certificate".into(),
            P::Verification(_) => "perso.verification".into(),
            P::Mailer(_) => "perso.mailer".into(),
            _ => "perso".into(),
        }
    } else if e.downcast_ref::<kagi_hsm::Error>().is_some() {
        "hsm".into()
    } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
        fields.insert("kind".into(), json!(format!("{:?}", io.kind())));
        "io".into()
    } else if e
        .downcast_ref::<kagi_online::tsm::client::ClientError>()
        .is_some()
    {
        "tsm".into()
    } else if e
        .downcast_ref::<kagi_online::tsm::relay::RelayError>()
        .is_some()
    {
        "relay".into()
    } else if e
        .downcast_ref::<kagi_online::tsm::provider::ProviderError>()
        .is_some()
    {
        "tsm.provider".into()
    } else if e
        .downcast_ref::<kagi_online::broker::BrokerClientError>()
        .is_some()
    {
        "broker".into()
    } else if let Some(r) = e.downcast_ref::<Refused>() {
        if let Some(c) = tsm_protocol::codes::lookup(&r.0.code) {
            fields.insert("hint".into(), json!(c.meaning));
        }
        fields.insert("retryable".into(), json!(r.0.retryable));
        r.0.code.clone()
    } else if let Some(a) = e.downcast_ref::<kagi_certs::application::ApplicationError>() {
        let code = format!("application.{}", a.code());
        if let Some(c) = tsm_protocol::codes::lookup(&code) {
            fields.insert("hint".into(), json!(c.meaning));
        }
        fields.insert(
            "retryable".into(),
            json!(matches!(
                a,
                kagi_certs::application::ApplicationError::Local(_)
            )),
        );
        code
    } else if e.downcast_ref::<serde_json::Error>().is_some()
        || e.downcast_ref::<toml::de::Error>().is_some()
    {
        "input.format".into()
    } else {
        "error".into()
    };
    (code, fields)
}

/// A TSM's (or, through it, the JPKI issuer's) refusal: its code is the error's `--json`
/// code (`application.revoked`, `protocol.replayed`, …), with the catalogue's words for it
/// (`tsm_protocol::codes`) as `hint` and whether sending it again may help as `retryable`.
#[derive(Debug, thiserror::Error)]
#[error("the TSM refused: {0}")]
pub struct Refused(pub tsm_protocol::ErrorReport);

/// The `--json` form of an error.
pub fn error_json(e: &(dyn std::error::Error + 'static)) -> Value {
    let (code, mut fields) = describe(e);
    fields.insert("code".into(), json!(code));
    fields.insert("message".into(), json!(e.to_string()));
    json!({ "error": Value::Object(fields) })
}

/// The stable code of a card-level error (and its extra fields).
fn card_code(k: &kagi::Error, fields: &mut serde_json::Map<String, Value>) -> String {
    use kagi::Error as K;
    match k {
        K::Transport(t) => {
            fields.insert("detail".into(), json!(format!("{t:?}")));
            "transport".into()
        }
        K::Apdu(_) => "card.apdu".into(),
        K::Scp03(_) => "secure-channel".into(),
        K::Tlv(_) => "card.malformed".into(),
        K::Status { command, sw } => {
            fields.insert("command".into(), json!(command));
            fields.insert("sw".into(), json!(format!("{:04X}", sw.0)));
            "card.refused".into()
        }
        K::CommandTooLong(_) => "card.command-too-long".into(),
        K::Protocol(_) => "card.protocol".into(),
        K::Keys(_) => "keys".into(),
        K::WrongPin { tries_left } => {
            fields.insert("tries_left".into(), json!(tries_left));
            "pin.wrong".into()
        }
        K::CapApplet(_) => "cap.applet".into(),
        K::PinBlocked => "pin.blocked".into(),
        _ => "card".into(),
    }
}
