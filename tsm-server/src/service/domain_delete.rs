//! After a transfer, the provider's area on the old SIM goes (issue #16's lifecycle):
//!
//! - **SP-TSM**: in the transaction that supersedes the old credential it queues one
//!   deletion for the MNO-TSM serving the old SIM (`domain_deletions`, a transactional outbox
//!   like the SIM notices'), sends it at once and has the sweeper retry it (5 s, doubling, at
//!   most 5 minutes; one attempt at a time, claimed by a conditional update) until that
//!   MNO-TSM acknowledges — an unreachable MNO-TSM, or an old SIM that is gone, delays the
//!   deletion but never the revocation. Audited under `sim:ICCID`:
//!   `domain-deletion-queued`, `domain-deletion-failed`, `domain-deletion-delivered`.
//! - **MNO-TSM**: a signed [`ControlRequest::DeleteProviderDomain`] from the SP-TSM acting for
//!   the provider (its trust list), about one of its operators' SIMs whose registry names that
//!   provider's domain (or none), drops the domain from the SIM's record (the SIM then takes
//!   that provider's domain anew only through a fresh preparation) and audits
//!   `domain-deleted` under `sim:ICCID`. A repeat is acknowledged again. When the SIM is
//!   active and its record named the domain, the same transaction queues the deletion on the
//!   card itself: a `retire-domain` operation with a device ticket the operator hands to the
//!   subscriber for a relay session with the old SIM under the issuer-domain keys (`retire`).
//!   A lost SIM gets none (nothing reaches it).

use crate::store::ops::Created;
use crate::store::{Stmt, StoreError};
use tsm_protocol::control::{ControlRequest, ControlResponse};
use tsm_protocol::{Layer, PartyId};

use super::outbox::{Outbox, outbox};
use super::retire::sim_audit;
use super::{Result, Tsm, err, now};

/// The `domain_deletions` outbox.
const DELETIONS: Outbox = outbox!("domain_deletions", "mno_tsm", "iccid", "provider");

impl Tsm {
    /// SP-TSM: the statements queueing the deletion of `provider`'s domain on the old SIM
    /// `iccid` at the MNO-TSM serving it (none without one), for the transfer's transaction.
    pub(super) fn queue_domain_deletion(&self, iccid: &str, provider: &str, at: i64) -> Vec<Stmt> {
        let (Ok(mno), Some(p)) = (
            self.mno_for(iccid),
            self.config.providers.get(&PartyId(provider.to_string())),
        ) else {
            return Vec::new();
        };
        vec![
            Stmt::any(
                "INSERT INTO domain_deletions (mno_tsm, iccid, provider, sd_aid, state, tries, next_at, last_error, updated_at)
                 VALUES ($1, $2, $3, $4, 'due', 0, $5, NULL, $5)
                 ON CONFLICT (mno_tsm, iccid, provider) DO UPDATE SET state = 'due', tries = 0,
                 next_at = excluded.next_at, updated_at = excluded.updated_at",
                vec![
                    mno.party.0.clone().into(),
                    iccid.into(),
                    provider.into(),
                    p.sd_aid.clone().into(),
                    at.into(),
                ],
            ),
            sim_audit(
                iccid,
                at,
                provider,
                "domain-deletion-queued",
                &format!("for {}", mno.party),
            ),
        ]
    }

