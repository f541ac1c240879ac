//! What can stop a card or a batch: the card (any [`kagi::Error`]), the HSM, the profile or
//! its records, a card caught half-way, a CA that has not answered yet, the batch's own files.

/// A personalisation failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The card, its transport or its secure channel failed.
    #[error(transparent)]
    Card(#[from] kagi::Error),
    /// The HSM holding the master keys failed.
    #[error(transparent)]
    Hsm(#[from] kagi_hsm::Error),
    /// A personalisation profile or input record is not valid.
    #[error("profile: {0}")]
    Profile(String),
    /// A card was caught in the middle of a step whose effect cannot be read back: it must be
    /// reworked by hand rather than personalised again.
    #[error("needs rework: {0}")]
    NeedsRework(String),
    /// An external CA has not answered a card's certification requests yet: the card stays
    /// in progress and continues when the certificates are there.
    #[error("waiting for the CA: {0}")]
    AwaitingCa(String),
    /// A file of the batch (its output directory, a report, a CA exchange file) could not be
    /// read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file or directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A certificate, certification request or CA answer is not what the card needs.
    #[error("certificate: {0}")]
    Certificate(String),
    /// A finished card does not read back as personalised: set it aside for inspection.
    #[error("verification failed: {0}")]
    Verification(String),
    /// The PIN mailer file could not be encrypted or written.
    #[error("PIN mailer: {0}")]
    Mailer(String),
    /// The per-card report could not be written.
    #[error("report: {0}")]
    Report(String),
    /// The system's random source failed.
    #[error("the system's random source failed: {0}")]
    Random(#[from] getrandom::Error),
    /// A station panicked while holding shared state: the batch stops; resume it.
    #[error("a station stopped while holding shared state: resume the batch")]
    Poisoned,
    /// The batch cannot run as asked (say, reader stations in a build without PC/SC).
    #[error("{0}")]
    Unsupported(String),
}

impl From<card_wire::scp03::Scp03Error> for Error {
    fn from(e: card_wire::scp03::Scp03Error) -> Self {
        Error::Card(kagi::Error::Scp03(e))
    }
}

impl From<card_wire::transport::TransportError> for Error {
    fn from(e: card_wire::transport::TransportError) -> Self {
        Error::Card(kagi::Error::Transport(e))
    }
}

impl From<card_wire::apdu::ApduError> for Error {
    fn from(e: card_wire::apdu::ApduError) -> Self {
        Error::Card(kagi::Error::Apdu(e))
    }
}

impl From<card_wire::tlv::TlvError> for Error {
    fn from(e: card_wire::tlv::TlvError) -> Self {
        Error::Card(kagi::Error::Tlv(e))
    }
}

impl From<card_wire::gp::GpError> for Error {
    fn from(e: card_wire::gp::GpError) -> Self {
        Error::Card(kagi::Error::from(e))
    }
}

#[cfg(feature = "sim")]
impl From<applet_sim::store::ImageError> for Error {
    fn from(e: applet_sim::store::ImageError) -> Self {
        Error::Card(kagi::Error::Image(e))
    }
}

impl Error {
    /// The card's status word, when the error is a card refusal.
    pub fn status(&self) -> Option<card_wire::sw::StatusWord> {
        match self {
            Error::Card(e) => e.status(),
            _ => None,
        }
    }
}

/// Personalisation's result type.
pub type Result<T, E = Error> = core::result::Result<T, E>;
