//! What the TSM keeps of sealed content, and for how long: the sealed parts of a request (a
//! credential's key and PIN, a new PIN — `card_wire::content`, opened only by the card) live
//! in a table of their own while the operation runs and are deleted in the same transaction
//! that ends it (completed, failed, expired, cancelled); the operation's record never holds
//! them. The SIMs' key agreement certificates, as operators register them, are kept beside
//! the cards for providers to fetch.

use super::{Stmt, Store, StoreError};
use tsm_protocol::OpId;
use tsm_protocol::control::ControlRequest;

/// Moves the sealed parts out of `req` (left empty there) and returns them encoded; `None`
/// for a request without any.
pub fn take_sealed(req: &mut ControlRequest) -> Option<Vec<u8>> {
    let parts: Vec<Vec<u8>> = match req {
        ControlRequest::Issue { credential, .. }
        | ControlRequest::Transfer {
            new_credential: credential,
            ..
        } => vec![
            std::mem::take(&mut credential.sealed_key),
            std::mem::take(&mut credential.sealed_pin),
        ],
        ControlRequest::ResetPin { sealed_pin, .. } => vec![std::mem::take(sealed_pin)],
        _ => return None,
    };
    tsm_protocol::codec::encode(&parts).ok()
}

/// Puts sealed parts taken by [`take_sealed`] back into `req`; `false` if they do not fit
/// (another kind of request, or a blob that does not decode).
pub fn restore_sealed(req: &mut ControlRequest, blob: &[u8]) -> bool {
    let Ok(mut parts) = tsm_protocol::codec::decode::<Vec<Vec<u8>>>(blob) else {
        return false;
    };
    match (req, parts.len()) {
        (
            ControlRequest::Issue { credential, .. }
            | ControlRequest::Transfer {
                new_credential: credential,
                ..
            },
            2,
        ) => {
            credential.sealed_pin = parts.pop().unwrap_or_default();
            credential.sealed_key = parts.pop().unwrap_or_default();
            true
        }
        (ControlRequest::ResetPin { sealed_pin, .. }, 1) => {
            *sealed_pin = parts.pop().unwrap_or_default();
            true
        }
        _ => false,
    }
}

impl Store {
    /// Statement keeping an operation's sealed parts while it runs.
    pub fn insert_sealed(op: &OpId, blob: Vec<u8>) -> Stmt {
        Stmt::one(
            "INSERT INTO sealed (op_id, data) VALUES ($1, $2)",
            vec![op.to_hex().into(), blob.into()],
        )
    }

    /// Statement deleting an operation's sealed parts if the operation is over by the time it
    /// runs (put it after the statement that ends the operation, in the same transaction).
    pub fn erase_sealed_if_over(op: &OpId) -> Stmt {
        Stmt::any(
            "DELETE FROM sealed WHERE op_id = $1 AND EXISTS (SELECT 1 FROM ops WHERE id = $1
             AND state IN ('completed', 'failed', 'expired', 'cancelled'))",
            vec![op.to_hex().into()],
        )
    }

    /// An operation's sealed parts, if still kept.
    pub async fn sealed(&self, op: &OpId) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self
            .query(
                "SELECT data FROM sealed WHERE op_id = $1",
                vec![op.to_hex().into()],
            )
            .await?;
        Ok(rows.first().map(|r| r[0].blob()))
    }

    /// Statement keeping, for SP-TSM operation `op`, the MNO-TSM operation `mno_op` that
    /// prepares its SIM and the domain's initial keys as the MNO-TSM sealed them to the
    /// operation's reply key (only this SP-TSM, with its state key, opens them): what the
    /// MNO-TSM's receipt, brought back by the relay, is checked against. Deleted by the sweep
    /// once the operation is over ([`Store::forget_mno_prepared`]).
    pub fn put_mno_prepared(op: &OpId, mno_op: &OpId, sealed: Vec<u8>, now: i64) -> Stmt {
        Stmt::one(
            "INSERT INTO mno_prepared (op_id, mno_op, sealed_keys, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (op_id) DO UPDATE SET mno_op = $2, sealed_keys = $3, updated_at = $4",
            vec![
                op.to_hex().into(),
                mno_op.to_hex().into(),
                sealed.into(),
                now.into(),
            ],
        )
    }

    /// The MNO-TSM operation and sealed initial keys kept for operation `op`.
    pub async fn mno_prepared(&self, op: &OpId) -> Result<Option<(OpId, Vec<u8>)>, StoreError> {
        let rows = self
            .query(
                "SELECT mno_op, sealed_keys FROM mno_prepared WHERE op_id = $1",
                vec![op.to_hex().into()],
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| Some((OpId::from_hex(&r[0].text())?, r[1].blob()))))
    }

    /// Statement deleting what [`Store::put_mno_prepared`] kept for operations that are over.
    pub fn forget_mno_prepared() -> Stmt {
        Stmt::any(
            "DELETE FROM mno_prepared WHERE EXISTS (SELECT 1 FROM ops WHERE ops.id = mno_prepared.op_id
             AND ops.state IN ('completed', 'failed', 'expired', 'cancelled'))",
            vec![],
        )
    }

    /// Statement setting (or, with `None`, clearing) the key agreement certificate of SIM
    /// `iccid`: put it in the batch after [`Store::register_card`], which fails the whole
    /// batch when the SIM is another operator's.
    pub fn set_card_certificate(iccid: &str, cert: Option<Vec<u8>>, now: i64) -> Stmt {
        match cert {
            Some(c) => Stmt::one(
                "INSERT INTO card_certs (iccid, cert, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (iccid) DO UPDATE SET cert = $2, updated_at = $3",
                vec![iccid.into(), c.into(), now.into()],
            ),
            None => Stmt::any(
                "DELETE FROM card_certs WHERE iccid = $1",
                vec![iccid.into()],
            ),
        }
    }

    /// The key agreement certificate registered for SIM `iccid`.
    pub async fn card_certificate(&self, iccid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self
            .query(
                "SELECT cert FROM card_certs WHERE iccid = $1",
                vec![iccid.into()],
            )
            .await?;
        Ok(rows.first().map(|r| r[0].blob()))
    }
}
