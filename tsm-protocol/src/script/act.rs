//! Acting on the goals a probe found unmet, judging the answers (postconditions, the key
//! proof), and re-opening after a refusal.

use crate::error::{ErrorReport, Layer};
use crate::receipt::{CertKey, StepRecord, key_proof_message};
use crate::relay::{AgentCmd, BatchResult};
use card_wire::apdu::Command;
use card_wire::gp::{self, RegistryEntry};
use card_wire::scp03::{Scp03Error, SecureSession};
use card_wire::sw::StatusWord;

use super::{
    BATCH_ACT, Check, Engine, Expect, Goal, MAX_BATCH, MAX_SESSIONS, Next, Sent, State, batch,
    report, sha,
};

impl Engine {
    /// The commands that bring the card from what the probe found to the plan.
    pub(super) fn actions(
        &self,
        load_files: &[RegistryEntry],
        apps: &[RegistryEntry],
    ) -> Result<Vec<(String, Command, Expect)>, ErrorReport> {
        let bad =
            |e: card_wire::gp::GpError| report(Layer::Tsm, "tsm.script", false, e.to_string());
        let mut q = Vec::new();
        for goal in &self.plan.goals {
            match goal {
                Goal::LoadFile { package, modules } => {
                    if load_files.iter().any(|e| &e.aid == package) {
                        continue;
                    }
                    let file = gp::sim_load_file(package, modules);
                    let hash = gp::load_file_hash(&file).map_err(bad)?;
                    q.push((
                        format!("install-for-load:{}", hex::encode_upper(package)),
                        gp::install_for_load(package, &[], &hash).map_err(bad)?,
                        Expect::Success,
                    ));
                    for (i, c) in gp::load_blocks(&file).map_err(bad)?.into_iter().enumerate() {
                        q.push((format!("load:{i}"), c, Expect::Success));
                    }
                }
                Goal::Instance(spec) => {
                    if apps.iter().any(|e| e.aid == spec.instance) {
                        continue;
                    }
                    q.push((
                        format!("install:{}", hex::encode_upper(&spec.instance)),
                        gp::install(spec).map_err(bad)?,
                        Expect::Success,
                    ));
                }
                Goal::Personalize {
                    instance,
                    script,
                    check,
                } => {
                    let mut script = script.clone();
                    let last = match check {
                        Check::Success => Expect::Success,
                        Check::KeyProof {
                            key_fid,
                            certificate,
                        } => {
                            let mut v = key_fid.to_be_bytes().to_vec();
                            v.extend_from_slice(&self.plan.op.0);
                            v.extend_from_slice(&self.nonce);
                            script.extend(card_wire::tlv::tlv(card_wire::jpki::ITEM_KEY_PROOF, &v));
                            Expect::Proof {
                                certificate: certificate.clone(),
                            }
                        }
                        Check::Wallet { updates } => Expect::Wallet { updates: *updates },
                        Check::Generated => Expect::Generated,
                    };
                    q.push((
                        format!(
                            "install-for-personalization:{}",
                            hex::encode_upper(instance)
                        ),
                        gp::install_for_personalization(instance).map_err(bad)?,
                        Expect::Success,
                    ));
                    let stores = gp::store_data(&gp::blocks(&script), true).map_err(bad)?;
                    let n = stores.len();
                    for (i, c) in stores.into_iter().enumerate() {
                        let expect = if i + 1 == n {
                            last.clone()
                        } else {
                            Expect::Success
                        };
                        q.push((format!("store-data:{i}"), c, expect));
                    }
                }
                Goal::ReplaceKeys { replace } => {
                    let Some(new) = &self.plan.new_keys else {
                        return Err(report(
                            Layer::Tsm,
                            "tsm.script",
                            false,
                            "no new key set in the plan",
                        ));
                    };
                    if self.current.kvn == new.kvn {
                        continue;
                    }
                    let kdd = self
                        .kdd
                        .ok_or_else(|| report(Layer::Tsm, "tsm.script", false, "no KDD"))?;
                    let keys_err =
                        |e: Scp03Error| report(Layer::Tsm, "tsm.keys", true, e.to_string());
                    let mut new_keys = new.source.for_card(&kdd).map_err(keys_err)?;
                    new_keys.kvn = new.kvn;
                    let dek = self.current.source.for_card(&kdd).map_err(keys_err)?;
                    let mut pad = [0u8; 16];
                    getrandom::fill(&mut pad)
                        .map_err(|e| report(Layer::Tsm, "tsm.random", true, e.to_string()))?;
                    let (cmd, expected) =
                        gp::put_key(dek.dek(), &new_keys, Some(*replace), &pad).map_err(bad)?;
                    q.push((
                        format!("put-key:{:02X}", new.kvn),
                        cmd,
                        Expect::KeyCheck { expected },
                    ));
                }
                Goal::Absent { aid, related } => {
                    let present = apps.iter().chain(load_files).any(|e| &e.aid == aid);
                    if present {
                        q.push((
                            format!("delete:{}", hex::encode_upper(aid)),
                            gp::delete(aid, *related).map_err(bad)?,
                            Expect::Deleted,
                        ));
                    }
                }
                Goal::DomainAbsent { aid } => {
                    if !apps.iter().any(|e| &e.aid == aid) {
                        continue;
                    }
                    let delete = |target: &[u8], related: bool| {
                        gp::delete(target, related).map(|c| {
                            (
                                format!("delete:{}", hex::encode_upper(target)),
                                c,
                                Expect::Deleted,
                            )
                        })
                    };
                    let of_domain = |e: &&RegistryEntry| {
                        e.associated_sd.as_deref() == Some(aid.as_slice()) && &e.aid != aid
                    };
                    // Its applications, then its load files (with any instance left of
                    // them), then the domain: GP refuses a domain that still has content.
                    for e in apps.iter().filter(of_domain) {
                        q.push(delete(&e.aid, false).map_err(bad)?);
                    }
                    for e in load_files.iter().filter(of_domain) {
                        q.push(delete(&e.aid, true).map_err(bad)?);
                    }
                    q.push(delete(aid, false).map_err(bad)?);
                }
            }
        }
        Ok(q)
    }