    /// SP-TSM: tries every due deletion (about `iccid` only, if given); how many were
    /// acknowledged.
    pub(super) async fn deliver_domain_deletions(&self, iccid: Option<&str>) -> Result<usize> {
        if self.config.mno.is_empty() {
            return Ok(0);
        }
        let t = now();
        let rows = self
            .store
            .query(
                "SELECT mno_tsm, iccid, provider, sd_aid FROM domain_deletions
                 WHERE state = 'due' AND next_at <= $1 AND (CAST($2 AS TEXT) = '' OR iccid = $2)
                 ORDER BY next_at LIMIT 100",
                vec![t.into(), iccid.unwrap_or("").into()],
            )
            .await?;
        let mut n = 0;
        for r in rows {
            let (mno_tsm, iccid, provider) = (r[0].text(), r[1].text(), r[2].text());
            if self
                .deliver_deletion(&mno_tsm, &iccid, &provider, r[3].blob())
                .await?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn deliver_deletion(
        &self,
        mno_tsm: &str,
        iccid: &str,
        provider: &str,
        sd_aid: Vec<u8>,
    ) -> Result<bool> {
        let key = [mno_tsm, iccid, provider];
        if !DELETIONS.claim(&self.store, key, now()).await? {
            return Ok(false);
        }
        let req = ControlRequest::DeleteProviderDomain {
            iccid: iccid.into(),
            provider: PartyId(provider.into()),
            sd_aid,
        };
        // Only the MNO-TSM serving the SIM is asked (the one it was queued for).
        let answer = match self.mno_for(iccid) {
            Ok(link) if link.party.0 == mno_tsm => {
                match self.send_to_mno(link, &req, None).await? {
                    Ok(ControlResponse::Ok) => Ok(()),
                    Ok(ControlResponse::Rejected(e)) | Err(e) => Err(e.to_string()),
                    Ok(_) => Err("the MNO-TSM answered something else".to_string()),
                }
            }
            _ => Err(format!(
                "{mno_tsm} no longer serves SIM {iccid} in tsm.toml ([[mno_tsm]] iccid_prefixes)"
            )),
        };
        let t = now();
        let me = self.party().0.clone();
        match answer {
            Ok(()) => {
                self.store
                    .commit(vec![
                        DELETIONS.done(key, t),
                        sim_audit(iccid, t, &me, "domain-deletion-delivered", mno_tsm),
                    ])
                    .await?;
                tracing::info!(
                    mno_tsm,
                    iccid,
                    provider,
                    "the old SIM's provider domain deletion acknowledged"
                );
                Ok(true)
            }
            Err(why) => {
                let (failed, tries, pause) = DELETIONS.failed(&self.store, key, &why, t).await?;
                let detail = format!(
                    "{mno_tsm}: {why} (attempt {tries}; tried again in {} s)",
                    pause / 1000
                );
                self.store
                    .commit(vec![
                        failed,
                        sim_audit(iccid, t, &me, "domain-deletion-failed", &detail),
                    ])
                    .await?;
                tracing::warn!(mno_tsm, iccid, error = %why, "the old SIM's provider domain deletion is retried");
                Ok(false)
            }
        }
    }

    /// MNO-TSM: an SP-TSM's `DeleteProviderDomain` (see the module).
    pub(super) async fn delete_domain(
        &self,
        h: &tsm_protocol::signing::Header,
        req: ControlRequest,
    ) -> Result<ControlResponse> {
        let sender = &h.sender;
        let request = req.clone();
        let ControlRequest::DeleteProviderDomain {
            iccid,
            provider,
            sd_aid,
        } = req
        else {
            return Ok(ControlResponse::Rejected(err(
                Layer::Protocol,
                "protocol.unsupported",
                "not a domain deletion",
            )));
        };
        let refuse = |code: &str, detail: String| {
            Ok(ControlResponse::Rejected(err(
                Layer::Business,
                code,
                detail,
            )))
        };
        match self.config.hosted.get(&provider) {
            Some(h) if &h.sp_tsm == sender && h.sd_aid == sd_aid => {}
            _ => {
                return refuse(
                    "business.not-your-provider",
                    format!("{sender} does not act here for {provider}'s domain"),
                );
            }
        }
        let card = match self.store.card(&iccid).await? {
            Some(c) if self.config.operators.contains_key(&PartyId(c.mno.clone())) => c,
            _ => {
                return refuse(
                    "business.unknown-card",
                    format!("SIM {iccid} is not registered with this MNO-TSM"),
                );
            }
        };
        if !card.sd_aid.is_empty() && card.sd_aid != sd_aid {
            return refuse(
                "business.not-the-sims-provider",
                format!(
                    "SIM {iccid} is registered for the provider domain {}, not {}",
                    hex::encode_upper(&card.sd_aid),
                    hex::encode_upper(&sd_aid)
                ),
            );
        }
        let t = now();
        let dropped = vec![
            crate::store::Store::set_card_domain(&iccid, &[], t),
            sim_audit(
                &iccid,
                t,
                &sender.0,
                "domain-deleted",
                &format!(
                    "{provider}'s domain {} (its credential moved to another SIM)",
                    hex::encode_upper(&sd_aid)
                ),
            ),
        ];
        // The domain on record and the SIM reachable: the deletion on the card is queued in
        // the same transaction (`retire`). A repeat finds the record without the domain.
        if card.state == "active" && card.sd_aid == sd_aid {
            let (op, _ticket, mut extra) =
                self.new_retire_op(&sender.0, &iccid, request, (h.msg_id, h.nonce), t)?;
            // Statement 1: the SIM still active; 2: its record still names the domain (a
            // racing repeat queues nothing twice).
            extra.insert(0, crate::store::Store::require_active_card(&iccid));
            extra.insert(
                1,
                Stmt::one(
                    "UPDATE cards SET updated_at = updated_at WHERE iccid = $1 AND sd_aid = $2",
                    vec![iccid.clone().into(), sd_aid.clone().into()],
                ),
            );
            extra.extend(dropped.iter().cloned());
            extra.push(sim_audit(
                &iccid,
                t,
                &sender.0,
                "domain-deletion-on-card-queued",
                &format!("operation {}", op.id),
            ));
            match self.store.create_op(&op, extra).await {
                Ok(Created::New) => {
                    tracing::info!(iccid = %iccid, provider = %provider, op = %op.id, "provider domain dropped from the SIM's record; its deletion on the SIM queued");
                    return Ok(ControlResponse::Ok);
                }
                // Lost meanwhile, or a racing repeat dropped the domain first: as without.
                Err(StoreError::Conflict(1 | 2)) => {}
                // Another operation of the SP-TSM is live on the SIM: the record changes, the
                // card is left as it is (logged for the operator).
                Ok(_) => {
                    tracing::warn!(iccid = %iccid, provider = %provider, "another operation is live on the SIM: its domain deletion on the card is not queued");
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.store.commit(dropped).await?;
        tracing::info!(iccid = %iccid, provider = %provider, sp_tsm = %sender, "provider domain dropped from the SIM's record");
        Ok(ControlResponse::Ok)
    }
}
