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
//! kept in the table `refusals` by one atomic upsert (`ON CONFLICT … DO UPDATE SET n = n + k`,
//! SQLite and PostgreSQL); the transaction that made the minute's row inserts the audit
//! event, and every write rewrites its detail from the counter, in the same transaction.
//!
//! The writes are bounded too: each service instance counts refusals in memory first
//! ([`Gate`]) and writes a key's count only at its 1st, 2nd, 4th, 8th … refusal of the minute,
//! plus what is held back at each sweep (every few seconds) — a flood of a million forged
//! messages costs about 20 database writes per key and minute, not a million. What is held back
//! and not yet written is lost if the instance stops before its next sweep.

use kagi_db::{Db, Stmt, StoreError};
use std::collections::HashMap;
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

    /// The statements recording it at `now` (Unix ms) as `count` refusals of its key (this
    /// one and those held back before it): `op_column`, the audit table has an `op_id` column
    /// (the TSM's; written `-`).
    pub fn statements(&self, now: i64, count: u64, op_column: bool) -> Vec<Stmt> {
        let window = window_of(now);
        let count = i64::try_from(count).unwrap_or(i64::MAX);
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
        let upsert = Stmt::any(
            "INSERT INTO refusals (actor, event, code, window_at, n, first_msg, last_msg, claimed)
             VALUES ($1, $2, $3, $4, $7, $5, $5, $6)
             ON CONFLICT (actor, event, code, window_at) DO UPDATE SET n = refusals.n + $7,
             last_msg = excluded.last_msg, claimed = excluded.claimed",
            key(vec![
                self.msg_id.clone().into(),
                self.claimed.clone().into(),
                count.into(),
            ]),
        );
        // The row is new exactly when its count is what this write added (no row holds 0).
        let first = if op_column {
            Stmt::any(
                "INSERT INTO audit (op_id, at, actor, event, detail)
                 SELECT '-', window_at, actor, event, code FROM refusals
                 WHERE actor = $1 AND event = $2 AND code = $3 AND window_at = $4 AND n = $5",
                key(vec![count.into()]),
            )
        } else {
            Stmt::any(
                "INSERT INTO audit (at, actor, event, detail)
                 SELECT window_at, actor, event, code FROM refusals
                 WHERE actor = $1 AND event = $2 AND code = $3 AND window_at = $4 AND n = $5",
                key(vec![count.into()]),
            )
        };
        let detail = Stmt::any(
            "UPDATE audit SET detail = (SELECT code || ' x' || CAST(n AS TEXT) || ' first msg '
             || first_msg || ' last msg ' || last_msg || ' claimed ' || claimed FROM refusals
             WHERE actor = $1 AND event = $2 AND code = $3 AND window_at = $4)
             WHERE event = $2 AND actor = $1 AND at = $4 AND (detail = $3 OR detail LIKE $5)",
            key(vec![format!("{} x%", self.code).into()]),
        );
        vec![upsert, first, detail]
    }

    /// Records it in `db` at `now` through `gate`: written at once with what its key held
    /// back when the gate says so, else only counted there (written by [`Gate::flush`]). A
    /// failure is logged, not answered: the refusal itself goes out either way.
    pub async fn record(&self, gate: &Gate, db: &Db, now: i64, op_column: bool) {
        tracing::debug!(
            event = self.event,
            actor = %self.actor,
            code = self.code,
            msg = %self.msg_id,
            "refused signed message audited"
        );
        if let Some(count) = gate.admit(self, now) {
            self.write(db, now, count, op_column).await;
        }
    }

    async fn write(&self, db: &Db, now: i64, count: u64, op_column: bool) {
        if let Err(e) = db.commit(self.statements(now, count, op_column)).await {
            let e: StoreError = e;
            tracing::error!(error = %e, code = self.code, "the refusal could not be audited");
        }
    }
}

fn window_of(now: i64) -> i64 {
    now.div_euclid(WINDOW_MS) * WINDOW_MS
}

/// The in-memory count in front of the table (one per service instance): how many refusals
/// of each key (actor, event, code, minute) this instance saw, and how many of them it has
/// not written yet. Its keys are bounded by the parties a service trusts (strangers are one
/// actor), the two events, the refusal codes and the minutes since the last flush.
#[derive(Debug, Default)]
pub struct Gate {
    held: std::sync::Mutex<HashMap<GateKey, Held>>,
}

