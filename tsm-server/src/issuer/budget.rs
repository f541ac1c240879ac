//! The budget of refused application checks, per SP-TSM: a provider (or whoever holds an
//! SP-TSM's key) must not make the issuer verify bad applications without end.
//!
//! The requests that verify an application — `CheckApplication`, `Issue` and `Certify` —
//! each take one place of their SP-TSM's budget for the current window
//! ([`CheckBudget`]: `refused_checks_per_minute` in `jpki-issuer.toml`, by default
//! [`DEFAULT_REFUSED_CHECKS`] a minute) before anything is verified, by one atomic
//! conditional upsert in the issuer's database (`check_budget`, so several instances on one
//! PostgreSQL share it): it takes the place only while fewer than the budget are taken. The
//! place is given back (one atomic decrement) when the answer is not a refusal — an accepted
//! check, an issuance — or is a refusal worth a retry (the issuer's own trouble, a request in
//! progress); a refused check keeps it. When no place is left, the request is refused with
//! `issuer.check-budget` (retryable, `retry_after_ms` the rest of the window) without being
//! verified, until the window passes. So at most the budget's refusals are verified per
//! window, whatever races; a check in flight holds its place until it is answered, so near
//! the end of a budget a good check racing with bad ones may be turned away (it is
//! retryable).

use super::{Issuer, IssuerError, now_ms};
use kagi_db::{Stmt, StoreError};
use std::time::Duration;
use tsm_protocol::issuer::{IssuerRequest, IssuerResponse};
use tsm_protocol::{ErrorReport, Layer, PartyId};

/// The refused checks an SP-TSM may make per minute unless configured: ten a second, far
/// above what a healthy SP-TSM sends (cards revoked or expired, applications made twice —
/// at 60 sessions a second, one in six refused) and a small share of what the issuer can
/// verify, so an SP-TSM's key cannot keep the issuer busy with bad applications.
pub const DEFAULT_REFUSED_CHECKS: u32 = 600;

/// The `check_budget` table (in the issuer's schema).
pub(super) const DDL: &str = "CREATE TABLE IF NOT EXISTS check_budget (
        sp_tsm TEXT NOT NULL, window_at BIGINT NOT NULL, used BIGINT NOT NULL,
        PRIMARY KEY (sp_tsm, window_at))";

/// How many refused application checks an SP-TSM may make per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckBudget {
    /// Refusals per window (at least 1).
    pub refusals: u32,
    /// The window (at least a second).
    pub window: Duration,
}

impl Default for CheckBudget {
    fn default() -> Self {
        CheckBudget {
            refusals: DEFAULT_REFUSED_CHECKS,
            window: Duration::from_secs(60),
        }
    }
}

impl CheckBudget {
    fn window_ms(&self) -> i64 {
        (self.window.as_millis() as i64).max(1000)
    }
}

/// A place taken in a window.
struct Place {
    window_at: i64,
}

/// Whether an answer keeps its place (a refusal not worth a retry).
fn counts(answer: &IssuerResponse) -> bool {
    matches!(answer, IssuerResponse::Rejected(e) if !e.retryable)
}

impl Issuer {
    /// Answers `req` of `sender`, within its budget of refused checks when `req` verifies an
    /// application.
    pub(super) async fn answer(
        &self,
        sender: &PartyId,
        req: IssuerRequest,
    ) -> Result<IssuerResponse, IssuerError> {
        let budgeted = matches!(
            req,
            IssuerRequest::CheckApplication { .. }
                | IssuerRequest::Issue { .. }
                | IssuerRequest::Certify { .. }
        );
        if !budgeted {
            return self.answer_request(sender, req).await;
        }
        let place = match self.take_place(sender).await? {
            Ok(p) => p,
            Err(refused) => return Ok(refused),
        };
        let answer = self.answer_request(sender, req).await;
        if !answer.as_ref().is_ok_and(counts) {
            self.give_back(sender, &place).await?;
        }
        answer
    }

    /// Takes a place of `sender`'s budget in the current window, or the refusal.
    async fn take_place(
        &self,
        sender: &PartyId,
    ) -> Result<Result<Place, IssuerResponse>, IssuerError> {
        let budget = &self.check_budget;
        let window = budget.window_ms();
        let now = now_ms();
        let window_at = now.div_euclid(window) * window;
        match self
            .db
            .commit(vec![Stmt::one(
                "INSERT INTO check_budget (sp_tsm, window_at, used) VALUES ($1, $2, 1)
                 ON CONFLICT (sp_tsm, window_at) DO UPDATE SET used = check_budget.used + 1
                 WHERE check_budget.used < $3",
                vec![
                    sender.0.clone().into(),
                    window_at.into(),
                    i64::from(budget.refusals.max(1)).into(),
                ],
            )])
            .await
        {
            Ok(()) => Ok(Ok(Place { window_at })),
            Err(StoreError::Conflict(_)) => {
                let rest = (window_at + window - now).clamp(1, i64::from(u32::MAX));
                tracing::warn!(sender = %sender, budget = budget.refusals, "refused-check budget spent");
                let mut report = ErrorReport::new(
                    Layer::Business,
                    "issuer.check-budget",
                    true,
                    format!(
                        "{sender} made {} refused application checks within {} s: retry in {} s, and find out why its applications are refused",
                        budget.refusals.max(1),
                        window / 1000,
                        (rest + 999) / 1000
                    ),
                );
                report.retry_after_ms = Some(rest as u32);
                Ok(Err(IssuerResponse::Rejected(report)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Gives a place back (its request was not refused).
    async fn give_back(&self, sender: &PartyId, place: &Place) -> Result<(), IssuerError> {
        self.db
            .commit(vec![Stmt::any(
                "UPDATE check_budget SET used = used - 1
                 WHERE sp_tsm = $1 AND window_at = $2 AND used > 0",
                vec![sender.0.clone().into(), place.window_at.into()],
            )])
            .await?;
        Ok(())
    }
}

/// Statement forgetting the windows that ended a day before `now`.
pub(super) fn purge(now: i64) -> Stmt {
    Stmt::any(
        "DELETE FROM check_budget WHERE window_at < $1",
        vec![(now - 86_400_000).into()],
    )
}
