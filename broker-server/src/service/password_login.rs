//! The lower-assurance login: a holder's id and password, with a time-based backoff per
//! holder and per client instead of a lock an attacker could set off.
//!
//! Every try is claimed before the password is checked, by a compare-and-swap on the
//! holder's and the client's failure counters (one batch on the first shard): concurrent
//! tries never check more passwords than the backoff allows, and a counter never loses an
//! increment. A holder that is unknown, has no password, is revoked or is backing off gets
//! the same answer as a wrong password, after the same work (an Argon2id computation with the
//! parameters of new verifiers), until the password is right. A right password clears the
//! holder's failures and gives the client its try back; a PBKDF2 verifier, or an Argon2id one
//! below the current parameters, is replaced then.

use super::{Broker, BrokerError, refuse};
use crate::store::Shard;
use broker_protocol::api::{PasswordLogin, Session};
use broker_protocol::assertion::Assurance;
use kagi_db::StoreError;
use kagi_signed::password::{self, Verifier};
use zeroize::Zeroizing;

/// How tries are spaced: `free` tries without waiting, then a wait of `base_ms`, doubling at
/// each further failure up to `max_ms`; an entry idle for `forget_after_ms` starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Tries per holder before the first wait.
    pub holder_free: i64,
    /// Tries per client (address) before the first wait (higher: several holders may share
    /// an address).
    pub client_free: i64,
    /// The first wait, milliseconds.
    pub base_ms: i64,
    /// The longest wait, milliseconds.
    pub max_ms: i64,
    /// Failures are forgotten after this long without a try, milliseconds.
    pub forget_after_ms: i64,
}

impl Default for Backoff {
    /// 5 tries per holder, 20 per client, then 1 s doubling up to 15 min; forgotten after a
    /// quiet hour.
    fn default() -> Self {
        Backoff {
            holder_free: 5,
            client_free: 20,
            base_ms: 1_000,
            max_ms: 15 * 60_000,
            forget_after_ms: 3_600_000,
        }
    }
}

impl Backoff {
    /// The wait after the `failures`-th failure, with `free` tries without waiting.
    pub fn wait_ms(&self, failures: i64, free: i64) -> i64 {
        if failures < free {
            0
        } else {
            let doublings = (failures - free).clamp(0, 30) as u32;
            self.base_ms
                .saturating_mul(1i64 << doublings)
                .min(self.max_ms)
        }
    }
}

/// The one answer to every refused password login.
fn refused() -> BrokerError {
    refuse(
        "login.wrong-password",
        "wrong holder id or password, or too many tries: wait a minute and try again",
    )
    .into()
}

/// Rounds a try may lose to concurrent ones before it counts as backing off.
const CLAIM_ROUNDS: usize = 64;

/// How one claim round ended.
enum Claim {
    /// The try is ours.
    Taken,
    /// The holder or the client must wait.
    Wait,
    /// A concurrent try changed a counter first: read again.
    Lost,
}

impl Broker {
    /// Claims a try for `holder` from `client`: `false` if either must wait. A claim that
    /// loses its compare-and-swap to a concurrent try (another holder behind the same address,
    /// or the same holder twice) reads the counters again and tries again: each round one
    /// contender wins, so the rounds are bounded by the tries in flight.
    async fn claim_try(
        &self,
        holder: &str,
        client: Option<&str>,
        t: i64,
    ) -> Result<bool, BrokerError> {
        for _ in 0..CLAIM_ROUNDS {
            match self.claim_try_once(holder, client, t).await? {
                Claim::Taken => return Ok(true),
                Claim::Wait => return Ok(false),
                Claim::Lost => tokio::task::yield_now().await,
            }
        }
        Ok(false)
    }

