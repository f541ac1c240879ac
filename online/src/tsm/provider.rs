//! The service provider's side: a JPKI credential sealed to one SIM and applet instance (the
//! private key and the PIN, `card_wire::content`, after the SIM's key agreement certificate
//! checks against the card manufacturer's CA), the user's access grant, requests signed and
//! sent to the TSM, answers and receipts checked.

use super::client::{Client, ClientError};
use tsm_protocol::control::{
    AccessGrant, ControlRequest, ControlResponse, CredentialBundle, GrantVerifier,
};
use tsm_protocol::receipt::ExecutionReceipt;
use tsm_protocol::signing::{self, Kind, Signer, Trust};
use tsm_protocol::{IdempotencyKey, MsgId, Nonce, OpId, PartyId};
use zeroize::Zeroizing;

/// Why a provider request did not get an answer it can trust.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The TSM was not reached.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The answer did not verify (or is not to this request).
    #[error("the TSM's answer does not verify: {0}")]
    Answer(#[from] tsm_protocol::ProtocolError),
    /// A local failure (randomness, encoding).
    #[error("{0}")]
    Local(String),
    /// The request could not be signed (randomness, encoding).
    #[error("the request could not be signed: {0}")]
    Sign(#[from] tsm_protocol::SignError),
}

/// A private key for the card: RSA-2048 (PKCS#1 DER) or P-256 (the scalar).
pub enum CardKey {
    /// RSA-2048.
    Rsa(Box<rsa::PrivateKey>),
    /// P-256.
    P256(p256::ecdsa::SigningKey),
}

impl CardKey {
    /// The bytes the applet stores (zeroized on drop).
    pub fn card_bytes(&self) -> Result<Zeroizing<Vec<u8>>, String> {
        match self {
            CardKey::Rsa(k) => {
                use rsa::pkcs1::EncodeRsaPrivateKey;
                k.to_pkcs1_der()
                    .map(|d| Zeroizing::new(d.as_bytes().to_vec()))
                    .map_err(|e| e.to_string())
            }
            CardKey::P256(k) => Ok(Zeroizing::new(k.to_bytes().to_vec())),
        }
    }
}

pub use tsm_protocol::seal::{SealTarget, seal_pin};

/// A credential as the JPKI side hands it over: key and PIN sealed to the SIM `to` and the
/// applet `instance` under `request_id` (roles: the key and PIN files), certificates in clear.
/// `my_number_sign_serial` is the serial of the signature certificate of the user's verified
/// application (`kagi_certs::application::Verified::sign_serial`), never a value typed in.
#[allow(clippy::too_many_arguments)]
pub fn bundle(
    to: &SealTarget,
    instance: &[u8],
    request_id: &IdempotencyKey,
    key: &CardKey,
    certificate: Vec<u8>,
    ca_certificate: Vec<u8>,
    pin: &[u8],
    my_number_sign_serial: &str,
) -> Result<CredentialBundle, String> {
    let bytes = key.card_bytes()?;
    tsm_protocol::seal::bundle(
        to,
        instance,
        request_id,
        &bytes,
        certificate,
        ca_certificate,
        pin,
        my_number_sign_serial,
    )
}

/// The user's access grant: a server-relief verifier of the password (Argon2id at OWASP's
/// minimum parameters, m=19456 KiB, t=2, p=1, with a fresh salt, computed by the phone at
/// download time; the TSM keeps a digest: [`tsm_protocol::relief`]).
pub fn access_grant(
    password: &str,
    max_attempts: u8,
    valid_for_ms: u64,
) -> Result<AccessGrant, String> {
    let password = GrantVerifier::relief(password, &tsm_protocol::password::Params::OWASP_MIN)
        .map_err(|e| e.to_string())?;
    Ok(AccessGrant {
        password,
        max_attempts,
        valid_for_ms,
    })
}

/// A provider (or operator) talking to one TSM.
pub struct Party {
    /// Signs the requests.
    pub signer: Signer,
    /// The TSM's name.
    pub tsm: PartyId,
    /// The TSM's public key.
    pub trust: Trust,
    /// The TSM's address.
    pub client: Client,
}

/// An answer and the request it answers.
#[derive(Debug, Clone)]
pub struct Answered {
    /// The answer.
    pub response: ControlResponse,
    /// The request's id and nonce (a receipt names them).
    pub request: (MsgId, Nonce),
    /// What the exchange cost.
    pub exchange: super::client::Exchange,
}

impl Party {
    /// Signs `req`, sends it, and checks the answer. Operations get `idempotency_key` (a new
    /// one when `None`): sending the same request with the same key again is safe.
    pub async fn send(
        &self,
        req: &ControlRequest,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<Answered, ProviderError> {
        let key = match (req.creates_operation(), idempotency_key) {
            (true, None) => {
                Some(IdempotencyKey::random().map_err(|e| ProviderError::Local(e.to_string()))?)
            }
            (_, k) => k,
        };
        let out = tsm_protocol::control::sign_request(
            &self.signer,
            &self.tsm,
            req,
            key,
            signing::now_ms(),
            120_000,
        )?;
        let (bytes, exchange) = self.client.post("/v1/control", &out.bytes).await?;
        let response = tsm_protocol::control::open_answer(
            &bytes,
            &out.header,
            &self.trust,
            signing::now_ms(),
        )?;
        Ok(Answered {
            response,
            request: (out.header.msg_id, out.header.nonce),
            exchange,
        })
    }
}

impl Party {
    /// The SIM `iccid` as something to seal to: its key agreement certificate as the operator
    /// registered it at the TSM, checked against `manufacturer_ca` (the TSM cannot substitute
    /// a key of its own).
    pub async fn seal_target(
        &self,
        iccid: &str,
        manufacturer_ca: &x509_cert::Certificate,
    ) -> Result<SealTarget, ProviderError> {
        let r = self
            .send(
                &ControlRequest::CardCertificate {
                    iccid: iccid.to_string(),
                },
                None,
            )
            .await?;
        match r.response {
            ControlResponse::CardCertificate {
                iccid: answered,
                certificate,
            } if answered == iccid => SealTarget::verify(
                manufacturer_ca,
                &certificate,
                iccid,
                std::time::SystemTime::now(),
            )
            .map_err(ProviderError::Local),
            ControlResponse::Rejected(e) => Err(ProviderError::Local(format!(
                "the TSM has no card certificate for SIM {iccid}: {e}"
            ))),
            other => Err(ProviderError::Local(format!(
                "the TSM answered a card certificate request with {other:?}"
            ))),
        }
    }
}

/// Checks a receipt as its provider: signed by the TSM, for this operation and request, for
/// this certificate, and the on-card key proof verifies with the certificate's key.
pub fn check_receipt(
    receipt: &tsm_protocol::Sealed,
    tsm: &Trust,
    op: &OpId,
    request: (MsgId, Nonce),
    certificate: &[u8],
) -> Result<ExecutionReceipt, String> {
    let env = signing::verify_document::<ExecutionReceipt>(receipt, Kind::Receipt, tsm)
        .map_err(|e| format!("receipt: {e}"))?;
    env.body
        .check(op, request, certificate)
        .map_err(|e| e.to_string())?;
    Ok(env.body)
}
