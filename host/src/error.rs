//! The host library's error type: every failure says what happened and what to do next.

use card_wire::apdu::ApduError;
use card_wire::scp03::Scp03Error;
use card_wire::sw::StatusWord;
use card_wire::tlv::TlvError;
use card_wire::transport::TransportError;

/// A host-side failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport could not exchange bytes with the card.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A command could not be encoded, or the card's bytes could not be parsed.
    #[error(transparent)]
    Apdu(#[from] ApduError),
    /// A secure-channel step failed.
    #[error(transparent)]
    Scp03(#[from] Scp03Error),
    /// An SCP02 secure-channel step failed.
    #[error(transparent)]
    Scp02(#[from] card_wire::scp02::Scp02Error),
    /// The card's data is not valid BER-TLV.
    #[error("malformed card data: {0}")]
    Tlv(#[from] TlvError),
    /// The card refused a command.
    #[error("the card answered {sw} to {command}")]
    Status {
        /// Which command.
        command: &'static str,
        /// The card's status word.
        sw: StatusWord,
    },
    /// A command too long for the card and transport, even with chaining.
    #[error("{0}")]
    CommandTooLong(String),
    /// The card does not follow the protocol (unexpected response shape).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The card's answer to PUT KEY is not the key check values (or key version) of the keys
    /// sent: the card may hold other keys now. Check with GET DATA 00E0 before using them.
    #[error(
        "PUT KEY: the card answered {} instead of {}: check its keys (GET DATA 00E0) before using the new ones",
        hex::encode_upper(got),
        hex::encode_upper(expected)
    )]
    KeyCheck {
        /// What the card answered.
        got: Vec<u8>,
        /// The key version and key check values of the keys sent.
        expected: Vec<u8>,
    },
    /// The card kept answering `61xx` (more data) past the limit of GET RESPONSE rounds.
    #[error(
        "the card kept answering 61xx after {0} GET RESPONSE commands: it may be faulty, or try another reader"
    )]
    EndlessResponse(usize),
    /// A PIN command was about to be sent where none may be (an eligibility read).
    #[error("an eligibility read never sends a PIN command (INS {0:02X} refused)")]
    PinCommandRefused(u8),
    /// Keys could not be loaded.
    #[error("keys: {0}")]
    Keys(String),
    /// A PIN was wrong.
    #[error("wrong PIN: {tries_left} tries left before it blocks")]
    WrongPin {
        /// Tries left.
        tries_left: u8,
    },
    /// A CAP file does not hold the applet asked for, or several and none was chosen.
    #[error("{0}")]
    CapApplet(String),
    /// A file (a trace log, a key file) could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An I/O failure outside any named file.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A simulated card's image could not be read or written.
    #[cfg(feature = "sim")]
    #[error(transparent)]
    Image(#[from] applet_sim::store::ImageError),
    /// A certificate or trust file could not be read.
    #[cfg(feature = "eligibility")]
    #[error(transparent)]
    Certificate(#[from] kagi_certs::CertError),
    /// The ATR or an identity EF (ICCID) is malformed.
    #[error("malformed card identity: {0}")]
    Identity(String),
    /// A PIN is blocked.
    #[error("the PIN is blocked: it must be reset at an issuing counter")]
    PinBlocked,
}

impl From<card_wire::gp::GpError> for Error {
    fn from(e: card_wire::gp::GpError) -> Self {
        use card_wire::gp::GpError as G;
        match e {
            G::Apdu(a) => Error::Apdu(a),
            G::Tlv(t) => Error::Tlv(t),
            G::FieldTooLong(n) => {
                Error::CommandTooLong(format!("an INSTALL field of {n} bytes does not fit"))
            }
            G::Malformed(m) => Error::Protocol(m),
            G::PutKey(m) => Error::Keys(m),
        }
    }
}

/// The host library's result type.
pub type Result<T, E = Error> = core::result::Result<T, E>;

impl Error {
    /// The card's status word, when the error is a card refusal.
    pub fn status(&self) -> Option<StatusWord> {
        match self {
            Error::Status { sw, .. } => Some(*sw),
            _ => None,
        }
    }
}

/// Turns a non-`9000` response into [`Error::Status`].
pub fn expect_success(command: &'static str, r: card_wire::Response) -> Result<Vec<u8>> {
    if r.sw.is_success() {
        Ok(r.data)
    } else {
        Err(Error::Status { command, sw: r.sw })
    }
}
