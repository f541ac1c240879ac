//! What a session runs on the card: the plan of an operation (its goals, the domain's keys,
//! revoked applets riding along) and the engine that starts it.

use crate::store::Stmt;
use crate::store::ops::OpRow;
use card_wire::jpki;
use card_wire::scp03::CardKeys;
use std::sync::Arc;
use tsm_protocol::control::ControlRequest;
use tsm_protocol::recipes;
use tsm_protocol::relay::ServerMsg;
use tsm_protocol::script::{Engine, Goal, Plan};
use tsm_protocol::{ErrorReport, Layer, OpId, PartyId, Sealed, SessionId};

use super::{Result, Running, Tsm, credential_of, err};

impl Tsm {
    /// The plan of an operation: what its provider's domain on the card must hold, with the
    /// deletions of the provider's revoked applets on that card riding along.
    async fn plan(
        &self,
        op: &mut OpRow,
        relayed: Option<&Sealed>,
    ) -> Result<std::result::Result<(Plan, Arc<dyn CardKeys>, Vec<OpId>), ErrorReport>> {
        if let ControlRequest::CreateSecurityDomain { .. } = &op.data.request {
            return self.domain_plan(op).await;
        }
        if let ControlRequest::PrepareSim { .. } = &op.data.request {
            return self.prepare_plan(op).await;
        }
        if op.kind == super::retire::KIND {
            return self.retire_plan(op).await;
        }
        let party = PartyId(op.party.clone());
        let Some(p) = self.config.providers.get(&party) else {
            return Ok(Err(err(
                Layer::Tsm,
                "tsm.unknown-provider",
                "no keys for the provider",
            )));
        };
        let Some(card) = self.store.card(&op.iccid).await? else {
            return Ok(Err(err(
                Layer::Business,
                "business.unknown-card",
                "the SIM is not registered",
            )));
        };
        // The sealed parts live beside the operation while it runs (`store::sealed`).
        let mut request = op.data.request.clone();
        if let Some(blob) = self.store.sealed(&op.id).await?
            && !crate::store::sealed::restore_sealed(&mut request, &blob)
        {
            return Ok(Err(err(
                Layer::Tsm,
                "tsm.sealed-content",
                "the operation's sealed content does not decode: the provider must send it again",
            )));
        }
        // The request id the provider sealed under: its idempotency key.
        let request_id = op
            .idem_key
            .as_deref()
            .and_then(|k| hex::decode(k).ok())
            .unwrap_or_default();
        let mut goals = match &request {
            // The on-card mode's first session: the key made on the SIM.
            ControlRequest::Apply { card, applet, .. } => {
                match self
                    .challenge_for(op, &card.iccid, &applet.instance)
                    .await?
                {
                    Ok(challenge) => recipes::jpki_generate(&applet.instance, &challenge),
                    Err(e) => return Ok(Err(e)),
                }
            }
            // The same for a transfer's new SIM, in the instance the credential had.
            ControlRequest::ApplyTransfer {
                card, credential, ..
            } => {
                let instance = self.moved_instance(credential).await?;
                match self.challenge_for(op, &card.iccid, &instance).await? {
                    Ok(challenge) => recipes::jpki_generate(&instance, &challenge),
                    Err(e) => return Ok(Err(e)),
                }
            }
            ControlRequest::Issue {
                applet, credential, ..
            } => recipes::jpki_credential(&applet.instance, &request_id, credential),
            ControlRequest::Transfer {
                credential: old,
                new_credential,
                ..
            } => {
                let instance = self
                    .store
                    .credential(old)
                    .await?
                    .map(|c| c.instance)
                    .unwrap_or_else(|| jpki::JPKI_AID.to_vec());
                recipes::jpki_credential(&instance, &request_id, new_credential)
            }
            ControlRequest::ResetPin {
                credential,
                sealed_pin,
                ..
            } => {
                let Some(issue) = self.store.op(credential).await? else {
                    return Ok(Err(err(
                        Layer::Business,
                        "business.unknown-credential",
                        "no such credential",
                    )));
                };
                let Some(bundle) = credential_of(&issue.data.request) else {
                    return Ok(Err(err(
                        Layer::Business,
                        "business.unknown-credential",
                        "no such credential",
                    )));
                };
                let instance = self
                    .store
                    .credential(credential)
                    .await?
                    .map(|c| c.instance)
                    .unwrap_or_else(|| jpki::JPKI_AID.to_vec());
                recipes::pin_reset(&instance, &request_id, sealed_pin, &bundle.certificate)
            }
            ControlRequest::WalletUpdate {
                instance, updates, ..
            } => recipes::wallet(instance, updates),
            _ => Vec::new(),
        };
        // The provider's revoked applets still on this card go now.
        let mut deletions = Vec::new();
        for c in self.store.credentials_on(&op.iccid).await? {
            if c.deletion_pending && c.party == op.party {
                let keep = goals
                    .iter()
                    .any(|g| matches!(g, Goal::Instance(s) if s.instance == c.instance));
                if !keep {
                    goals.insert(
                        0,
                        Goal::Absent {
                            aid: c.instance.clone(),
                            related: false,
                        },
                    );
                }
                deletions.push(c.op_id);
            }
        }
        let plan = Plan {
            op: op.id,
            sd_aid: if card.sd_aid.is_empty() {
                p.sd_aid.clone()
            } else {
                card.sd_aid.clone()
            },
            kvn: p.kvn,
            expected_cin: card.cin.clone(),
            goals,
            new_keys: None,
            fallback: None,
        };
        if self.needs_mno(op) && op.data.phase >= 1 {
            let provider = tsm_protocol::script::KeySet {
                source: p.keys.clone(),
                kvn: p.kvn,
            };
            return Ok(match self.after_mno(op, plan, provider, relayed).await? {
                Ok((plan, keys)) => Ok((plan, keys, deletions)),
                Err(e) => Err(e),
            });
        }
        Ok(Ok((plan, p.keys.clone(), deletions)))
    }

