//! The two TSMs of seed 004 talking to each other (⑭⑮).
//!
//! On the **MNO-TSM** (it holds the SIMs' issuer-domain keys): a signed
//! [`ControlRequest::PrepareSim`] from an SP-TSM becomes an operation of kind `prepare-sim`
//! whose relay session, opened with the ticket alone (it reached the phone only through the
//! SP-TSM, which checked the user's access code and password), installs the provider's
//! domain through the issuer domain (phase 0), then in a session on the new domain loads and
//! installs the JPKI applet into it and replaces the domain's inherited issuer keys by
//! **initial keys** made for this operation (phase 1). The initial keys are derived from the
//! MNO-TSM's state key and the operation id (NIST SP 800-108 CMAC KDF, as SCP03's `kdf3`), so
//! nothing about them is stored; they go to the SP-TSM in the signed answer.
//!
//! On the **SP-TSM** (it holds the providers' domain keys only): after the user's access code
//! and password (⑬) an issue asks the MNO-TSM to prepare the SIM (a fresh signed request; the
//! SP-TSM's operation id is the idempotency key) and answers the relay with
//! [`ServerMsg::Continue`]: the relay runs the MNO-TSM's session with its ticket, then resumes
//! here. The SP-TSM's own session then opens the domain with the initial keys, replaces them
//! with the provider's (GP PUT KEY) before anything else, and writes the credential (⑱): from
//! then on the operator's keys open nothing in the provider's domain.

use crate::store::Stmt;
use crate::store::ops::OpRow;
use card_wire::scp03::keys::{KeyPurpose, kdf3};
use card_wire::scp03::{AesKey, CardKeys, Scp03Error, StaticKeys};
use std::sync::Arc;
use tsm_protocol::control::{ControlRequest, ControlResponse, InitialKeys, OpState};
use tsm_protocol::receipt::ExecutionReceipt;
use tsm_protocol::recipes;
use tsm_protocol::relay::{ServerMsg, StopOutcome};
use tsm_protocol::script::{Goal, KeySet, Plan};
use tsm_protocol::signing::Kind;
use tsm_protocol::{ErrorReport, IdempotencyKey, Layer, OpId, PartyId, Sealed, SessionId};

use super::{Peer, Result, Tsm, encode, err, now};
use crate::store::Store;

/// The key version of a new provider domain's initial keys.
pub const INITIAL_KVN: u8 = 0x20;

/// An SP-TSM operation's phase once the MNO-TSM's preparation of its SIM is confirmed (phase
/// 1: the relay was sent to the MNO-TSM).
pub const MNO_CONFIRMED: u8 = 2;

/// The MNO-TSM an SP-TSM asks to prepare SIMs.
pub struct MnoLink {
    /// Its party (its answers are signed with a key in the trust).
    pub party: PartyId,
    /// Its control API's base URL (`http(s)://host:port`).
    pub url: String,
    /// The base URL the phone's relay reaches it at (often the same).
    pub relay_url: String,
    /// The HTTP client (trusting its TLS certificate).
    pub http: reqwest::Client,
    /// The ICCID issuer prefixes of the SIMs it serves (`super::mno_links`); empty: every SIM
    /// (only as the SP-TSM's single link).
    pub iccid_prefixes: Vec<String>,
}

impl MnoLink {
    /// A link to the MNO-TSM `party` at `url` (phones reach it there too), trusting the
    /// system's TLS roots, serving every SIM (set `iccid_prefixes` for one of several).
    pub fn new(party: PartyId, url: &str) -> MnoLink {
        kagi_serve::tls_provider();
        let url = url.trim_end_matches('/').to_string();
        MnoLink {
            party,
            relay_url: url.clone(),
            url,
            http: reqwest::Client::new(),
            iccid_prefixes: Vec::new(),
        }
    }
}

/// One fixed key set, whatever the card (a domain's initial keys).
struct Fixed(StaticKeys);

impl CardKeys for Fixed {
    fn for_card(&self, _kdd: &[u8; 10]) -> std::result::Result<StaticKeys, Scp03Error> {
        Ok(self.0.clone())
    }
}

fn static_keys(k: &InitialKeys) -> std::result::Result<StaticKeys, String> {
    let aes = |b: &[u8; 16]| AesKey::new(b).map_err(|e| e.to_string());
    StaticKeys::new(k.kvn, aes(&k.enc)?, aes(&k.mac)?, aes(&k.dek)?).map_err(|e| e.to_string())
}

type PlanResult = std::result::Result<(Plan, Arc<dyn CardKeys>, Vec<OpId>), ErrorReport>;

