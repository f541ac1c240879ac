//! The loss of a phone or a SIM change, from the operator to every provider on the SIM
//! (issue #16's lifecycle; seed 004's MNO-TSM "handles SIM change and loss notices").
//!
//! - **MNO-TSM**: the operator's signed `CardLost` / `SimChanged` (`kagi tsm mno --config
//!   operator.toml card-lost|sim-changed`) marks the SIM and, in the same transaction, queues
//!   one notice for each SP-TSM that had the MNO-TSM prepare the SIM (its `prepare-sim`
//!   operations) — a transactional outbox (`sim_notices`). Each notice is sent at once and
//!   retried by the sweeper (5 s, doubling, at most 5 minutes) until that SP-TSM acknowledges
//!   it: a signed control request from the MNO-TSM to the SP-TSM's `/v1/control` (`url` of
//!   its `[[sp_tsm]]` in `mno-tsm.toml`), a fresh message id each attempt (the SP-TSM refuses
//!   a replayed one). One attempt per notice at a time: it is claimed by a conditional update.
//!   Audited under `sim:ICCID`: `sim-notice-queued`, `sim-notice-delivered`,
//!   `sim-notice-failed`.
//! - **SP-TSM**: a notice signed by the MNO-TSM serving the SIM (the `[[mno_tsm]]` whose
//!   `iccid_prefixes` match it; a party that is no link is refused `business.not-an-operator`,
//!   another link `business.not-your-sim`, audited `sim-notice-refused`) marks its copy of the SIM lost or replaced and revokes every
//!   credential on it (`card-lost`, `superseded`; audited with the MNO-TSM as actor), each
//!   revocation also asked of the JPKI issuer (`withdraw`'s outbox): the phone certificate
//!   goes on the issuer's CRL (`keyCompromise`, `superseded`). A repeated notice changes
//!   nothing and is acknowledged again.

use crate::store::StoreError;
use kagi_db::Stmt;
use std::collections::BTreeMap;
use tsm_protocol::control::{ControlRequest, ControlResponse, RevokeReason};
use tsm_protocol::{Layer, PartyId};

use super::outbox::{Outbox, outbox};
use super::retire::sim_audit;
use super::{Peer, Result, Tsm, err, now};

/// The `sim_notices` outbox.
const NOTICES: Outbox = outbox!("sim_notices", "sp_tsm", "iccid", "kind");

/// An SP-TSM an MNO-TSM sends SIM notices to.
pub struct SpTsmLink {
    /// Its control API's base URL (`http(s)://host:port`).
    pub url: String,
    /// The HTTP client (trusting its TLS certificate).
    pub http: reqwest::Client,
}

/// The SP-TSMs an MNO-TSM notifies, by party.
pub type SpTsmLinks = BTreeMap<PartyId, SpTsmLink>;

/// A queued notice.
#[derive(Debug, Clone)]
struct Notice {
    sp_tsm: String,
    iccid: String,
    kind: String,
    new_iccid: String,
}

/// The audit trail's key for a SIM's notices.
fn audit_key(iccid: &str) -> String {
    format!("sim:{iccid}")
}

