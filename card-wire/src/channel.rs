//! What SCP02 and SCP03 sessions share when they fail: the card's challenge or cryptogram,
//! EXTERNAL AUTHENTICATE, a MAC, the padding, the secure-messaging indication, a closed
//! session. Each protocol's error carries it as its `Channel` variant; the messages say what to
//! check next.

use crate::sw::StatusWord;

/// A secure channel failure common to SCP02 and SCP03.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelFault {
    /// The pseudo-random card challenge does not match the keys and SD AID.
    #[error(
        "the card challenge is not the pseudo-random value for these keys and this security \
         domain AID: wrong keys, wrong diversification or wrong AID; do not retry blindly"
    )]
    CardChallengeMismatch,
    /// The card cryptogram is wrong.
    #[error(
        "card cryptogram mismatch: the keys (or their diversification) are not the card's. \
         EXTERNAL AUTHENTICATE was not sent. Do NOT retry with guessed keys: cards lock their \
         security domain after a few failed authentications"
    )]
    CardCryptogramMismatch,
    /// The card rejected EXTERNAL AUTHENTICATE.
    #[error("the card rejected EXTERNAL AUTHENTICATE with {0}; the session was not opened")]
    ExternalAuthenticateRefused(StatusWord),
    /// A command MAC did not verify (card side).
    #[error("command MAC does not verify; the secure channel is closed")]
    CommandMacMismatch,
    /// A response MAC did not verify (host side).
    #[error(
        "response MAC does not verify: the response was altered or the session is out of step; the secure channel is closed"
    )]
    ResponseMacMismatch,
    /// A command too short to hold its MAC.
    #[error("secured command is shorter than its MAC")]
    MissingMac,
    /// A successful response too short to hold its R-MAC.
    #[error("response with {0} carries no R-MAC although the session requires one")]
    MissingResponseMac(StatusWord),
    /// Encrypted data with bad length or padding.
    #[error("encrypted data has a bad length or padding; the secure channel is closed")]
    Padding,
    /// A command without secure messaging where the level requires it.
    #[error("command lacks the secure-messaging indication the session's level requires")]
    MissingSecureMessaging,
    /// A command with secure messaging where none was negotiated.
    #[error("command claims secure messaging but the session's level is 00")]
    UnexpectedSecureMessaging,
    /// The session was closed by an earlier failure or a reset.
    #[error("the secure channel is closed; open a new session (sessions are never resumed)")]
    SessionClosed,
}