impl Tsm {
    /// The initial keys of the domain a `prepare-sim` operation creates.
    pub(super) fn initial_keys(&self, op: &OpId) -> InitialKeys {
        let mut kdd = [0u8; 10];
        kdd.copy_from_slice(&op.0[..10]);
        let part = |p: KeyPurpose| {
            let k = kdf3(&self.config.state_key, p, &kdd);
            let mut b = [0u8; 16];
            b.copy_from_slice(&k.as_bytes()[..16]);
            b
        };
        InitialKeys {
            kvn: INITIAL_KVN,
            enc: part(KeyPurpose::Enc),
            mac: part(KeyPurpose::Mac),
            dek: part(KeyPurpose::Dek),
        }
    }

    /// The MNO-TSM's refusal of a `PrepareSim` it must not act on, or `None`.
    pub(super) fn prepare_refusal(
        &self,
        sender: &PartyId,
        req: &ControlRequest,
    ) -> Option<ErrorReport> {
        let ControlRequest::PrepareSim {
            provider, sd_aid, ..
        } = req
        else {
            return None;
        };
        match self.config.hosted.get(provider) {
            None => Some(err(
                Layer::Business,
                "business.unknown-provider",
                format!(
                    "this MNO-TSM prepares no SIMs for {provider}: its operator must add the provider to its trust list"
                ),
            )),
            Some(h) if &h.sp_tsm != sender => Some(err(
                Layer::Business,
                "business.not-your-provider",
                format!("{sender} does not act for {provider}"),
            )),
            Some(h) if &h.sd_aid != sd_aid => Some(err(
                Layer::Business,
                "business.wrong-domain",
                format!(
                    "{provider}'s domain is {}, not {}",
                    hex::encode_upper(&h.sd_aid),
                    hex::encode_upper(sd_aid)
                ),
            )),
            Some(_) => None,
        }
    }

    /// The MNO-TSM's plan of a `prepare-sim` operation.
    pub(super) async fn prepare_plan(&self, op: &OpRow) -> Result<PlanResult> {
        let ControlRequest::PrepareSim {
            sd_aid,
            privileges,
            instance,
            ..
        } = &op.data.request
        else {
            return Ok(Err(err(Layer::Tsm, "tsm.script", "not a SIM preparation")));
        };
        let Some(card) = self.store.card(&op.iccid).await? else {
            return Ok(Err(err(
                Layer::Business,
                "business.unknown-card",
                "the SIM is not registered",
            )));
        };
        let Some(mno) = self.config.operators.get(&PartyId(card.mno.clone())) else {
            return Ok(Err(err(
                Layer::Tsm,
                "tsm.keys",
                "no issuer-domain keys of the SIM's operator",
            )));
        };
        let initial = match static_keys(&self.initial_keys(&op.id)) {
            Ok(k) => k,
            Err(e) => return Ok(Err(err(Layer::Tsm, "tsm.keys", e))),
        };
        let initial = KeySet {
            source: Arc::new(Fixed(initial)),
            kvn: INITIAL_KVN,
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
            // On the new domain, opened with the issuer keys it inherited: the applet into it,
            // then the inherited keys replaced by the initial ones.
            plan.sd_aid = sd_aid.clone();
            plan.goals = recipes::jpki_applet(instance);
            plan.goals.push(Goal::ReplaceKeys { replace: mno.kvn });
            plan.new_keys = Some(initial.clone());
            plan.fallback = Some(initial);
        }
        Ok(Ok((plan, mno.keys.clone(), Vec::new())))
    }

    /// The MNO-TSM's answer to an accepted (or repeated) `PrepareSim` `req` of the SP-TSM
    /// `sp_tsm`: the initial keys sealed to its reply key (a fresh seal every answer).
    pub(super) fn prepared(
        &self,
        op: &OpId,
        state: OpState,
        ticket: Option<String>,
        expires_at: i64,
        req: &ControlRequest,
        sp_tsm: &str,
    ) -> ControlResponse {
        let ControlRequest::PrepareSim {
            iccid,
            provider,
            sd_aid,
            reply_key,
            ..
        } = req
        else {
            return ControlResponse::Rejected(err(
                Layer::Tsm,
                "tsm.script",
                "not a SIM preparation",
            ));
        };
        let ctx = tsm_protocol::keyseal::Context {
            mno: &self.config.policy.me.0,
            sp_tsm,
            provider: &provider.0,
            iccid,
            sd_aid,
            op: &op.0,
        };
        match tsm_protocol::keyseal::seal(reply_key, &ctx, &self.initial_keys(op)) {
            Ok(sealed_initial_keys) => ControlResponse::Prepared {
                op: *op,
                state,
                device_ticket: ticket,
                sealed_initial_keys,
                expires_at: expires_at as u64,
            },
            Err(e) => {
                ControlResponse::Rejected(err(Layer::Protocol, "protocol.reply-key", e.to_string()))
            }
        }
    }