/// MNO-TSM: the statements queueing notice `kind` (`lost`, `changed`) about `iccid` for
/// every SP-TSM that had this MNO-TSM prepare it (in the transaction that marks the SIM), and
/// auditing it.
pub(super) fn queue(iccid: &str, kind: &str, new_iccid: &str, actor: &str, at: i64) -> Vec<Stmt> {
    vec![
        Stmt::any(
            "INSERT INTO sim_notices (sp_tsm, iccid, kind, new_iccid, state, tries, next_at, last_error, updated_at)
             SELECT DISTINCT party, CAST($1 AS TEXT), CAST($2 AS TEXT), CAST($3 AS TEXT), 'due', 0,
             CAST($4 AS BIGINT), NULL, CAST($4 AS BIGINT) FROM ops
             WHERE iccid = $1 AND kind = 'prepare-sim'
             ON CONFLICT (sp_tsm, iccid, kind) DO UPDATE SET new_iccid = excluded.new_iccid,
             state = 'due', tries = 0, next_at = excluded.next_at, updated_at = excluded.updated_at",
            vec![iccid.into(), kind.into(), new_iccid.into(), at.into()],
        ),
        Stmt::any(
            "INSERT INTO audit (op_id, at, actor, event, detail)
             SELECT CAST($1 AS TEXT), CAST($2 AS BIGINT), CAST($3 AS TEXT), 'sim-notice-queued',
             CAST($4 AS TEXT) || ' for ' || sp_tsm FROM sim_notices
             WHERE iccid = $5 AND kind = $6 AND updated_at = CAST($2 AS BIGINT)",
            vec![
                audit_key(iccid).into(),
                at.into(),
                actor.into(),
                format!("{kind} {iccid}").into(),
                iccid.into(),
                kind.into(),
            ],
        ),
    ]
}

impl Tsm {
    /// The MNO-TSM's links to the SP-TSMs it notifies of lost and changed SIMs.
    pub fn with_sp_tsm_links(mut self, links: SpTsmLinks) -> Tsm {
        self.sp_tsm_links = links;
        self
    }

    /// MNO-TSM: tries every due notice (about `iccid` only, if given); how many were
    /// acknowledged.
    pub(super) async fn deliver_sim_notices(&self, iccid: Option<&str>) -> Result<usize> {
        if self.config.operators.is_empty() {
            return Ok(0);
        }
        let t = now();
        let rows = self
            .store
            .query(
                "SELECT sp_tsm, iccid, kind, new_iccid FROM sim_notices
                 WHERE state = 'due' AND next_at <= $1 AND (CAST($2 AS TEXT) = '' OR iccid = $2)
                 ORDER BY next_at LIMIT 100",
                vec![t.into(), iccid.unwrap_or("").into()],
            )
            .await?;
        let mut n = 0;
        for r in rows {
            let notice = Notice {
                sp_tsm: r[0].text(),
                iccid: r[1].text(),
                kind: r[2].text(),
                new_iccid: r[3].text(),
            };
            if self.deliver_notice(&notice).await? {
                n += 1;
            }
        }
        Ok(n)
    }

    /// One attempt at `n`, if nobody else holds it; whether the SP-TSM acknowledged it.
    async fn deliver_notice(&self, n: &Notice) -> Result<bool> {
        let key = [n.sp_tsm.as_str(), n.iccid.as_str(), n.kind.as_str()];
        if !NOTICES.claim(&self.store, key, now()).await? {
            return Ok(false);
        }
        let party = PartyId(n.sp_tsm.clone());
        let req = match n.kind.as_str() {
            "changed" => ControlRequest::SimChanged {
                old_iccid: n.iccid.clone(),
                new_iccid: n.new_iccid.clone(),
            },
            _ => ControlRequest::CardLost {
                iccid: n.iccid.clone(),
            },
        };
        let answer = match self.sp_tsm_links.get(&party) {
            None => Err(format!(
                "no url for SP-TSM {party} in mno-tsm.toml ([[sp_tsm]] url): add it"
            )),
            Some(link) => {
                let peer = Peer {
                    party: &party,
                    http: &link.http,
                    url: format!("{}/v1/control", link.url.trim_end_matches('/')),
                    who: format!("the SP-TSM at {}", link.url),
                    unreachable: "tsm.sp-tsm-unreachable",
                    bad_answer: "protocol.sp-tsm-answer",
                };
                match self
                    .exchange::<_, ControlResponse>(peer, &req, None)
                    .await?
                {
                    Ok(ControlResponse::Ok) => Ok(()),
                    Ok(ControlResponse::Rejected(e)) | Err(e) => Err(e.to_string()),
                    Ok(_) => Err("the SP-TSM answered something else".into()),
                }
            }
        };
        let t = now();
        let me = self.party().0.clone();
        let what = format!("{} {} for {}", n.kind, n.iccid, n.sp_tsm);
        match answer {
            Ok(()) => {
                self.store
                    .commit(vec![
                        NOTICES.done(key, t),
                        sim_audit(&n.iccid, t, &me, "sim-notice-delivered", &what),
                    ])
                    .await?;
                tracing::info!(sp_tsm = %n.sp_tsm, iccid = %n.iccid, kind = %n.kind, "SIM notice acknowledged");
                Ok(true)
            }
            Err(why) => {
                let (failed, tries, pause) = NOTICES.failed(&self.store, key, &why, t).await?;
                self.store
                    .commit(vec![
                        failed,
                        sim_audit(
                            &n.iccid,
                            t,
                            &me,
                            "sim-notice-failed",
                            &format!(
                                "{what}: {why} (attempt {tries}; tried again in {} s)",
                                pause / 1000
                            ),
                        ),
                    ])
                    .await?;
                tracing::warn!(sp_tsm = %n.sp_tsm, iccid = %n.iccid, error = %why, "SIM notice not acknowledged yet");
                Ok(false)
            }
        }
    }