    /// Sends the next action round (at most [`MAX_BATCH`] commands).
    pub(super) fn act(
        &mut self,
        mut session: SecureSession,
        mut queue: Vec<(String, Command, Expect)>,
    ) -> Next {
        let rest = queue.split_off(queue.len().min(MAX_BATCH));
        let mut sent = Vec::new();
        let mut capdus = Vec::new();
        for (name, cmd, expect) in queue {
            let cmd = match self.here(cmd) {
                Ok(c) => c,
                Err(e) => return Next::Failed(report(Layer::Tsm, "tsm.script", false, e)),
            };
            let h = sha(&cmd);
            let pending = match session.wrap_command_pending(&cmd) {
                Ok((w, p)) => {
                    capdus.push(w.to_bytes());
                    p
                }
                Err(e) => {
                    return Next::Failed(report(Layer::Tsm, "tsm.script", false, e.to_string()));
                }
            };
            sent.push(Sent {
                name,
                plain_sha256: h,
                expect,
                pending: Some(pending),
            });
        }
        self.state = State::Acting {
            session,
            sent,
            queue: rest,
        };
        Next::Order(vec![AgentCmd::Apdus {
            batch_id: BATCH_ACT,
            capdus,
            stop_on_error: true,
        }])
    }

    pub(super) fn acted(
        &mut self,
        mut session: SecureSession,
        sent: Vec<Sent>,
        queue: Vec<(String, Command, Expect)>,
        results: &[BatchResult],
    ) -> Next {
        let answers = match self.unwrap_round(&mut session, &sent, batch(results, BATCH_ACT)) {
            Ok(a) => a,
            Err(next) => return next,
        };
        for (s, resp) in sent.iter().zip(&answers) {
            let ok = match &s.expect {
                Expect::Deleted => {
                    resp.sw.is_success() || resp.sw == StatusWord::REFERENCED_DATA_NOT_FOUND
                }
                _ => resp.sw.is_success(),
            };
            if !ok {
                // Unauthenticated: a hint. Probe again in a new session; what is done stays.
                return self.reopen_after_refusal(s, resp.sw);
            }
            match &s.expect {
                Expect::Proof { certificate } => {
                    let proof = card_wire::tlv::find(
                        &resp.data,
                        card_wire::tlv::Tag(card_wire::jpki::ITEM_KEY_PROOF),
                    )
                    .ok()
                    .flatten()
                    .map(|t| t.value.to_vec());
                    let Some(sig) = proof else {
                        return Next::Failed(report(
                            Layer::Card,
                            "card.no-key-proof",
                            false,
                            "the card did not answer the key proof: is the applet a kagi JPKI applet?",
                        ));
                    };
                    let checked = CertKey::from_certificate(certificate).and_then(|k| {
                        k.verify(&key_proof_message(&self.plan.op, &self.nonce), &sig)
                    });
                    if let Err(e) = checked {
                        return Next::Failed(report(
                            Layer::Card,
                            "card.key-proof",
                            false,
                            format!("the key on the card does not match the certificate: {e}"),
                        ));
                    }
                    self.evidence.key_proof = Some((sig, self.nonce));
                }
                Expect::KeyCheck { expected } if &resp.data != expected => {
                    return Next::Failed(report(
                        Layer::Card,
                        "card.put-key",
                        false,
                        "PUT KEY: the card's key check values differ from the keys sent",
                    ));
                }
                Expect::Generated => {
                    let answer = card_wire::tlv::find(
                        &resp.data,
                        card_wire::tlv::Tag(card_wire::jpki::ITEM_GENERATE_PROVEN),
                    )
                    .ok()
                    .flatten()
                    .map(|t| t.value.to_vec());
                    let Some(answer) = answer else {
                        return Next::Failed(report(
                            Layer::Card,
                            "card.no-generated-key",
                            false,
                            "the applet did not answer the key it generated: is it a kagi JPKI applet with on-card key generation?",
                        ));
                    };
                    self.evidence.generated = Some(answer);
                }
                Expect::Wallet { updates } => match card_wire::wallet::Summary::parse(&resp.data) {
                    Some(w) if w.applied.len() == *updates => self.evidence.wallet = Some(w),
                    _ => {
                        return Next::Failed(report(
                            Layer::Card,
                            "card.wallet",
                            false,
                            "the wallet did not account for every update",
                        ));
                    }
                },
                _ => {}
            }
            self.evidence.steps.push(StepRecord {
                name: s.name.clone(),
                command_sha256: s.plain_sha256,
                sw: resp.sw.0,
            });
        }
        if answers.len() < sent.len() {
            return self.open();
        }
        if !queue.is_empty() {
            return self.act(session, queue);
        }
        if self
            .evidence
            .steps
            .iter()
            .any(|s| s.name.starts_with("delete:"))
        {
            // GET STATUS again (under R-MAC) before the deletions count as done.
            self.confirming = true;
            return self.probe(session, None, Vec::new(), Vec::new(), None);
        }
        self.state = State::Finished;
        Next::Done(Box::new(std::mem::take(&mut self.evidence)))
    }

    /// A refused action: re-open and probe (the refusal may be the relay's invention), until
    /// the sessions run out; then it is reported as the card's refusal.
    fn reopen_after_refusal(&mut self, s: &Sent, sw: StatusWord) -> Next {
        if self.budget >= MAX_SESSIONS {
            return Next::Failed(ErrorReport {
                card_sw: Some(sw.0),
                ..report(
                    Layer::Card,
                    "card.refused",
                    false,
                    format!(
                        "{} was refused with {sw} in {} sessions",
                        s.name, self.evidence.sessions
                    ),
                )
            });
        }
        self.open()
    }
}
