//! The start of every session: the secure channel's mutual authentication, the card's
//! identity read under R-MAC, and the probe of what the card already holds.

use crate::error::{ErrorReport, Layer};
use crate::relay::{AgentCmd, BatchResult};
use card_wire::apdu::{Command, Response};
use card_wire::gp::{self, RegistryEntry, StatusScope};
use card_wire::scp03::{HostHandshake, Scp03Error, SecureSession};
use card_wire::sw::StatusWord;

use super::{
    BATCH_IU, BATCH_OPEN, BATCH_PROBE, Engine, Expect, Next, Sent, State, batch, report, sha,
};

impl Engine {
    pub(super) fn authenticated(&mut self, hs: HostHandshake, results: &[BatchResult]) -> Next {
        let opened = batch(results, BATCH_OPEN);
        let select = opened.and_then(|b| b.rapdus.first());
        let iu = batch(results, BATCH_IU).and_then(|b| b.rapdus.first());
        self.channel = opened.and_then(|b| b.channel).unwrap_or(0);
        let (Some(select), Some(iu)) = (select, iu) else {
            return self.open();
        };
        let select = match Response::parse(select) {
            Ok(r) => r,
            Err(_) => return self.open(),
        };
        if !select.sw.is_success() {
            return Next::Failed(ErrorReport {
                card_sw: Some(select.sw.0),
                ..report(
                    Layer::Card,
                    "card.no-security-domain",
                    false,
                    format!(
                        "the card has no security domain {} (SELECT answered {})",
                        hex::encode_upper(&self.plan.sd_aid),
                        select.sw
                    ),
                )
            });
        }
        let iu = match Response::parse(iu) {
            Ok(r) => r,
            Err(_) => return self.open(),
        };
        let (ea, session, info) = match hs
            .on_channel(self.channel)
            .complete(&iu, Some(&self.plan.sd_aid))
        {
            Ok(x) => x,
            Err(Scp03Error::InitializeUpdateRefused(StatusWord::REFERENCED_DATA_NOT_FOUND))
                if self
                    .plan
                    .fallback
                    .as_ref()
                    .is_some_and(|f| f.kvn != self.current.kvn) =>
            {
                // The domain has no key set of that version: its keys were replaced already.
                // Nothing was authenticated, so opening with the other key set is no retry.
                if let Some(f) = self.plan.fallback.clone() {
                    self.current = f;
                }
                return self.open();
            }
            Err(e) => {
                let sw = match &e {
                    Scp03Error::InitializeUpdateRefused(sw) => Some(sw.0),
                    _ => None,
                };
                return Next::Failed(ErrorReport {
                    card_sw: sw,
                    ..report(
                        Layer::Card,
                        "card.authentication",
                        false,
                        format!(
                            "mutual authentication failed, not retried (a card locks its keys after a few failures): {e}"
                        ),
                    )
                });
            }
        };
        self.kdd = Some(info.init_update.kdd);
        self.probe(session, Some(ea), Vec::new(), Vec::new(), None)
    }

    /// Sends the probe round: EXTERNAL AUTHENTICATE (first round of a session), the card
    /// image number, and the registry pages still to read (`next_pages`: the scopes that
    /// answered `6310`).
    pub(super) fn probe(
        &mut self,
        mut session: SecureSession,
        ea: Option<Command>,
        load_files: Vec<RegistryEntry>,
        apps: Vec<RegistryEntry>,
        next_pages: Option<Vec<StatusScope>>,
    ) -> Next {
        let tsm = |e: String| Next::Failed(report(Layer::Tsm, "tsm.script", false, e));
        let mut cmds = Vec::new();
        let mut sent = Vec::new();
        if let Some(ea) = ea {
            sent.push(Sent {
                name: "external-authenticate".into(),
                plain_sha256: sha(&ea),
                expect: Expect::Authenticate,
                pending: None,
            });
            cmds.push(ea);
        }
        let first = next_pages.is_none();
        let mut plain: Vec<(&str, Command, Expect)> = Vec::new();
        // The check after deletions runs in a session whose card was identified already.
        if first && !self.confirming {
            match gp::get_cin() {
                Ok(c) => plain.push(("get-data-cin", c, Expect::Cin)),
                Err(e) => return tsm(e.to_string()),
            }
        }
        let scopes =
            next_pages.unwrap_or_else(|| vec![StatusScope::LoadFiles, StatusScope::Applications]);
        for scope in scopes {
            match gp::get_status(scope, true, !first) {
                Ok(c) => plain.push(("get-status", c, Expect::Status { scope })),
                Err(e) => return tsm(e.to_string()),
            }
        }
        for (name, cmd, expect) in plain {
            let cmd = match self.here(cmd) {
                Ok(c) => c,
                Err(e) => return tsm(e),
            };
            let h = sha(&cmd);
            let pending = match session.wrap_command_pending(&cmd) {
                Ok((w, p)) => {
                    cmds.push(w);
                    p
                }
                Err(e) => return tsm(e.to_string()),
            };
            sent.push(Sent {
                name: name.into(),
                plain_sha256: h,
                expect,
                pending: Some(pending),
            });
        }
        self.state = State::Probing {
            session,
            sent,
            load_files,
            apps,
        };
        // Reads change nothing: an empty registry (`6A88`) must not stop the round.
        Next::Order(vec![AgentCmd::Apdus {
            batch_id: BATCH_PROBE,
            capdus: cmds.iter().map(|c| c.to_bytes()).collect(),
            stop_on_error: false,
        }])
    }