    /// SP-TSM: a notice from its MNO-TSM (`party`): the SIM marked, every credential on it
    /// revoked (and asked of the issuer); acknowledged with `Ok`, also when repeated or when
    /// this SP-TSM has nothing on the SIM.
    pub(super) async fn sim_notice(
        &self,
        party: &PartyId,
        req: ControlRequest,
    ) -> Result<ControlResponse> {
        let (iccid, state, replaced_by, reason) = match req {
            ControlRequest::CardLost { iccid } => (iccid, "lost", None, RevokeReason::CardLost),
            ControlRequest::SimChanged {
                old_iccid,
                new_iccid,
            } => (
                old_iccid,
                "replaced",
                Some(new_iccid),
                RevokeReason::Superseded,
            ),
            _ => {
                return Ok(ControlResponse::Rejected(err(
                    Layer::Protocol,
                    "protocol.unsupported",
                    "not a SIM notice",
                )));
            }
        };
        if card_wire::uicc::Iccid::new(&iccid).is_err() {
            return Ok(ControlResponse::Rejected(err(
                Layer::Business,
                "business.bad-card",
                "an ICCID (18-20 digits, Luhn) is needed",
            )));
        }
        let t = now();
        // Only the MNO-TSM serving the SIM speaks for it: another operator's word about it is
        // refused (and audited), whatever it says.
        match self.mno_for(&iccid) {
            Ok(link) if &link.party == party => {}
            served => {
                let by = served.map_or_else(|e| e.code, |l| l.party.0.clone());
                let detail = format!("{state} {iccid} from {party}, the SIM is served by {by}");
                self.store
                    .commit(vec![sim_audit(
                        &iccid,
                        t,
                        &party.0,
                        "sim-notice-refused",
                        &detail,
                    )])
                    .await?;
                tracing::warn!(iccid = %iccid, mno_tsm = %party, served_by = %by, "SIM notice from an MNO-TSM that does not serve the SIM refused");
                return Ok(ControlResponse::Rejected(err(
                    Layer::Business,
                    "business.not-your-sim",
                    format!(
                        "{party} does not serve SIM {iccid} (its ICCID prefix is linked to {by}): only the SIM's own MNO-TSM may report it {state}"
                    ),
                )));
            }
        }
        if let Some(card) = self.store.card(&iccid).await? {
            // The registry is the MNO-TSM's: its word marks this SP-TSM's copy.
            let mark =
                crate::store::Store::mark_card(&iccid, &card.mno, state, replaced_by.as_deref(), t);
            match self.store.commit(vec![mark]).await {
                Ok(()) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let mut revoked = 0;
        for cred in self.store.credentials_on(&iccid).await? {
            if cred.state != "revoked" {
                self.revoke_row(cred, reason, &party.0).await?;
                revoked += 1;
            }
        }
        tracing::info!(iccid = %iccid, state, revoked, mno_tsm = %party, "SIM notice from the MNO-TSM");
        Ok(ControlResponse::Ok)
    }
}
