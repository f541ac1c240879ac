//! The delivery mechanics the TSMs' transactional outboxes share — the MNO-TSM's SIM notices
//! to SP-TSMs ([`super::sim_notice`]) and the SP-TSM's domain deletions for MNO-TSMs
//! ([`super::domain_delete`]): a row per message, keyed by three text columns, `state`
//! `due`/`done`, `tries`, `next_at`, `last_error`, `updated_at`. One attempt at a time is
//! claimed by a conditional update (a lease of [`LEASE_MS`]); a failure records why and pauses
//! the next attempt ([`pause_after`]: 5 s, doubling, at most 5 minutes).

use crate::store::{Store, StoreError};
use kagi_db::{Stmt, Val};

use super::Result;
use super::mail::pause_after;

/// How long one delivery attempt holds a message before another instance may try.
pub(super) const LEASE_MS: i64 = 120_000;

/// One outbox table's statements ([`outbox!`] makes them from the table and key names).
pub(super) struct Outbox {
    /// Claims a due message: `$1..$3` the key, `$4` now, `$5` the lease's end.
    pub claim: &'static str,
    /// Marks it delivered: `$4` now.
    pub done: &'static str,
    /// Its attempts so far.
    pub tries: &'static str,
    /// Records a failed attempt: `$4` why, `$5` the next attempt.
    pub failed: &'static str,
}

/// The [`Outbox`] of table `$table` keyed by columns `$k1`, `$k2`, `$k3`.
macro_rules! outbox {
    ($table:literal, $k1:literal, $k2:literal, $k3:literal) => {
        $crate::service::outbox::Outbox {
            claim: concat!(
                "UPDATE ",
                $table,
                " SET tries = tries + 1, next_at = $5, updated_at = $4 WHERE ",
                $k1,
                " = $1 AND ",
                $k2,
                " = $2 AND ",
                $k3,
                " = $3 AND state = 'due' AND next_at <= $4"
            ),
            done: concat!(
                "UPDATE ",
                $table,
                " SET state = 'done', last_error = NULL, updated_at = $4 WHERE ",
                $k1,
                " = $1 AND ",
                $k2,
                " = $2 AND ",
                $k3,
                " = $3 AND state = 'due'"
            ),
            tries: concat!(
                "SELECT tries FROM ",
                $table,
                " WHERE ",
                $k1,
                " = $1 AND ",
                $k2,
                " = $2 AND ",
                $k3,
                " = $3"
            ),
            failed: concat!(
                "UPDATE ",
                $table,
                " SET last_error = $4, next_at = $5 WHERE ",
                $k1,
                " = $1 AND ",
                $k2,
                " = $2 AND ",
                $k3,
                " = $3 AND state = 'due'"
            ),
        }
    };
}
pub(super) use outbox;

fn vals(key: [&str; 3], extra: Vec<Val>) -> Vec<Val> {
    let mut v: Vec<Val> = key.iter().map(|k| Val::from(*k)).collect();
    v.extend(extra);
    v
}

impl Outbox {
    /// Claims message `key` for one attempt at `t`; `false`: not due, or another attempt
    /// holds it.
    pub(super) async fn claim(&self, store: &Store, key: [&str; 3], t: i64) -> Result<bool> {
        match store
            .commit(vec![Stmt::one(
                self.claim,
                vals(key, vec![t.into(), (t + LEASE_MS).into()]),
            )])
            .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The statement marking `key` delivered at `t`.
    pub(super) fn done(&self, key: [&str; 3], t: i64) -> Stmt {
        Stmt::any(self.done, vals(key, vec![t.into()]))
    }

    /// After a failed attempt at `t` for `why`: the statement recording it and the next
    /// attempt, the attempts so far and the pause (ms).
    pub(super) async fn failed(
        &self,
        store: &Store,
        key: [&str; 3],
        why: &str,
        t: i64,
    ) -> Result<(Stmt, i64, i64)> {
        let tries: i64 = store
            .query(self.tries, vals(key, vec![]))
            .await?
            .first()
            .map_or(1, |r| r[0].int());
        let pause = pause_after(tries);
        let stmt = Stmt::any(self.failed, vals(key, vec![why.into(), (t + pause).into()]));
        Ok((stmt, tries, pause))
    }
}
