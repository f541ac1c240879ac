//! The access-code mails of an SP-TSM (seed 004 ⑪) as a transactional outbox: the mail is
//! queued in the same transaction that creates the operation (so an operation never exists
//! without its pending mail, nor a mail without its operation), then delivered by whoever
//! claims it first — the request that created it, a replay of that request, or the sweeper
//! retrying a failed send — through a conditional update, so two instances never send the
//! same mail at once. Once sent, or once the operation is over, the recipient's address is
//! blanked: it is not kept longer than the delivery needs. The access code itself is not
//! here: it stays sealed in the operation's record (`sealed_secrets`).

use super::{Stmt, Store, StoreError};
use tsm_protocol::OpId;

/// An operation's access-code mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeMail {
    /// The user's mail address; empty once sent or once the operation is over.
    pub recipient: String,
    /// Delivery attempts so far.
    pub tries: i64,
    /// When it may be tried next (Unix milliseconds; `i64::MAX`: never, a permanent failure).
    pub next_at: i64,
    /// When it was handed over (Unix milliseconds).
    pub sent_at: Option<i64>,
    /// Its `Message-ID`, once handed over.
    pub message_id: Option<String>,
    /// Why the last attempt failed (log-safe: no code).
    pub last_error: Option<String>,
}

impl Store {
    /// Statement queueing the access-code mail of `op` to `recipient` (due at once).
    pub fn queue_code_mail(op: &OpId, recipient: &str, now: i64) -> Stmt {
        Stmt::one(
            "INSERT INTO code_mail (op_id, recipient, tries, next_at) VALUES ($1, $2, 0, $3)",
            vec![op.to_hex().into(), recipient.into(), now.into()],
        )
    }

    /// Statement claiming `op`'s mail for one attempt: only an unsent mail that is due, and
    /// only one claimant (it pushes the next attempt to `lease_until`, so a sender that dies
    /// mid-send is retried after the lease). A conflict when someone else holds it.
    pub fn claim_code_mail(op: &OpId, now: i64, lease_until: i64) -> Stmt {
        Stmt::one(
            "UPDATE code_mail SET tries = tries + 1, next_at = $3
             WHERE op_id = $1 AND sent_at IS NULL AND recipient <> '' AND next_at <= $2",
            vec![op.to_hex().into(), now.into(), lease_until.into()],
        )
    }

    /// Statement recording `op`'s mail as handed over (and forgetting the address).
    pub fn code_mail_sent(op: &OpId, now: i64, message_id: &str) -> Stmt {
        Stmt::one(
            "UPDATE code_mail SET sent_at = $2, message_id = $3, recipient = '', last_error = NULL
             WHERE op_id = $1 AND sent_at IS NULL",
            vec![op.to_hex().into(), now.into(), message_id.into()],
        )
    }

    /// Statement recording a failed attempt: why, and when to try again (`i64::MAX`: never).
    pub fn code_mail_failed(op: &OpId, error: &str, next_at: i64) -> Stmt {
        Stmt::any(
            "UPDATE code_mail SET last_error = $2, next_at = $3 WHERE op_id = $1 AND sent_at IS NULL",
            vec![op.to_hex().into(), error.into(), next_at.into()],
        )
    }

    /// Statement blanking the addresses of unsent mails whose operation is over (nothing
    /// will be sent for them any more).
    pub fn forget_ended_code_mails() -> Stmt {
        Stmt::any(
            "UPDATE code_mail SET recipient = '' WHERE sent_at IS NULL AND recipient <> ''
             AND op_id IN (SELECT id FROM ops WHERE state IN ('completed', 'failed', 'expired', 'cancelled'))",
            vec![],
        )
    }

    /// `op`'s access-code mail, if its code goes by mail.
    pub async fn code_mail(&self, op: &OpId) -> Result<Option<CodeMail>, StoreError> {
        let rows = self
            .query(
                "SELECT recipient, tries, next_at, sent_at, message_id, last_error
                 FROM code_mail WHERE op_id = $1",
                vec![op.to_hex().into()],
            )
            .await?;
        Ok(rows.first().map(|r| CodeMail {
            recipient: r[0].text(),
            tries: r[1].int(),
            next_at: r[2].int(),
            sent_at: match r[3] {
                super::Val::Int(t) => Some(t),
                _ => None,
            },
            message_id: r[4].opt_text(),
            last_error: r[5].opt_text(),
        }))
    }

    /// The operations whose unsent mail is due at `now` and still worth sending (the
    /// operation is live).
    pub async fn due_code_mails(&self, now: i64) -> Result<Vec<OpId>, StoreError> {
        let rows = self
            .query(
                "SELECT m.op_id FROM code_mail m JOIN ops o ON o.id = m.op_id
                 WHERE m.sent_at IS NULL AND m.recipient <> '' AND m.next_at <= $1
                 AND o.state IN ('awaiting-device', 'device-bound', 'running', 'interrupted')
                 ORDER BY m.next_at LIMIT 100",
                vec![now.into()],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| OpId::from_hex(&r[0].text()))
            .collect())
    }
}
