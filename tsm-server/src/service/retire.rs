//! The MNO-TSM deletes a provider's domain on the old SIM after a transfer (issue #16's
//! lifecycle, on the card).
//!
//! When the MNO-TSM accepts a [`ControlRequest::DeleteProviderDomain`] about an active SIM
//! whose record names that domain (`domain_delete`), the same transaction queues an operation
//! of kind `retire-domain` for the SIM, with a device ticket. The operator asks for that ticket
//! (`kagi tsm mno retire-ticket --iccid OLD --out FILE`: a signed
//! [`ControlRequest::RetireTicket`]) and hands it to the subscriber, whose phone runs
//! `kagi relay --tsm MNO-TSM --ticket-file FILE` with the old SIM. The ticket alone opens the
//! session (as a `prepare-sim` one: it reached the phone only through the operator). The
//! session opens the issuer domain with the SIM's issuer-domain keys (SCP03), lists the
//! card's registry under R-MAC and deletes the provider's domain with what is associated with
//! it ([`Goal::DomainAbsent`]: its applications — the JPKI instance — then its load files,
//! then the domain: GP Card Specification 11.2 refuses to delete a domain that still has
//! content), GET STATUS again to confirm it is gone, and audits `domain-deleted-on-card`
//! under `sim:ICCID`.
//!
//! - A SIM reported lost (or replaced) never gets the operation nor a ticket, and a ticket
//!   issued before the loss opens nothing (nothing can reach that SIM).
//! - The operation expires like the other device tickets, after [`RETIRE_VALID_MS`]; the
//!   operator's next `retire-ticket` replaces an expired or used ticket by a fresh
//!   operation for the same domain (a session on a SIM whose domain is already gone ends
//!   completed, deleting nothing). A used ticket is refused.
//! - While the operation is live, a new preparation of the SIM for the provider (the
//!   credential moving back) is refused as `business.in-progress`: the old domain, holding
//!   the provider's keys, must go first. Once a later preparation made the domain again (the
//!   SIM's record names it), no retire ticket is given and no retire session deletes it.

use crate::store::ops::{CardRow, Created, OpData, OpRow};
use crate::store::{Stmt, Store, StoreError};
use card_wire::scp03::CardKeys;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tsm_protocol::access;
use tsm_protocol::control::{ControlRequest, ControlResponse, OpState};
use tsm_protocol::script::{Goal, Plan};
use tsm_protocol::{ErrorReport, Layer, MsgId, Nonce, OpId, PartyId};

use super::{NewOp, Result, Secrets, Tsm, err, now, unknown_card};

/// How long a retire operation (and its device ticket) lives: a week, as long as any
/// device ticket (the subscriber must first get it from the operator).
pub const RETIRE_VALID_MS: i64 = 7 * 86_400_000;

/// The operation kind.
pub(super) const KIND: &str = "retire-domain";

type PlanResult = std::result::Result<(Plan, Arc<dyn CardKeys>, Vec<OpId>), ErrorReport>;

/// An audit event under `sim:ICCID`.
pub(super) fn sim_audit(iccid: &str, at: i64, actor: &str, event: &str, detail: &str) -> Stmt {
    Stmt::any(
        "INSERT INTO audit (op_id, at, actor, event, detail) VALUES ($1, $2, $3, $4, $5)",
        vec![
            format!("sim:{iccid}").into(),
            at.into(),
            actor.into(),
            event.into(),
            detail.into(),
        ],
    )
}

/// The domain a retire operation deletes, from its request.
fn domain_of(req: &ControlRequest) -> Option<(&PartyId, &[u8])> {
    match req {
        ControlRequest::DeleteProviderDomain {
            provider, sd_aid, ..
        } => Some((provider, sd_aid)),
        _ => None,
    }
}