    /// Unwraps the answers of a round in order. `Ok(answers)` when every command was answered
    /// and every answer verified; `Err(next)` says what to do instead.
    pub(super) fn unwrap_round(
        &mut self,
        session: &mut SecureSession,
        sent: &[Sent],
        result: Option<&BatchResult>,
    ) -> Result<Vec<Response>, Next> {
        let Some(result) = result else {
            return Err(self.open());
        };
        let mut answers = Vec::new();
        for (s, raw) in sent.iter().zip(&result.rapdus) {
            let Ok(resp) = Response::parse(raw) else {
                return Err(self.open());
            };
            let resp = match s.expect {
                Expect::Authenticate => {
                    if !resp.sw.is_success() {
                        // The card refused our host cryptogram: a fact only if it is one, but
                        // never worth a retry either way.
                        return Err(Next::Failed(ErrorReport {
                            card_sw: Some(resp.sw.0),
                            ..report(
                                Layer::Card,
                                "card.authentication",
                                false,
                                format!("EXTERNAL AUTHENTICATE answered {}: not retried", resp.sw),
                            )
                        }));
                    }
                    resp
                }
                _ => match s
                    .pending
                    .as_ref()
                    .map(|p| session.unwrap_response_for(p, &resp))
                {
                    Some(Ok(r)) => r,
                    // An R-MAC that does not verify: the relay altered the answer, or it is
                    // not from this session. Probe again in a new one.
                    _ => return Err(self.open()),
                },
            };
            answers.push(resp);
        }
        Ok(answers)
    }

    pub(super) fn probed(
        &mut self,
        mut session: SecureSession,
        sent: Vec<Sent>,
        mut load_files: Vec<RegistryEntry>,
        mut apps: Vec<RegistryEntry>,
        results: &[BatchResult],
    ) -> Next {
        let answers = match self.unwrap_round(&mut session, &sent, batch(results, BATCH_PROBE)) {
            Ok(a) => a,
            Err(next) => return next,
        };
        let mut more = Vec::new();
        for (s, resp) in sent.iter().zip(&answers) {
            match &s.expect {
                Expect::Authenticate => {}
                Expect::Cin => {
                    let cin = gp::parse_cin(&resp.data);
                    if !resp.sw.is_success() || !cin.eq_ignore_ascii_case(&self.plan.expected_cin) {
                        return Next::Failed(report(
                            Layer::Card,
                            "card.identity",
                            false,
                            format!(
                                "the card is {cin}, not the card {} the operation is for",
                                self.plan.expected_cin
                            ),
                        ));
                    }
                    self.evidence.cin = cin;
                }
                Expect::Status { scope } => match resp.sw {
                    StatusWord::SUCCESS | StatusWord::MORE_DATA_AVAILABLE => {
                        let page = match gp::parse_status(*scope, true, &resp.data) {
                            Ok(p) => p,
                            Err(e) => {
                                return Next::Failed(report(
                                    Layer::Card,
                                    "card.malformed",
                                    false,
                                    format!("GET STATUS: {e}"),
                                ));
                            }
                        };
                        match scope {
                            StatusScope::LoadFiles => load_files.extend(page),
                            _ => apps.extend(page),
                        }
                        if resp.sw == StatusWord::MORE_DATA_AVAILABLE {
                            more.push(*scope);
                        }
                    }
                    StatusWord::REFERENCED_DATA_NOT_FOUND => {}
                    // An unauthenticated refusal of a read: probe again in a new session.
                    _ => return self.open(),
                },
                _ => {}
            }
        }
        if answers.len() < sent.len() {
            return self.open();
        }
        if !more.is_empty() {
            return self.probe(session, None, load_files, apps, Some(more));
        }
        let queue = match self.actions(&load_files, &apps) {
            Ok(q) => q,
            Err(e) => return Next::Failed(e),
        };
        let confirming = std::mem::take(&mut self.confirming);
        if confirming && queue.iter().any(|(_, _, e)| matches!(e, Expect::Deleted)) {
            // Something deleted is still listed (a DELETE's unauthenticated "not found" was
            // not the card's): a new session probes and deletes again, within the budget.
            return self.open();
        }
        // After the deletions' check, the rest of the plan was done in this session already.
        if queue.is_empty() || confirming {
            self.state = State::Finished;
            return Next::Done(Box::new(std::mem::take(&mut self.evidence)));
        }
        self.act(session, queue)
    }
}
