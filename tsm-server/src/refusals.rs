//! The audit trail of refused signed messages, shared by the three services of issue #16
//! (the SP-TSM, the MNO-TSM — both [`crate::service::Tsm`] — and the JPKI issuer,
//! [`crate::issuer::Issuer`]): each writes into its own database's `audit` table.
//!
//! A signed message refused at the signed-message layer (a forged signature, a key not
//! trusted for its sender, an unknown sender, an expired message, one issued in the future,
//! a replay, one addressed to another party, one that does not decode; for an answer, also
//! one that is not the answer to the request sent) leaves an audit event:
//!
//! - `request-refused`: a request refused by the service that received it (the MNO-TSM or
//!   the SP-TSM at its control endpoint, the issuer at its endpoint);
//! - `answer-refused`: an answer the SP-TSM got back from the MNO-TSM or the JPKI issuer and
//!   refused.
//!
//! The event's `actor` is the claimed sender when it is a party this service trusts a key for,
//! otherwise [`UNKNOWN_SENDER`] (the name a stranger claims is its own choice: it must not
//! make rows of its own); `at` is the start of the minute; the `detail` reads
//! `CODE xN first msg ID last msg ID claimed NAME` — the refusal's code (the `ErrorReport`
//! code, `protocol.bad-signature`, …), how many such refusals came in that minute, the first
//! and the last message id, and the last claimed sender (only letters, digits and `:._-`,
//! at most [`CLAIMED_MAX`] characters). Never the message's body.
//!
//! Bounded: one event per (actor, event, code) and minute, whatever is flooded. The count is
//! kept in the table `refusals` by one atomic upsert (`ON CONFLICT … DO UPDATE SET n = n + 1`,
//! SQLite and PostgreSQL); the transaction that made the minute's row inserts the audit
//! event, and every refusal rewrites its detail from the counter, in the same transaction.

use kagi_db::{Db, Stmt, StoreError};
use tsm_protocol::signing::{Header, ProtocolError, Trust};

/// The `refusals` table (each service's schema lists it).
pub const DDL_TABLE: &str = "CREATE TABLE IF NOT EXISTS refusals (
        actor TEXT NOT NULL, event TEXT NOT NULL, code TEXT NOT NULL, window_at BIGINT NOT NULL,
        n BIGINT NOT NULL, first_msg TEXT NOT NULL, last_msg TEXT NOT NULL, claimed TEXT NOT NULL,
        PRIMARY KEY (actor, event, code, window_at))";

/// The index finding a minute's audit event.
pub const DDL_INDEX: &str = "CREATE INDEX IF NOT EXISTS audit_refused ON audit (event, actor, at)";

/// One audit event per this many milliseconds (and actor, event, code).
pub const WINDOW_MS: i64 = 60_000;

/// The actor of a refusal whose claimed sender is no party this service trusts.
pub const UNKNOWN_SENDER: &str = "unknown-sender";

/// The longest claimed sender kept (after sanitising).
pub const CLAIMED_MAX: usize = 72;

/// A request refused (the event's name).
pub const REQUEST_REFUSED: &str = "request-refused";

/// An answer refused (the event's name).
pub const ANSWER_REFUSED: &str = "answer-refused";

/// One refused message, as audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// [`REQUEST_REFUSED`] or [`ANSWER_REFUSED`].
    pub event: &'static str,
    /// The trusted party claimed, or [`UNKNOWN_SENDER`].
    pub actor: String,
    /// The refusal's code ([`ProtocolError::code`]).
    pub code: &'static str,
    /// The message id (hex), or `-` when the message did not decode.
    pub msg_id: String,
    /// The sender claimed, sanitised (`-` when the message did not decode).
    pub claimed: String,
}

impl Refusal {
    /// The refusal of a message whose header (unverified) is `claimed` for `error`, at a
    /// service trusting `trust`.
    pub fn new(
        event: &'static str,
        claimed: Option<&Header>,
        error: &ProtocolError,
        trust: &Trust,
    ) -> Refusal {
        let (msg_id, name) = match claimed {
            Some(h) => (h.msg_id.to_hex(), sanitise(&h.sender.0)),
            None => ("-".to_string(), "-".to_string()),
        };
        let trusted = claimed.is_some_and(|h| trust.parties().contains(&&h.sender));
        Refusal {
            event,
            actor: if trusted {
                name.clone()
            } else {
                UNKNOWN_SENDER.into()
            },
            code: error.code(),
            msg_id,
            claimed: name,
        }
    }

