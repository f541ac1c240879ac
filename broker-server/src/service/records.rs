//! The sealed records themselves: re-wrapping under a new KEK (and converting records of the
//! data-key form to the in-HSM form), checking that every record opens, and the sweep of
//! expired sessions and challenges.

use crate::store::Shard;
use broker_protocol::api::Method;
use broker_protocol::envelope::KeyKind;

use super::{Broker, BrokerError, RecordCheck, Result, random};

/// How long a rotation's claim on a record lasts: longer than re-wrapping a batch of
/// [`REKEY_BATCH`] takes, short enough that the records of an instance that died are taken
/// up again soon. A claim is only about sharing the work: a claim that ran out while its
/// owner still works costs a record unwrapped twice, never a record written twice (each
/// re-wrap is conditional on the KEK it was read with).
const REKEY_LEASE_MS: i64 = 10_000;
/// Records claimed (and re-wrapped) at a time.
const REKEY_BATCH: u64 = 100;

/// What a pass of a KEK rotation did ([`Broker::rotate_some`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    /// Records re-wrapped under the new KEK, their form unchanged.
    pub rewrapped: u64,
    /// Records of the data-key form converted to the in-HSM form (their credential taken
    /// into the HSM, used only there from then on).
    pub converted: u64,
    /// Records the rotation still has to do (not counting quarantined ones).
    pub remaining: u64,
}

impl Broker {
    /// [`Broker::rotate_some`], as (records re-wrapped or converted, records remaining).
    pub async fn rewrap_some(&self, to: &str, budget: u64) -> Result<(u64, u64)> {
        let r = self.rotate_some(to, budget).await?;
        Ok((r.rewrapped + r.converted, r.remaining))
    }

    /// Moves up to `budget` records under `to`, shard by shard: re-wraps them, and, when the
    /// key store keeps credentials inside under `to`, converts records of the older data-key
    /// form (also those already under `to`) to the in-HSM form. Records that remain are
    /// counted without quarantined ones (a record that does not open while the key store
    /// works is set aside with an audit entry).
    /// Records are claimed first (`rekey_leases`: a conditional upsert), so instances rotating
    /// together split the work instead of unwrapping the same records; each record then
    /// changes in its own statement, only if still as it was read (KEK and wrapped key): an
    /// interrupted rotation leaves every record whole, and any instance continues it.
    pub async fn rotate_some(&self, to: &str, budget: u64) -> Result<Rotated> {
        let convert = self
            .config
            .envelope
            .converts_to(to)
            .map_err(BrokerError::Keys)?;
        // This call's claims; instances (and calls) rotating together take disjoint records.
        let owner = hex::encode(random::<8>()?.as_ref());
        let mut out = Rotated::default();
        let mut looked = 0u64;
        for shard in self.shards.all() {
            let mut kinds = std::collections::HashMap::new();
            while looked < budget {
                let now = self.now();
                let batch = shard
                    .rotation_work(to, convert, (budget - looked).min(REKEY_BATCH) as i64, now)
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
                let mine = shard.claimed_not_under(&owner, to, convert).await?;
                let t = self.now();
                let mut stmts = Vec::with_capacity(2 * mine.len());
                let mut rewraps = Vec::with_capacity(mine.len());
                let mut conversions = Vec::new();
                let mut failure = None;
                for c in &mine {
                    let aad = crate::store::CredentialRow::aad(&c.card, &c.service, c.version);
                    let kind = if convert && c.sealed.in_store_kind().is_none() {
                        self.kind_of(shard, &mut kinds, &c.service).await?
                    } else {
                        None
                    };
                    let moved = match kind {
                        Some(k) => self
                            .config
                            .envelope
                            .convert_row(&aad, &c.sealed, to, k)
                            .map(|r| r.map(|r| (r, true))),
                        None => Ok(None),
                    };
                    let moved = match moved {
                        Ok(Some(m)) => Ok(m),
                        Ok(None) => self
                            .config
                            .envelope
                            .rewrap_row(&aad, &c.sealed, to)
                            .map(|r| (r, false)),
                        Err(e) => Err(e),
                    };
                    match moved {
                        Ok((new, converted)) => {
                            let mut s = Shard::rewrap_stmt(c, &c.sealed.kek, &new);
                            // Changed meanwhile (a new version, another rotation): not counted.
                            s.expect = kagi_db::Expect::Any;
                            if converted {
                                conversions.push(stmts.len());
                            } else {
                                rewraps.push(stmts.len());
                            }
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
                out.rewrapped += rewraps.iter().map(|&i| counts[i]).sum::<u64>();
                out.converted += conversions.iter().map(|&i| counts[i]).sum::<u64>();
                if let Some(e) = failure {
                    return Err(e);
                }
            }
        }
        for shard in self.shards.all() {
            out.remaining += shard.count_rotation_work(to, convert).await? as u64;
        }
        if out.converted > 0 {
            tracing::info!(
                converted = out.converted,
                kek = %to,
                "records of the data-key form converted to the in-HSM form"
            );
        }
        Ok(out)
    }

    /// The kind of credential a service's records hold (`None`: an assertion service, or a
    /// service that is gone), looked up once per shard and rotation pass.
    async fn kind_of(
        &self,
        shard: &Shard,
        known: &mut std::collections::HashMap<String, Option<KeyKind>>,
        service: &str,
    ) -> Result<Option<KeyKind>> {
        if let Some(k) = known.get(service) {
            return Ok(*k);
        }
        let kind = shard.service(service).await?.and_then(|p| match p.method {
            Method::Mac => Some(KeyKind::Aes128),
            Method::SignP256 => Some(KeyKind::P256),
            Method::SignRsa => Some(KeyKind::Rsa2048),
            Method::Assertion => None,
        });
        known.insert(service.to_string(), kind);
        Ok(kind)
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
