//! No undelivered phone certificate stays valid (the compensation of seed 004's flow broken
//! after ⑰). The JPKI issuer makes the certificate before the SP-TSM has an operation for it;
//! when the SP-TSM then refuses the application (the SIM is busy or no longer active, the
//! password verifier is weak, …), or the operation ends without delivering it (the MNO-TSM's
//! step failed, the time ran out, the provider cancelled), the SP-TSM asks the issuer to
//! revoke it (`IssuerRequest::Withdraw`), with an audit entry on both sides (`withdrawn`).
//! The intent is recorded first (`store::withdraw`) and retried by the sweeper until the
//! issuer confirms, so an unreachable issuer delays the revocation but does not lose it.

use crate::store::Store;
use crate::store::withdraw::Withdrawal;
use tsm_protocol::issuer::{IssuerRequest, IssuerResponse};

use super::mail::pause_after;
use super::{Result, Tsm, now};

/// How long one attempt holds a withdrawal before another instance may try.
const LEASE_MS: i64 = 120_000;

impl Tsm {
    /// The SP-TSM refused (`why`) an application after the issuer had issued `serial` for
    /// it: withdraw it, unless an operation holds it (a request racing with the same
    /// idempotency key got the same certificate and made the operation).
    pub(super) async fn withdraw_refused(&self, serial: &str, why: &str) -> Result<()> {
        if self.store.serial_in_use(serial).await? {
            return Ok(());
        }
        let reason = format!("refused: {why}");
        self.store
            .commit(vec![Store::withdraw_now(serial, &reason, now())])
            .await?;
        self.run_withdrawal(&Withdrawal {
            serial: serial.into(),
            op_id: String::new(),
            reason,
        })
        .await?;
        Ok(())
    }

    /// One attempt at withdrawal `w`, if nobody else holds it; whether the issuer confirmed.
    pub(super) async fn run_withdrawal(&self, w: &Withdrawal) -> Result<bool> {
        let t = now();
        match self
            .store
            .commit(vec![Store::claim_withdrawal(&w.serial, t, t + LEASE_MS)])
            .await
        {
            Ok(()) => {}
            Err(crate::store::StoreError::Conflict(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let req = IssuerRequest::Withdraw {
            serial: w.serial.clone(),
            reason: w.reason.clone(),
        };
        let answer = self.send_to_issuer(&req).await?;
        let t = now();
        let settled = match &answer {
            Ok(IssuerResponse::Status { revoked })
                if revoked.iter().any(|r| r.serial == w.serial) =>
            {
                Some((
                    "withdrawn",
                    format!("phone {} revoked at the issuer: {}", w.serial, w.reason),
                ))
            }
            Ok(IssuerResponse::Rejected(e)) if e.code == "issuer.unknown-certificate" => Some((
                "withdraw-unknown",
                format!(
                    "phone {}: the issuer knows no such certificate of ours",
                    w.serial
                ),
            )),
            _ => None,
        };
        if let Some((event, detail)) = settled {
            self.store
                .commit(vec![
                    Store::withdrawal_done(&w.serial, t),
                    Store::audit_withdrawal(&w.op_id, t, event, &detail),
                ])
                .await?;
            tracing::info!(serial = %w.serial, reason = %w.reason, event, "undelivered phone certificate withdrawn");
            return Ok(true);
        }
        let why = match answer {
            Ok(IssuerResponse::Rejected(e)) => e.to_string(),
            Ok(_) => "the issuer answered something else".to_string(),
            Err(e) => e.to_string(),
        };
        let tries = self.withdrawal_tries(&w.serial).await?;
        let detail = format!(
            "phone {}: {why} (attempt {tries}; tried again in {} s)",
            w.serial,
            pause_after(tries) / 1000
        );
        self.store
            .commit(vec![
                Store::withdrawal_failed(&w.serial, &why, t + pause_after(tries)),
                Store::audit_withdrawal(&w.op_id, t, "withdraw-failed", &detail),
            ])
            .await?;
        tracing::warn!(serial = %w.serial, error = %why, "the undelivered phone certificate could not be withdrawn yet");
        Ok(false)
    }

    async fn withdrawal_tries(&self, serial: &str) -> Result<i64> {
        Ok(self
            .store
            .query(
                "SELECT tries FROM withdrawals WHERE serial = $1",
                vec![serial.into()],
            )
            .await?
            .first()
            .map_or(1, |r| r[0].int()))
    }

    /// The sweeper's part: settles the watched certificates of ended operations and tries
    /// every due withdrawal; how many the issuer confirmed.
    pub(super) async fn retry_withdrawals(&self) -> Result<usize> {
        if self.config.issuer.is_none() {
            return Ok(0);
        }
        self.store.commit(Store::settle_watched(now())).await?;
        let mut n = 0;
        for w in self.store.due_withdrawals(now()).await? {
            if self.run_withdrawal(&w).await? {
                n += 1;
            }
        }
        Ok(n)
    }
}