impl Tsm {
    /// A new retire operation for `request` (a `DeleteProviderDomain`) on SIM `iccid`, on
    /// behalf of `party` (the SP-TSM), and its device ticket; plus the statements that
    /// register the ticket, to commit with it.
    pub(super) fn new_retire_op(
        &self,
        party: &str,
        iccid: &str,
        request: ControlRequest,
        request_id: (MsgId, Nonce),
        t: i64,
    ) -> Result<(OpRow, String, Vec<Stmt>)> {
        let NewOp {
            id,
            code,
            ticket,
            proof_nonce,
            sealed_secrets,
        } = self.new_op()?;
        let request_hash = Sha256::digest(tsm_protocol::codec::encode(&request)?).to_vec();
        let op = OpRow {
            id,
            kind: KIND.into(),
            party: party.into(),
            state: OpState::AwaitingDevice,
            iccid: iccid.into(),
            idem_key: None,
            request_hash,
            parent: None,
            created_at: t,
            expires_at: t + RETIRE_VALID_MS,
            updated_at: t,
            version: 0,
            data: OpData {
                request,
                request_id,
                code_hash: access::code_hash(&id, &code),
                attempts_left: 0,
                steps: Vec::new(),
                receipt: None,
                error: None,
                proof_nonce,
                children: Vec::new(),
                sealed_secrets,
                cin: String::new(),
                session: None,
                phase: 0,
            },
        };
        let stmts = vec![
            Store::insert_ticket(&access::ticket_hash(&ticket), &id),
            Store::audit(&id, t, party, "accepted", KIND),
        ];
        Ok((op, ticket.to_string(), stmts))
    }

    /// The device ticket of a live retire operation (from its sealed secrets).
    fn retire_ticket_of(&self, op: &OpRow) -> Option<String> {
        let plain =
            card_wire::state_seal::open(&self.config.state_key, &op.id.0, &op.data.sealed_secrets)
                .ok()?;
        let plain = zeroize::Zeroizing::new(plain);
        tsm_protocol::codec::decode::<Secrets>(&plain)
            .ok()
            .map(|s| s.ticket.clone())
    }