    async fn claim_try_once(
        &self,
        holder: &str,
        client: Option<&str>,
        t: i64,
    ) -> Result<Claim, BrokerError> {
        let b = self.backoff_policy();
        let shard = self.shards().first();
        let mut batch = Vec::new();
        let mut keys = vec![(format!("holder:{holder}"), b.holder_free)];
        if let Some(c) = client {
            keys.push((format!("client:{c}"), b.client_free));
        }
        for (key, free) in keys {
            let seen = shard.backoff(&key).await?;
            let (failures, next_at) = seen.unwrap_or((0, 0));
            if t < next_at {
                return Ok(Claim::Wait);
            }
            let failures = if t >= next_at.saturating_add(b.forget_after_ms) {
                0
            } else {
                failures
            };
            let n = failures + 1;
            batch.push(Shard::claim_try(
                &key,
                seen.map(|s| s.0),
                n,
                t.saturating_add(b.wait_ms(n, free)),
            ));
        }
        match shard.commit(batch).await {
            Ok(()) => Ok(Claim::Taken),
            Err(StoreError::Conflict(_)) => Ok(Claim::Lost),
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a password computation on the blocking pool, a few at a time (each Argon2id
    /// computation takes tens of MiB).
    async fn hashing<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BrokerError> {
        let _permit = self
            .hash_slots()
            .acquire()
            .await
            .map_err(|e| BrokerError::Password(format!("the broker is stopping: {e}")))?;
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| BrokerError::Password(format!("its task failed: {e}")))
    }

    /// The lower-assurance login, from `client` (its address, for the per-client backoff;
    /// `None` when the server does not know it: then only the holder's backoff counts, never
    /// one bucket shared by every client).
    pub async fn login_password(
        &self,
        l: &PasswordLogin,
        client: Option<&str>,
    ) -> Result<Session, BrokerError> {
        let t = self.now();
        let allowed = self.claim_try(&l.holder, client, t).await?;
        let mut found = None;
        for shard in self.shards().all() {
            if let Some(c) = shard.card_of_holder(&l.holder).await? {
                found = Some((shard, c));
                break;
            }
        }
        let pw = Zeroizing::new(l.password.clone());
        let policy = self.password_policy();
        let verifier = found.as_ref().and_then(|(_, c)| c.password.clone());
        let ok = match (&verifier, allowed) {
            (Some(v), true) => {
                let v = v.clone();
                let pw = pw.clone();
                self.hashing(move || v.matches(&pw)).await?
            }
            _ => {
                let pw = pw.clone();
                self.hashing(move || password::dummy_check(&pw, &policy))
                    .await?;
                false
            }
        };
        let Some((shard, card)) = found else {
            return Err(refused());
        };
        if !ok {
            let outcome = if allowed {
                "login.wrong-password"
            } else {
                "login.backoff"
            };
            shard
                .commit(vec![Shard::audit(
                    &card.card, t, "", "password", "login", outcome,
                )])
                .await?;
            return Err(refused());
        }
        // The right password: the holder's failures are forgotten, the client gets its try
        // back.
        let mut forget = vec![Shard::clear_backoff(&format!("holder:{}", l.holder))];
        if let Some(c) = client {
            forget.push(Shard::refund_try(&format!("client:{c}")));
        }
        self.shards().first().commit(forget).await?;
        if card.state != "active" {
            return Err(refuse("login.revoked", "the card is revoked").into());
        }
        if let Some(old) = verifier.filter(|v| v.needs_upgrade(&policy)) {
            let new = {
                let pw = pw.clone();
                self.hashing(move || password::new_verifier(&pw, &policy.new))
                    .await?
                    .map_err(|e| BrokerError::Password(e.to_string()))?
            };
            shard
                .commit(vec![Shard::upgrade_verifier(&card.card, &old, &new, t)])
                .await?;
            if matches!(old, Verifier::Pbkdf2 { .. }) {
                tracing::info!(card = %card.card, "password verifier upgraded to Argon2id");
            }
        }
        self.open_session(shard, &card.card, Assurance::Password, None)
            .await
    }
}
