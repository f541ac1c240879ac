//! The sealed records themselves: re-wrapping under a new KEK, checking that every record
//! opens, and the sweep of expired sessions and challenges.

use crate::store::Shard;

use super::{Broker, BrokerError, RecordCheck, Result, random};

/// How long a rotation's claim on a record lasts: longer than re-wrapping a batch of
/// [`REKEY_BATCH`] takes, short enough that the records of an instance that died are taken
/// up again soon. A claim is only about sharing the work: a claim that ran out while its
/// owner still works costs a record unwrapped twice, never a record written twice (each
/// re-wrap is conditional on the KEK it was read with).
const REKEY_LEASE_MS: i64 = 10_000;
/// Records claimed (and re-wrapped) at a time.
const REKEY_BATCH: u64 = 100;

impl Broker {
    /// Re-wraps up to `budget` records under `to`, shard by shard; returns how many it
    /// re-wrapped, and how many remain under another KEK (not counting quarantined records: one
    /// that does not open while the key store works is set aside with an audit entry).
    /// Records are claimed first (`rekey_leases`: a conditional upsert), so instances rotating
    /// together split the work instead of unwrapping the same records; each record then
    /// changes in its own statement, only if still under the KEK it was read with: an
    /// interrupted rotation leaves every record whole under one KEK, and any instance
    /// continues it.
    pub async fn rewrap_some(&self, to: &str, budget: u64) -> Result<(u64, u64)> {
        // This call's claims; instances (and calls) rotating together take disjoint records.
        let owner = hex::encode(random::<8>()?.as_ref());
        let mut done = 0u64;
        let mut looked = 0u64;
        for shard in self.shards.all() {
            while looked < budget {
                let now = self.now();
                let batch = shard
                    .credentials_not_under(to, (budget - looked).min(REKEY_BATCH) as i64, now)
                    .await?;
                if batch.is_empty() {
                    break;
                }
                looked += batch.len() as u64;
                let claims = batch
                    .iter()
                    .map(|c| Shard::claim_rekey(c, &owner, now, now + REKEY_LEASE_MS))
                    .collect();
                shard.commit(claims).await?;
                // What was claimed, read again now that the claims are in: a record another
                // instance re-wrapped (and released) before the claim is not work any more.
                let mine = shard.claimed_not_under(&owner, to).await?;
                let t = self.now();
                let mut stmts = Vec::with_capacity(2 * mine.len());
                let mut rewraps = Vec::with_capacity(mine.len());
                let mut failure = None;
                for c in &mine {
                    let aad = crate::store::CredentialRow::aad(&c.card, &c.service, c.version);
                    match self.config.envelope.rewrap_row(&aad, &c.sealed, to) {
                        Ok(new) => {
                            let mut s = Shard::rewrap_stmt(c, &c.sealed.kek, &new);
                            // Changed meanwhile (a new version, another rotation): not counted.
                            s.expect = kagi_db::Expect::Any;
                            rewraps.push(stmts.len());
                            stmts.push(s);
                        }
                        // The key store works, this record does not open: it is set aside
                        // (audited) instead of stopping every sweep at it.
                        Err(e) if self.key_store_works(&c.sealed.kek, to) => {
                            tracing::error!(
                                card = %c.card, service = %c.service, version = c.version,
                                kek = %c.sealed.kek,
                                "a record does not open: quarantined, the rotation goes on ({e})"
                            );
                            stmts.push(Shard::quarantine_stmt(c, t));
                            stmts.push(Shard::audit(
                                &c.card,
                                t,
                                &c.service,
                                "",
                                "kek-rotation",
                                "quarantined: the record does not open under its KEK",
                            ));
                        }
                        Err(e) => {
                            failure = Some(BrokerError::Keys(e));
                            break;
                        }
                    }
                }
                // The claims end with the work (or with the failure, so that a retry at once
                // finds the records free).
                stmts.push(Shard::release_rekeys(&owner));
                let counts = shard.commit_counted(stmts).await?;
                done += rewraps.iter().map(|&i| counts[i]).sum::<u64>();
                if let Some(e) = failure {
                    return Err(e);
                }
            }
        }
        let mut remaining = 0;
        for shard in self.shards.all() {
            remaining += shard.count_not_under(to).await? as u64;
        }
        Ok((done, remaining))
    }

    /// Whether the key store wraps and unwraps a fresh data key under both KEKs: when it
    /// does, a record that does not open is the record's fault, not the key store's (an HSM
    /// that is down must stop the rotation, never quarantine every record).
    fn key_store_works(&self, from: &str, to: &str) -> bool {
        let mut probe = zeroize::Zeroizing::new([0u8; 32]);
        if getrandom::fill(probe.as_mut()).is_err() {
            return false;
        }
        [from, to].iter().all(|kek| {
            self.config
                .envelope
                .wrap_dek(kek, probe.as_ref())
                .and_then(|w| self.config.envelope.unwrap_dek(kek, &w))
                .is_ok_and(|d| d.as_slice() == probe.as_ref())
        })
    }

    /// Opens every stored credential (an integrity check: after a rotation, a restore, or
    /// with a suspect key store). The secrets are zeroized as soon as each is opened.
    pub async fn verify_records(&self) -> Result<RecordCheck> {
        let mut check = RecordCheck::default();
        for shard in self.shards.all() {
            let mut after = (String::new(), String::new(), 0i64);
            loop {
                let page = shard.credentials_after(&after, 1000).await?;
                let Some(last) = page.last() else { break };
                after = (last.card.clone(), last.service.clone(), last.version);
                for c in &page {
                    check.records += 1;
                    *check.by_kek.entry(c.sealed.kek.clone()).or_default() += 1;
                    let aad = crate::store::CredentialRow::aad(&c.card, &c.service, c.version);
                    match self.config.envelope.check(&aad, &c.sealed) {
                        Ok(()) => check.opened += 1,
                        Err(_) => check.failed.push(format!(
                            "{} / {} v{} (under {})",
                            c.card, c.service, c.version, c.sealed.kek
                        )),
                    }
                }
            }
        }
        Ok(check)
    }

    /// Background work: continues a KEK rotation, forgets expired sessions and nonces.
    pub async fn sweep(&self) -> Result<u64> {
        let kek = self.current_kek().await?;
        let (n, _) = self.rewrap_some(&kek, 5_000).await?;
        for s in self.shards.all() {
            s.purge(self.now() / 1000).await?;
            s.purge_back_channel(self.now()).await?;
        }
        Ok(n)
    }
}