    /// Creating a provider's domain (the MNO-TSM's part): phase 0 installs it through the
    /// issuer domain; phase 1 opens it with its initial keys (a copy of the issuer's) and
    /// replaces them with the provider's — or, when that already happened, finds the
    /// provider's keys in place.
    async fn domain_plan(
        &self,
        op: &OpRow,
    ) -> Result<std::result::Result<(Plan, Arc<dyn CardKeys>, Vec<OpId>), ErrorReport>> {
        let ControlRequest::CreateSecurityDomain {
            sd_aid,
            privileges,
            provider,
            ..
        } = &op.data.request
        else {
            return Ok(Err(err(Layer::Tsm, "tsm.script", "not a domain creation")));
        };
        let (Some(mno), Some(p)) = (
            self.config.operators.get(&PartyId(op.party.clone())),
            self.config.providers.get(provider),
        ) else {
            return Ok(Err(err(
                Layer::Tsm,
                "tsm.keys",
                "no keys for the operator or provider",
            )));
        };
        let Some(card) = self.store.card(&op.iccid).await? else {
            return Ok(Err(err(
                Layer::Business,
                "business.unknown-card",
                "the SIM is not registered",
            )));
        };
        let mut plan = Plan {
            op: op.id,
            sd_aid: mno.isd_aid.clone(),
            kvn: mno.kvn,
            expected_cin: card.cin.clone(),
            goals: vec![recipes::provider_domain(sd_aid, privileges)],
            new_keys: None,
            fallback: None,
        };
        if op.data.phase >= 1 {
            let provider_keys = tsm_protocol::script::KeySet {
                source: p.keys.clone(),
                kvn: p.kvn,
            };
            plan.sd_aid = sd_aid.clone();
            plan.goals = vec![Goal::ReplaceKeys { replace: mno.kvn }];
            plan.new_keys = Some(provider_keys.clone());
            plan.fallback = Some(provider_keys);
        }
        Ok(Ok((plan, mno.keys.clone(), Vec::new())))
    }

    /// A new engine for the operation's plan, and its first order (`seq` + 1).
    pub(super) async fn start_engine(
        &self,
        op: OpRow,
        session: SessionId,
        seq: i64,
        batch: Vec<Stmt>,
    ) -> Result<ServerMsg> {
        self.start_engine_relayed(op, session, seq, batch, None)
            .await
    }

    /// [`Tsm::start_engine`] for a session the relay resumed with `relayed`: the MNO-TSM's
    /// signed receipt for this operation's SIM preparation, as the relay brought it back in
    /// this very request (checked in [`Tsm::after_mno`]; never stored).
    pub(super) async fn start_engine_relayed(
        &self,
        mut op: OpRow,
        session: SessionId,
        seq: i64,
        batch: Vec<Stmt>,
        relayed: Option<&Sealed>,
    ) -> Result<ServerMsg> {
        let (plan, keys, deletions) = match self.plan(&mut op, relayed).await? {
            Ok(p) => p,
            // The issuer's challenge could not be asked for: a later session asks again.
            Err(e) if e.code == "tsm.issuer-unreachable" => {
                return self.issuer_unreachable(op, session, seq, e, batch).await;
            }
            Err(e) => return self.finish_failed(op, session, e, batch).await,
        };
        let mut engine = Engine::new(plan, keys, op.data.proof_nonce);
        let next = engine.open();
        let running = Running {
            op: op.id,
            engine,
            deletions,
        };
        self.advance(op, session, seq, running, next, batch).await
    }
}