    /// SP-TSM: the MNO-TSM link serving SIM `iccid` (`super::mno_links`), or the refusal
    /// (`tsm.no-mno` without any link, `business.no-mno-for-sim`).
    pub(super) fn mno_for(&self, iccid: &str) -> std::result::Result<&MnoLink, ErrorReport> {
        if self.config.mno.is_empty() {
            return Err(err(Layer::Tsm, "tsm.no-mno", "no MNO-TSM configured"));
        }
        super::mno_links::serving(&self.config.mno, iccid)
            .ok_or_else(|| super::mno_links::no_link(&self.config.mno, iccid))
    }

    /// SP-TSM: sends `req` to the MNO-TSM `mno` (the one serving the SIM it is about),
    /// signed, with a fresh message id and nonce; its verified answer (signed by `mno`, as
    /// `exchange` checks), or why there is none (`tsm.mno-unreachable` may succeed later).
    pub(super) async fn send_to_mno(
        &self,
        mno: &MnoLink,
        req: &ControlRequest,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<std::result::Result<ControlResponse, ErrorReport>> {
        let peer = Peer {
            party: &mno.party,
            http: &mno.http,
            url: format!("{}/v1/control", mno.url),
            who: format!("the operator's TSM at {}", mno.url),
            unreachable: "tsm.mno-unreachable",
            bad_answer: "protocol.mno-answer",
        };
        self.exchange(peer, req, idempotency_key).await
    }

    /// SP-TSM: asks the MNO-TSM to prepare the SIM of an issue (the same idempotency key
    /// every time: the first call creates the MNO-TSM's operation, the next ones read it).
    async fn ask_mno(&self, op: &OpRow) -> Result<std::result::Result<Asked, ErrorReport>> {
        let instance = match &op.data.request {
            ControlRequest::Issue { applet, .. } | ControlRequest::Apply { applet, .. } => {
                applet.instance.clone()
            }
            // A transfer: the new SIM gets the applet instance the credential had.
            ControlRequest::Transfer { credential, .. }
            | ControlRequest::ApplyTransfer { credential, .. } => {
                self.moved_instance(credential).await?
            }
            _ => return Ok(Err(err(Layer::Tsm, "tsm.script", "not an issue"))),
        };
        let mno = match self.mno_for(&op.iccid) {
            Ok(m) => m,
            Err(e) => return Ok(Err(e)),
        };
        let provider = PartyId(op.party.clone());
        let Some(p) = self.config.providers.get(&provider) else {
            return Ok(Err(err(
                Layer::Tsm,
                "tsm.unknown-provider",
                "no keys for the provider",
            )));
        };
        // The reply key: derived again for every ask of this operation (the same request).
        let reply =
            match tsm_protocol::keyseal::reply_secret(self.config.state_key.as_bytes(), &op.id.0) {
                Ok(k) => k,
                Err(e) => return Ok(Err(err(Layer::Tsm, "tsm.keys", e.to_string()))),
            };
        let req = ControlRequest::PrepareSim {
            iccid: op.iccid.clone(),
            provider: provider.clone(),
            sd_aid: p.sd_aid.clone(),
            privileges: vec![0x80, 0x40, 0x00],
            instance,
            reply_key: tsm_protocol::keyseal::reply_public(&reply),
        };
        let answer = match self
            .send_to_mno(mno, &req, Some(IdempotencyKey(op.id.0)))
            .await?
        {
            Ok(a) => a,
            Err(e) => return Ok(Err(e)),
        };
        match answer {
            ControlResponse::Prepared {
                op: mno_op,
                state,
                device_ticket,
                sealed_initial_keys,
                ..
            } => Ok(Ok(Asked {
                state,
                ticket: device_ticket,
                mno_op,
                sealed: sealed_initial_keys,
            })),
            ControlResponse::Rejected(e) => {
                tracing::warn!(op = %op.id, code = %e.code, "the MNO-TSM refused to prepare the SIM");
                Ok(Err(e))
            }
            other => Ok(Err(err(
                Layer::Protocol,
                "protocol.mno-answer",
                format!("the operator's TSM answered {other:?} to a SIM preparation"),
            ))),
        }
    }

    /// Whether an operation first needs the MNO-TSM (an issue, or a transfer to a new SIM,
    /// on an SP-TSM with MNO-TSMs): the new SIM's provider domain and applet are made there.
    pub(super) fn needs_mno(&self, op: &OpRow) -> bool {
        !self.config.mno.is_empty() && (op.kind == "issue" || op.kind == "transfer")
    }

    /// SP-TSM, after the user's entries were right: the relay goes to the MNO-TSM first.
    pub(super) async fn continue_at_mno(
        &self,
        mut op: OpRow,
        session: SessionId,
        mut batch: Vec<Stmt>,
    ) -> Result<ServerMsg> {
        let t = now();
        if self.config.mno.is_empty() {
            return self.start_engine(op, session, 0, batch).await;
        }
        let url = match self.mno_for(&op.iccid) {
            Ok(m) => m.relay_url.clone(),
            Err(e) => return self.finish_failed(op, session, e, batch).await,
        };
        let asked = self.ask_mno(&op).await?;
        let reply = match asked {
            Ok(Asked {
                ticket: Some(ticket),
                mno_op,
                sealed,
                ..
            }) => {
                op.data.phase = 1;
                batch.push(Store::audit(&op.id, t, "tsm", "sent-to-mno", &url));
                // What the relay's return is checked against (`Tsm::after_mno`).
                batch.push(Store::put_mno_prepared(&op.id, &mno_op, sealed, t));
                ServerMsg::Continue {
                    session,
                    url,
                    ticket,
                }
            }
            Ok(Asked {
                state,
                ticket: None,
                ..
            }) => {
                // The MNO-TSM's operation is over already (a repeat): go on here.
                if state == OpState::Completed {
                    op.data.phase = 1;
                    return self.start_engine(op, session, 0, batch).await;
                }
                let e = err(
                    Layer::Business,
                    "business.mno-not-prepared",
                    format!(
                        "the operator's TSM could not prepare the SIM (its operation is {})",
                        state.name()
                    ),
                );
                return self.finish_failed(op, session, e, batch).await;
            }
            Err(e) if e.code == "tsm.mno-unreachable" => {
                op.state = OpState::Interrupted;
                batch.push(Store::audit(&op.id, t, "tsm", "interrupted", &e.code));
                Self::stop(session, StopOutcome::Interrupted, e.detail.clone())
            }
            Err(e) => return self.finish_failed(op, session, e, batch).await,
        };
        op.updated_at = t;
        batch.push(Store::put_session(
            &session.to_hex(),
            &op.id,
            0,
            encode(&reply)?,
            t,
        ));
        self.store.save_op(&op, batch).await?;
        Ok(reply)
    }

    /// SP-TSM: the issue's plan after the MNO-TSM prepared the SIM: the domain opened with
    /// its initial keys, which are replaced by the provider's before anything is written.
    /// The MNO-TSM's preparation counts as confirmed once its receipt checked or it answered
    /// that its operation completed: the operation's phase becomes [`MNO_CONFIRMED`], and a
    /// later session of the operation (the on-card mode writes the credential in a second
    /// one) uses the initial keys kept for it without asking again.
    pub(super) async fn after_mno(
        &self,
        op: &mut OpRow,
        mut plan: Plan,
        provider: KeySet,
        relayed: Option<&Sealed>,
    ) -> Result<std::result::Result<(Plan, Arc<dyn CardKeys>), ErrorReport>> {
        // Confirmed earlier in this operation, or the relay came back with the MNO-TSM's
        // receipt for this preparation (checked against what its answer named): no need to
        // ask again.
        let known = if op.data.phase >= MNO_CONFIRMED {
            self.kept_initial_keys(op).await?
        } else {
            self.relayed_preparation(op, relayed).await?
        };
        let keys = match known {
            Some(keys) => keys,
            None => match self.ask_mno(op).await? {
                Ok(Asked {
                    state: OpState::Completed,
                    mno_op,
                    sealed,
                    ..
                }) => match self.open_initial_keys(op, &mno_op, &sealed) {
                    Ok(k) => k,
                    Err(e) => return Ok(Err(e)),
                },
                Ok(Asked { state, .. }) => {
                    return Ok(Err(err(
                        Layer::Business,
                        "business.mno-not-prepared",
                        format!(
                            "the operator's TSM has not prepared the SIM (its operation is {}): run the download again",
                            state.name()
                        ),
                    )));
                }
                Err(e) => return Ok(Err(e)),
            },
        };
        op.data.phase = MNO_CONFIRMED;
        let initial = match static_keys(&keys) {
            Ok(k) => k,
            Err(e) => return Ok(Err(err(Layer::Tsm, "tsm.keys", e))),
        };
        plan.goals
            .insert(0, Goal::ReplaceKeys { replace: keys.kvn });
        plan.kvn = keys.kvn;
        plan.new_keys = Some(provider.clone());
        plan.fallback = Some(provider);
        Ok(Ok((plan, Arc::new(Fixed(initial)))))
    }
}

/// The MNO-TSM's answer to a `PrepareSim`, as the SP-TSM uses it.
struct Asked {
    /// Its operation's state.
    state: OpState,
    /// The device ticket for its session (while there is one to run).
    ticket: Option<String>,
    /// Its operation.
    mno_op: OpId,
    /// The domain's initial keys, sealed to this operation's reply key.
    sealed: Vec<u8>,
}

impl Tsm {
    /// SP-TSM: the initial keys `sealed` in the MNO-TSM's answer for operation `mno_op`,
    /// opened with the reply key of operation `op`.
    fn open_initial_keys(
        &self,
        op: &OpRow,
        mno_op: &OpId,
        sealed: &[u8],
    ) -> std::result::Result<InitialKeys, ErrorReport> {
        let mno = self.mno_for(&op.iccid)?;
        let provider = PartyId(op.party.clone());
        let Some(p) = self.config.providers.get(&provider) else {
            return Err(err(
                Layer::Tsm,
                "tsm.unknown-provider",
                "no keys for the provider",
            ));
        };
        let reply = tsm_protocol::keyseal::reply_secret(self.config.state_key.as_bytes(), &op.id.0)
            .map_err(|e| err(Layer::Tsm, "tsm.keys", e.to_string()))?;
        let ctx = tsm_protocol::keyseal::Context {
            mno: &mno.party.0,
            sp_tsm: &self.config.policy.me.0,
            provider: &provider.0,
            iccid: &op.iccid,
            sd_aid: &p.sd_aid,
            op: &mno_op.0,
        };
        tsm_protocol::keyseal::open(&reply, &ctx, sealed).map_err(|e| {
            tracing::warn!(op = %op.id, error = %e, "the MNO-TSM's sealed initial keys do not open");
            err(Layer::Protocol, "protocol.mno-sealed-keys", e.to_string())
        })
    }

