//! Requests in the control envelope, from the sender's side: sign a request for a server
//! (the TSM's control API, the broker's administrator API) and open its signed answer.

use crate::ids::{IdempotencyKey, PartyId};
use crate::signing::{self, Header, Kind, Policy, ProtocolError, Sealed, SignError, Signer, Trust};

/// A provider's (or operator's) request, signed and ready to send, with the header kept to
/// match the answer.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The wire bytes.
    pub bytes: Vec<u8>,
    /// The header sent (its id and nonce must come back in the answer).
    pub header: Header,
}

/// Signs `request` for the TSM `tsm`, valid `validity_ms`; operations get an idempotency key
/// (pass the same key again to retry the same request safely). Any server speaking this
/// control envelope (the TSM's control requests, the broker's administrator requests)
/// takes requests signed this way.
pub fn sign_request<T: serde::Serialize>(
    signer: &Signer,
    tsm: &PartyId,
    request: &T,
    idempotency_key: Option<IdempotencyKey>,
    now: u64,
    validity_ms: u64,
) -> Result<Outgoing, SignError> {
    let mut header = signer.header(Kind::ControlRequest, tsm, now, validity_ms)?;
    header.idempotency_key = idempotency_key;
    let bytes = signer
        .seal(header.clone(), request)
        .and_then(|s| s.to_bytes())?;
    Ok(Outgoing { bytes, header })
}

/// Opens the answer to `sent`, of any answer type (the TSM's control answers, the broker's
/// administrator answers): signed by a trusted key of the server, addressed to us, fresh, and
/// echoing the request's id and nonce.
pub fn open_answer_as<R: serde::Serialize + serde::de::DeserializeOwned>(
    bytes: &[u8],
    sent: &Header,
    trust: &Trust,
    now: u64,
) -> Result<R, ProtocolError> {
    let sealed = Sealed::from_bytes(bytes)?;
    let policy = Policy::new(sent.sender.clone());
    let env = signing::verify::<R>(&sealed, Kind::ControlResponse, trust, &policy, now)?;
    signing::check_answer(&env.header, sent)?;
    Ok(env.body)
}
