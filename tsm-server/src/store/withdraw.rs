//! An SP-TSM's record of the phone certificates the JPKI issuer made for it (seed 004 ⑰), so
//! that none stays valid undelivered: each is watched while its operation runs (`watch`, in
//! the transaction that creates the operation); when the operation ends without delivering
//! it (failed, expired, cancelled) — or when the SP-TSM refused the application after the
//! issuer had issued — it becomes `due`, and the SP-TSM asks the issuer to revoke it
//! (`IssuerRequest::Withdraw`) until the issuer confirms (`done`); a delivered one is
//! `delivered`. Every change is a conditional update on the row's state, so two instances
//! never both act on one.

use super::{Stmt, Store, StoreError};
use tsm_protocol::OpId;

/// A phone certificate to withdraw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withdrawal {
    /// The phone certificate's serial (upper-case hex).
    pub serial: String,
    /// The operation it was issued for (empty: refused before one existed).
    pub op_id: String,
    /// Why it is withdrawn.
    pub reason: String,
}

impl Store {
    /// Statement watching `serial`, issued for operation `op`.
    pub fn watch_issued(serial: &str, op: &OpId, now: i64) -> Stmt {
        Stmt::one(
            "INSERT INTO withdrawals (serial, op_id, reason, state, tries, next_at, updated_at)
             VALUES ($1, $2, '', 'watch', 0, $3, $3)",
            vec![serial.into(), op.to_hex().into(), now.into()],
        )
    }

    /// Statement making `serial` due for withdrawal at once (refused after the issuer issued
    /// it); nothing if it is recorded already.
    pub fn withdraw_now(serial: &str, reason: &str, now: i64) -> Stmt {
        Stmt::any(
            "INSERT INTO withdrawals (serial, op_id, reason, state, tries, next_at, updated_at)
             VALUES ($1, '', $2, 'due', 0, $3, $3) ON CONFLICT (serial) DO NOTHING",
            vec![serial.into(), reason.into(), now.into()],
        )
    }

    /// Statements making a delivered (or still watched) certificate due for revocation at
    /// the issuer — the SP-TSM revoked its credential (a lost or changed SIM, the holder's
    /// request) — in the transaction of that revocation; one not recorded yet is added. A
    /// revocation already due or done is left as it is.
    pub fn revoke_at_issuer(w: &Withdrawal, now: i64) -> Vec<Stmt> {
        vec![
            Stmt::any(
                "INSERT INTO withdrawals (serial, op_id, reason, state, tries, next_at, updated_at)
                 VALUES ($1, $2, $3, 'due', 0, $4, $4) ON CONFLICT (serial) DO NOTHING",
                vec![
                    w.serial.clone().into(),
                    w.op_id.clone().into(),
                    w.reason.clone().into(),
                    now.into(),
                ],
            ),
            Stmt::any(
                "UPDATE withdrawals SET state = 'due', reason = $2, tries = 0, next_at = $3, updated_at = $3
                 WHERE serial = $1 AND state IN ('watch', 'delivered')",
                vec![w.serial.clone().into(), w.reason.clone().into(), now.into()],
            ),
        ]
    }

    /// Statements settling watched certificates whose operation ended: delivered when it
    /// completed, due (`not-delivered`) when it failed, expired or was cancelled.
    pub fn settle_watched(now: i64) -> Vec<Stmt> {
        vec![
            Stmt::any(
                "UPDATE withdrawals SET state = 'delivered', updated_at = $1
                 WHERE state = 'watch' AND op_id IN (SELECT id FROM ops WHERE state = 'completed')",
                vec![now.into()],
            ),
            Stmt::any(
                "UPDATE withdrawals SET state = 'due', reason = 'not-delivered', next_at = $1, updated_at = $1
                 WHERE state = 'watch'
                 AND op_id IN (SELECT id FROM ops WHERE state IN ('failed', 'expired', 'cancelled'))",
                vec![now.into()],
            ),
        ]
    }

    /// Statement claiming `serial`'s withdrawal for one attempt (due, and nobody else's:
    /// the next attempt moves to `lease_until`).
    pub fn claim_withdrawal(serial: &str, now: i64, lease_until: i64) -> Stmt {
        Stmt::one(
            "UPDATE withdrawals SET tries = tries + 1, next_at = $3, updated_at = $2
             WHERE serial = $1 AND state = 'due' AND next_at <= $2",
            vec![serial.into(), now.into(), lease_until.into()],
        )
    }

    /// Statement recording the issuer's confirmation.
    pub fn withdrawal_done(serial: &str, now: i64) -> Stmt {
        Stmt::one(
            "UPDATE withdrawals SET state = 'done', last_error = NULL, updated_at = $2
             WHERE serial = $1 AND state = 'due'",
            vec![serial.into(), now.into()],
        )
    }

    /// Statement recording a failed attempt and when to try again.
    pub fn withdrawal_failed(serial: &str, error: &str, next_at: i64) -> Stmt {
        Stmt::any(
            "UPDATE withdrawals SET last_error = $2, next_at = $3 WHERE serial = $1 AND state = 'due'",
            vec![serial.into(), error.into(), next_at.into()],
        )
    }

    /// Statement auditing a withdrawal under its operation (or under `-` when it was refused
    /// before one existed).
    pub fn audit_withdrawal(op_id: &str, at: i64, event: &str, detail: &str) -> Stmt {
        Stmt::any(
            "INSERT INTO audit (op_id, at, actor, event, detail) VALUES ($1, $2, 'tsm', $3, $4)",
            vec![
                if op_id.is_empty() { "-" } else { op_id }.into(),
                at.into(),
                event.into(),
                detail.into(),
            ],
        )
    }

    /// The withdrawals due at `now`.
    pub async fn due_withdrawals(&self, now: i64) -> Result<Vec<Withdrawal>, StoreError> {
        let rows = self
            .query(
                "SELECT serial, op_id, reason FROM withdrawals
                 WHERE state = 'due' AND next_at <= $1 ORDER BY next_at LIMIT 100",
                vec![now.into()],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Withdrawal {
                serial: r[0].text(),
                op_id: r[1].text(),
                reason: r[2].text(),
            })
            .collect())
    }

    /// Whether an operation of this SP-TSM holds the certificate `serial` (then it is not an
    /// orphan: a request racing with the same idempotency key got the same one).
    pub async fn serial_in_use(&self, serial: &str) -> Result<bool, StoreError> {
        Ok(!self
            .query(
                "SELECT 1 FROM credentials WHERE serial = $1",
                vec![serial.into()],
            )
            .await?
            .is_empty())
    }
}
