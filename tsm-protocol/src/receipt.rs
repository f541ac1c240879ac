//! Proof of execution. When an issuance completes the TSM signs an [`ExecutionReceipt`]
//! (kind `Receipt`) that carries a signature made on the card by the newly installed key over
//! a nonce of the TSM's: with the certificate alone, the provider can check that the key is
//! really on the card — not merely that the TSM says so.
//!
//! The chain of evidence: the card's R-MACs (checked by the TSM) → the on-card signature
//! (checkable by anyone with the certificate) → the TSM's signature (checked by the provider).

use crate::ids::{MsgId, Nonce, OpId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One card command of the operation, as digests (the commands carry sealed keys: only their
/// hashes go into the receipt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// What the step did.
    pub name: String,
    /// SHA-256 of the plain command (before SCP03).
    pub command_sha256: [u8; 32],
    /// The card's status word (R-MAC verified).
    pub sw: u16,
}

/// The TSM's statement that an operation was executed on a card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionReceipt {
    /// The operation.
    pub op: OpId,
    /// What it was (`issue`, `reset-pin`, ...).
    pub kind: String,
    /// The provider's request that created it, and that request's nonce.
    pub request: (MsgId, Nonce),
    /// The card's ICCID (as the operator registered it).
    pub iccid: String,
    /// The card image number read under the secure channel (R-MAC verified).
    pub cin: String,
    /// SHA-256 of the certificate written (zero when none).
    pub certificate_sha256: [u8; 32],
    /// The linked My Number signature-certificate serial.
    pub my_number_sign_serial: String,
    /// The TSM's nonce the new key signed.
    pub key_proof_nonce: [u8; 32],
    /// The card's signature over [`key_proof_message`] (empty when the operation installs no
    /// key).
    pub key_proof: Vec<u8>,
    /// The card commands, as digests.
    pub steps: Vec<StepRecord>,
    /// When it completed (Unix milliseconds).
    pub completed_at: u64,
}

/// What the new key signs: a tag, the operation and the TSM's nonce (built on the card the
/// same way, `card_wire::jpki::key_proof_message`).
pub fn key_proof_message(op: &OpId, nonce: &[u8; 32]) -> Vec<u8> {
    card_wire::jpki::key_proof_message(&op.0, nonce)
}

pub use kagi_signed::certkey::{CertKey, CertKeyError};

/// Why a provider refuses a receipt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Another operation's or request's receipt (or one of another kind).
    #[error("the receipt is for another operation or request")]
    OtherOperation,
    /// The operation ran on another card.
    #[error("the receipt is for another card")]
    OtherCard,
    /// It certifies another certificate than the one issued.
    #[error("the receipt names another certificate")]
    OtherCertificate,
    /// The on-card key proof does not verify with the certificate's key (or the certificate
    /// is unreadable): the key may not be on the card.
    #[error("key proof: {0}")]
    KeyProof(#[from] CertKeyError),
}

impl ExecutionReceipt {
    /// The provider's checks of a receipt it got for its request: the receipt is for this
    /// operation and request, certifies `certificate`, and the on-card signature verifies
    /// with the certificate's key.
    pub fn check(
        &self,
        op: &OpId,
        request: (MsgId, Nonce),
        certificate: &[u8],
    ) -> Result<(), ReceiptError> {
        if self.op != *op || self.request != request {
            return Err(ReceiptError::OtherOperation);
        }
        let digest: [u8; 32] = Sha256::digest(certificate).into();
        if self.certificate_sha256 != digest {
            return Err(ReceiptError::OtherCertificate);
        }
        Ok(CertKey::from_certificate(certificate)?.verify(
            &key_proof_message(op, &self.key_proof_nonce),
            &self.key_proof,
        )?)
    }

    /// The SP-TSM's checks of an MNO-TSM's receipt for a SIM preparation (the signature and
    /// the envelope's sender and recipient are checked before, on the signed document): it
    /// is a [`PREPARE_SIM`](crate::control::PREPARE_SIM) receipt, for the MNO-TSM's
    /// operation `op`, on the card `iccid`.
    pub fn check_preparation(&self, op: &OpId, iccid: &str) -> Result<(), ReceiptError> {
        if self.op != *op || self.kind != crate::control::PREPARE_SIM {
            return Err(ReceiptError::OtherOperation);
        }
        if self.iccid != iccid {
            return Err(ReceiptError::OtherCard);
        }
        Ok(())
    }
}