    /// The refusal of `bytes` that were to be a signed message (its header read unverified,
    /// if it can be) for `error`.
    pub fn of_bytes(
        event: &'static str,
        bytes: &[u8],
        error: &ProtocolError,
        trust: &Trust,
    ) -> Refusal {
        let header = tsm_protocol::signing::Sealed::from_bytes(bytes)
            .and_then(|s| s.peek_header())
            .ok();
        Refusal::new(event, header.as_ref(), error, trust)
    }

    /// The statements recording it at `now` (Unix ms): `op_column`, the audit table has an
    /// `op_id` column (the TSM's; written `-`).
    pub fn statements(&self, now: i64, op_column: bool) -> Vec<Stmt> {
        let window = now.div_euclid(WINDOW_MS) * WINDOW_MS;
        let key = |more: Vec<kagi_db::Val>| {
            let mut v = vec![
                self.actor.clone().into(),
                self.event.into(),
                self.code.into(),
                window.into(),
            ];
            v.extend(more);
            v
        };
        let count = Stmt::any(
            "INSERT INTO refusals (actor, event, code, window_at, n, first_msg, last_msg, claimed)
             VALUES ($1, $2, $3, $4, 1, $5, $5, $6)
             ON CONFLICT (actor, event, code, window_at) DO UPDATE SET n = refusals.n + 1,
             last_msg = excluded.last_msg, claimed = excluded.claimed",
            key(vec![
                self.msg_id.clone().into(),
                self.claimed.clone().into(),
            ]),
        );
        let first = if op_column {
            Stmt::any(
                "INSERT INTO audit (op_id, at, actor, event, detail)
                 SELECT '-', window_at, actor, event, code FROM refusals
                 WHERE actor = $1 AND event = $2 AND code = $3 AND window_at = $4 AND n = 1",
                key(vec![]),
            )
        } else {
            Stmt::any(
                "INSERT INTO audit (at, actor, event, detail)
                 SELECT window_at, actor, event, code FROM refusals
                 WHERE actor = $1 AND event = $2 AND code = $3 AND window_at = $4 AND n = 1",
                key(vec![]),
            )
        };
        let detail = Stmt::any(
            "UPDATE audit SET detail = (SELECT code || ' x' || CAST(n AS TEXT) || ' first msg '
             || first_msg || ' last msg ' || last_msg || ' claimed ' || claimed FROM refusals
             WHERE actor = $1 AND event = $2 AND code = $3 AND window_at = $4)
             WHERE event = $2 AND actor = $1 AND at = $4 AND (detail = $3 OR detail LIKE $5)",
            key(vec![format!("{} x%", self.code).into()]),
        );
        vec![count, first, detail]
    }

    /// Records it in `db` at `now` (one transaction); a failure is logged, not answered: the
    /// refusal itself goes out either way.
    pub async fn record(&self, db: &Db, now: i64, op_column: bool) {
        tracing::debug!(
            event = self.event,
            actor = %self.actor,
            code = self.code,
            msg = %self.msg_id,
            "refused signed message audited"
        );
        if let Err(e) = db.commit(self.statements(now, op_column)).await {
            let e: StoreError = e;
            tracing::error!(error = %e, code = self.code, "the refusal could not be audited");
        }
    }
}

/// Statement forgetting the counters of minutes that ended an hour before `now` (their
/// audit events stay).
pub fn purge(now: i64) -> Stmt {
    Stmt::any(
        "DELETE FROM refusals WHERE window_at < $1",
        vec![(now - 3_600_000).into()],
    )
}

/// A claimed sender as kept: letters, digits and `:._-` only, at most [`CLAIMED_MAX`].
pub fn sanitise(claimed: &str) -> String {
    let s: String = claimed
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-'))
        .take(CLAIMED_MAX)
        .collect();
    if s.is_empty() { "-".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_name_keeps_only_safe_characters_and_is_cut() {
        assert_eq!(sanitise("sp:bank\n' OR 1=1; --"), "sp:bankOR11--");
        assert_eq!(sanitise(&"a".repeat(500)).len(), CLAIMED_MAX);
        assert_eq!(sanitise("\u{202e}\u{0}"), "-");
    }
}