    /// MNO-TSM: the operator `party`'s [`ControlRequest::RetireTicket`] (see the module).
    pub(super) async fn retire_ticket(
        &self,
        party: &PartyId,
        h: &tsm_protocol::signing::Header,
        iccid: &str,
    ) -> Result<ControlResponse> {
        let reject = |code: &str, detail: String| {
            Ok(ControlResponse::Rejected(err(
                Layer::Business,
                code,
                detail,
            )))
        };
        let card: CardRow = match self.store.card(iccid).await? {
            Some(c) if c.mno == party.0 => c,
            _ => return Ok(unknown_card(iccid, party)),
        };
        if card.state != "active" {
            return reject(
                "business.card-not-active",
                format!(
                    "SIM {iccid} is {}: nothing reaches it, so it gets no retire ticket",
                    card.state
                ),
            );
        }
        let Some(mut newest) = self.store.newest_op_on(iccid, KIND).await? else {
            return reject(
                "business.nothing-to-retire",
                format!("no provider domain deletion was accepted for SIM {iccid}"),
            );
        };
        // Prepared for the provider again since: its domain stays.
        if domain_of(&newest.data.request).is_some_and(|(_, sd)| card.sd_aid == sd) {
            return reject(
                "business.nothing-to-retire",
                format!(
                    "SIM {iccid} holds the provider's domain again (prepared anew): nothing to delete"
                ),
            );
        }
        let t = now();
        if !newest.state.is_final()
            && t <= newest.expires_at
            && let Some(ticket) = self.retire_ticket_of(&newest)
        {
            return Ok(ControlResponse::Accepted {
                op: newest.id,
                state: newest.state,
                device_ticket: Some(ticket),
                access_code: None,
                expires_at: newest.expires_at as u64,
            });
        }
        if !newest.state.is_final() {
            // Expired (or its secrets unreadable): it ends before a fresh one is made (one
            // live operation per SIM and party). A concurrent change wins; asked again, the
            // operator gets whatever is live then.
            newest.state = OpState::Expired;
            newest.updated_at = t;
            match self
                .store
                .save_op(
                    &newest,
                    vec![Store::audit(&newest.id, t, "tsm", "expired", "")],
                )
                .await
            {
                Ok(()) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let request = newest.data.request.clone();
        let (op, ticket, mut extra) =
            self.new_retire_op(&newest.party, iccid, request, (h.msg_id, h.nonce), t)?;
        extra.insert(0, Store::require_active_card(iccid));
        extra.push(sim_audit(
            iccid,
            t,
            &party.0,
            "retire-ticket-renewed",
            &format!("operation {} replaces {}", op.id, newest.id),
        ));
        match self.store.create_op(&op, extra).await {
            Ok(Created::New) => {}
            Ok(Created::Existing(_)) | Ok(Created::Busy(_)) => {
                return reject(
                    "business.in-progress",
                    format!(
                        "another operation is live on SIM {iccid}: ask again for its retire ticket once it ends"
                    ),
                );
            }
            // Statement 1: the card check (reported lost meanwhile).
            Err(StoreError::Conflict(1)) => {
                return reject(
                    "business.card-not-active",
                    format!("SIM {iccid} is no longer active: it gets no retire ticket"),
                );
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(op = %op.id, iccid, "retire operation renewed for the operator");
        Ok(ControlResponse::Accepted {
            op: op.id,
            state: op.state,
            device_ticket: Some(ticket),
            access_code: None,
            expires_at: op.expires_at as u64,
        })
    }

    /// MNO-TSM, before a `PrepareSim` of `party` (an SP-TSM) for SIM `iccid`: the refusal
    /// while a retire operation of its is live there — the old domain, with the provider's
    /// keys, must go before the SIM can be prepared anew.
    pub(super) async fn retire_pending(
        &self,
        party: &str,
        iccid: &str,
    ) -> Result<Option<ErrorReport>> {
        let live = self.store.live_ops_on(iccid).await?;
        Ok(live
            .iter()
            .find(|o| o.kind == KIND && o.party == party)
            .map(|o| {
                err(
                    Layer::Business,
                    "business.in-progress",
                    format!(
                        "the provider's old domain on SIM {iccid} awaits its deletion on the card (operation {}): the operator's retire ticket (kagi tsm mno retire-ticket) must run with the SIM first",
                        o.id
                    ),
                )
            }))
    }

    /// MNO-TSM: the plan of a retire operation: the issuer domain opened with the SIM's
    /// issuer-domain keys, the provider's domain and its content absent.
    pub(super) async fn retire_plan(&self, op: &OpRow) -> Result<PlanResult> {
        let Some((_, sd_aid)) = domain_of(&op.data.request) else {
            return Ok(Err(err(Layer::Tsm, "tsm.script", "not a domain deletion")));
        };
        let card = match self.store.card(&op.iccid).await? {
            Some(c) => c,
            None => {
                return Ok(Err(err(
                    Layer::Business,
                    "business.unknown-card",
                    "the SIM is not registered",
                )));
            }
        };
        if card.state != "active" {
            return Ok(Err(err(
                Layer::Business,
                "business.card-not-active",
                format!(
                    "SIM {} is {}: its provider domain is not deleted through it",
                    op.iccid, card.state
                ),
            )));
        }
        if card.sd_aid == sd_aid {
            return Ok(Err(err(
                Layer::Business,
                "business.nothing-to-retire",
                format!(
                    "SIM {} was prepared for the provider again: its domain stays",
                    op.iccid
                ),
            )));
        }
        let Some(mno) = self.config.operators.get(&PartyId(card.mno.clone())) else {
            return Ok(Err(err(
                Layer::Tsm,
                "tsm.keys",
                "no issuer-domain keys of the SIM's operator",
            )));
        };
        let plan = Plan {
            op: op.id,
            sd_aid: mno.isd_aid.clone(),
            kvn: mno.kvn,
            expected_cin: card.cin.clone(),
            goals: vec![Goal::DomainAbsent {
                aid: sd_aid.to_vec(),
            }],
            new_keys: None,
            fallback: None,
        };
        Ok(Ok((plan, mno.keys.clone(), Vec::new())))
    }

    /// MNO-TSM: the audit event of a completed retire operation, `deletions` the DELETE
    /// commands its last session sent.
    pub(super) fn retired_audit(op: &OpRow, deletions: usize, t: i64) -> Option<Stmt> {
        let (provider, sd_aid) = domain_of(&op.data.request)?;
        let detail = if deletions == 0 {
            format!(
                "{provider}'s domain {} was not on the SIM any more",
                hex::encode_upper(sd_aid)
            )
        } else {
            format!(
                "{provider}'s domain {} and its content ({deletions} DELETE commands, confirmed by GET STATUS)",
                hex::encode_upper(sd_aid)
            )
        };
        Some(sim_audit(
            &op.iccid,
            t,
            "tsm",
            "domain-deleted-on-card",
            &detail,
        ))
    }
}