    /// SP-TSM: the initial keys kept for operation `op`, if they are still kept and open.
    async fn kept_initial_keys(&self, op: &OpRow) -> Result<Option<InitialKeys>> {
        Ok(match self.store.mno_prepared(&op.id).await? {
            Some((mno_op, keys)) => self.open_initial_keys(op, &mno_op, &keys).ok(),
            None => None,
        })
    }

    /// SP-TSM: the initial keys of a SIM preparation the relay brought the MNO-TSM's receipt
    /// back for — signed by the MNO-TSM serving the SIM, to this SP-TSM, for the operation
    /// its answer named, completed on this SIM — or `None` (no receipt, or one that does not
    /// check: then the MNO-TSM is asked, as a relay may lose or alter what it carries).
    async fn relayed_preparation(
        &self,
        op: &OpRow,
        relayed: Option<&Sealed>,
    ) -> Result<Option<InitialKeys>> {
        let Some(sealed) = relayed else {
            return Ok(None);
        };
        let Some((mno_op, keys)) = self.store.mno_prepared(&op.id).await? else {
            return Ok(None);
        };
        let Ok(mno) = self.mno_for(&op.iccid) else {
            return Ok(None);
        };
        let checked = tsm_protocol::signing::verify_document::<ExecutionReceipt>(
            sealed,
            Kind::Receipt,
            &self.config.trust,
        )
        .map_err(|e| e.to_string())
        .and_then(|env| {
            let h = &env.header;
            if h.sender != mno.party {
                Err(format!("signed by {}, not {}", h.sender, mno.party))
            } else if h.recipient != self.config.policy.me {
                Err(format!("addressed to {}", h.recipient))
            } else {
                env.body
                    .check_preparation(&mno_op, &op.iccid)
                    .map_err(|e| e.to_string())
            }
        });
        if let Err(why) = checked {
            tracing::warn!(op = %op.id, why, "the relayed MNO-TSM receipt does not check: asking the MNO-TSM");
            return Ok(None);
        }
        match self.open_initial_keys(op, &mno_op, &keys) {
            Ok(k) => Ok(Some(k)),
            Err(_) => Ok(None),
        }
    }
}