type GateKey = (String, &'static str, &'static str, i64);

#[derive(Debug)]
struct Held {
    seen: u64,
    unwritten: u64,
    last: Refusal,
}

impl Gate {
    /// Counts `r` at `now`; `Some(n)`: write now, as `n` refusals (this one and the `n - 1`
    /// held back before it) — at the key's 1st, 2nd, 4th, 8th … refusal this minute.
    pub fn admit(&self, r: &Refusal, now: i64) -> Option<u64> {
        let key = (r.actor.clone(), r.event, r.code, window_of(now));
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let h = held.entry(key).or_insert_with(|| Held {
            seen: 0,
            unwritten: 0,
            last: r.clone(),
        });
        h.seen = h.seen.saturating_add(1);
        h.unwritten = h.unwritten.saturating_add(1);
        h.last = r.clone();
        if h.seen.is_power_of_two() {
            Some(std::mem::take(&mut h.unwritten))
        } else {
            None
        }
    }

    /// Takes what is held back: each key's last refusal, its minute and its unwritten count;
    /// keys of minutes before `now`'s are forgotten.
    pub fn drain(&self, now: i64) -> Vec<(Refusal, i64, u64)> {
        let current = window_of(now);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        held.retain(|(_, _, _, window), h| {
            if h.unwritten > 0 {
                out.push((h.last.clone(), *window, std::mem::take(&mut h.unwritten)));
            }
            *window >= current
        });
        out
    }

    /// Writes what is held back into `db` (the sweep's part; also before a test reads the
    /// trail).
    pub async fn flush(&self, db: &Db, now: i64, op_column: bool) {
        for (r, window, count) in self.drain(now) {
            r.write(db, window, count, op_column).await;
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

    fn refusal(actor: &str, code: &'static str) -> Refusal {
        Refusal {
            event: REQUEST_REFUSED,
            actor: actor.into(),
            code,
            msg_id: "-".into(),
            claimed: actor.into(),
        }
    }

    #[test]
    fn a_flood_is_written_at_powers_of_two_and_the_rest_at_the_flush() {
        let gate = Gate::default();
        let t = 7 * WINDOW_MS + 5;
        let r = refusal(UNKNOWN_SENDER, "protocol.bad-signature");
        let writes: Vec<(usize, u64)> = (1..=1000)
            .filter_map(|i| gate.admit(&r, t).map(|n| (i, n)))
            .collect();
        // 1, 2, 4, … 512: ten writes; each carries what came since the one before.
        assert_eq!(
            writes,
            vec![
                (1, 1),
                (2, 1),
                (4, 2),
                (8, 4),
                (16, 8),
                (32, 16),
                (64, 32),
                (128, 64),
                (256, 128),
                (512, 256)
            ]
        );
        // The other 488 come out at the flush, once; another key keeps its own count.
        let other = refusal("sp:bank", "protocol.replayed");
        assert_eq!(gate.admit(&other, t), Some(1));
        let mut drained = gate.drain(t);
        drained.sort_by_key(|(r, _, _)| r.actor.clone());
        let counts: Vec<(String, i64, u64)> = drained
            .into_iter()
            .map(|(r, w, n)| (r.actor, w, n))
            .collect();
        assert_eq!(
            counts,
            vec![(UNKNOWN_SENDER.to_string(), 7 * WINDOW_MS, 488)]
        );
        assert!(gate.drain(t).is_empty());
        // The next minute starts again at 1; the old minute is forgotten at its drain.
        assert_eq!(gate.admit(&r, t + WINDOW_MS), Some(1));
        assert_eq!(gate.admit(&r, t), None);
        let late = gate.drain(t + WINDOW_MS);
        assert_eq!(late.len(), 1);
        assert_eq!((late[0].1, late[0].2), (7 * WINDOW_MS, 1));
        assert_eq!(
            gate.held.lock().unwrap().len(),
            1,
            "only the current minute stays"
        );
    }

    #[test]
    fn a_claimed_name_keeps_only_safe_characters_and_is_cut() {
        assert_eq!(sanitise("sp:bank\n' OR 1=1; --"), "sp:bankOR11--");
        assert_eq!(sanitise(&"a".repeat(500)).len(), CLAIMED_MAX);
        assert_eq!(sanitise("\u{202e}\u{0}"), "-");
    }
}
