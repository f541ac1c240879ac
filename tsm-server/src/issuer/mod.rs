//! The JPKI issuer as a service of its own (seed 004's 公的個人認証サービス: signature-
//! certificate management, user-authentication certificate management, key and certificate
//! generation; `kagi jpki-issuer serve`). It answers signed requests of the SP-TSMs it trusts
//! ([`tsm_protocol::issuer`]):
//!
//! - **Issue** (⑥⑦⑧⑯⑰): the user's application (signed with the My Number card's signature
//!   key) is checked against the signature CA and its revocation data, reloaded from their
//!   files for every check (`kagi_certs::application`: revoked, expired, forged, another CA —
//!   each its own `application.*` code); the phone's P-256 key is made here, certified by the
//!   user-authentication CA (never outliving the signature certificate), the link phone
//!   serial ↔ signature serial is committed, and the key and a fresh PIN are sealed to the
//!   SIM's own key agreement key (checked against the card manufacturer's CA) for the JPKI
//!   applet instance. The SP-TSM relays what it cannot open. The PIN goes to the holder through
//!   the issuer's PIN mailer (a directory, one 0600 file per phone certificate), never to the
//!   SP-TSM.
//! - **Challenge** and **Certify** (the on-card mode, preferred: the private key never leaves
//!   the chip; [`on_card`]): a challenge (an ephemeral point and a nonce, for one SIM,
//!   applet instance and request) for the SIM's JPKI applet, which generates the key under
//!   the provider's secure channel and answers its public key with a proof of possession and
//!   the card's tag under its manufacturer-certified key (`card_wire::keygen`); Certify checks
//!   the application as Issue does, spends the nonce once, checks the proof and certifies that
//!   key — same link, same validity rule — and seals only the PIN.
//! - **CheckApplication** (②③ at the SP-TSM's `Apply` in the on-card mode, [`check`]): an
//!   issue's application checks and the issuer's records of revoked serials and used nonces,
//!   spending nothing; audited, accepted or refused. Refused checks (and issues) of an SP-TSM
//!   are limited per minute ([`budget`]: then `issuer.check-budget`, retryable).
//! - **Status**: which of the asked phone certificates are revoked. Before answering (and every
//!   few seconds while serving) the issuer reloads the signature CA's CRL and revocation list
//!   and revokes, per newly revoked signature serial and in one transaction, every phone
//!   certificate linked to it ([`store`]'s rule: never an active phone certificate linked to a
//!   revoked signature certificate).
//!
//! A request refused at the signed-message layer (forged, unknown signer, expired, from the
//! future, replayed, not a message) leaves a bounded `request-refused` event in the issuer's
//! audit trail ([`crate::refusals`]).
//!
//! Keys: its signing key (P-256, answers), and the user-authentication CA's key behind
//! [`UaCa`] — in this build a file key store (`ua_ca_key`, PKCS#8 DER, 0600) the CLI opens;
//! an HSM-backed CA is the production choice.

mod budget;
mod check;
pub mod crl;
mod hold;
pub mod http;
mod on_card;
mod once;
mod pin_reset;
mod refused;
pub mod setup;
pub mod store;
mod transfer;
mod withdraw;

use kagi_db::{Db, StoreError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tsm_protocol::issuer::{IssuerRequest, IssuerResponse, RevokedPhone};
use tsm_protocol::seal::SealTarget;
use tsm_protocol::signing::{self, Policy, Signer, Trust};
use tsm_protocol::{ErrorReport, IdempotencyKey, Layer, PartyId};
use zeroize::Zeroizing;

pub use budget::{CheckBudget, DEFAULT_REFUSED_CHECKS};

/// The user-authentication CA: certifies the phone's public key.
pub trait UaCa: Send + Sync {
    /// A user-authentication certificate (DER) for `key`: subject CN `opaque_id`, `serial`,
    /// valid from `not_before` to `not_after`.
    fn certify(
        &self,
        key: &p256::PublicKey,
        opaque_id: &str,
        serial: u32,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Vec<u8>, String>;
    /// The CA's certificate (DER).
    fn certificate_der(&self) -> Vec<u8>;
    /// An X.509 v2 CRL (DER) of this CA numbered `number`, listing `entries`
    /// ([`crl`]: the issuer's CRL of its phone certificates). The default: this CA cannot
    /// sign CRLs (an error naming it).
    fn crl(
        &self,
        number: u64,
        this_update: SystemTime,
        next_update: SystemTime,
        entries: &[crl::CrlEntry],
    ) -> Result<Vec<u8>, String> {
        let _ = (number, this_update, next_update, entries);
        Err("this user-authentication CA cannot sign CRLs: configure one that can".into())
    }
}

/// Where the signature CA and its revocation data are (read again for every check).
#[derive(Debug, Clone)]
pub struct SignCa {
    /// The signature CA's certificate (DER or PEM).
    pub certificate: PathBuf,
    /// Its CRL (DER or PEM), when it publishes one; a missing file is an empty CRL.
    pub crl: Option<PathBuf>,
    /// A plain revocation list (one serial per line), when used; a missing file is empty.
    pub revoked: Option<PathBuf>,
}

impl SignCa {
    /// The trust as the files say now.
    pub fn load(&self) -> Result<kagi_certs::Trust, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut t = kagi_certs::Trust::default();
        t.add_ca_file(&read(&self.certificate)?)
            .map_err(|e| e.to_string())?;
        if let Some(c) = self.crl.as_ref().filter(|c| c.exists()) {
            t.add_crl_file(&read(c)?).map_err(|e| e.to_string())?;
        }
        if let Some(r) = self.revoked.as_ref().filter(|r| r.exists()) {
            t.add_revoked_list(&String::from_utf8_lossy(&read(r)?))
                .map_err(|e| e.to_string())?;
        }
        Ok(t)
    }
}

/// How the issuer is set up.
pub struct IssuerConfig {
    /// Signs every answer.
    pub signer: Signer,
    /// The SP-TSMs' public keys.
    pub trust: Trust,
    /// This issuer's name, clock skew, validity windows.
    pub policy: Policy,
    /// The SP-TSMs it answers, each with the providers it acts for.
    pub sp_tsms: BTreeMap<PartyId, Vec<PartyId>>,
    /// The signature CA of the My Number cards.
    pub sign_ca: SignCa,
    /// The user-authentication CA.
    pub ua_ca: Arc<dyn UaCa>,
    /// The card manufacturer's CA (the SIMs' key agreement certificates).
    pub manufacturer_ca: x509_cert::Certificate,
    /// The PIN mailer: one file per phone certificate with its PIN, for the holder.
    pub pin_mailer: PathBuf,
    /// How long a phone certificate is valid at most (never past the signature
    /// certificate's notAfter).
    pub validity: Duration,
    /// How old an application may be.
    pub max_age: Duration,
    /// The secret the on-card mode's challenge keys are derived from (one per issuer, shared
    /// by all its instances: `challenge_key` in `jpki-issuer.toml`, 32 bytes, 0600).
    pub challenge_key: Zeroizing<[u8; 32]>,
}

/// Why a request could not be answered at all.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// Not a signed message (HTTP 400): send a well-formed one.
    #[error("not a signed request: {0}")]
    BadRequest(String),
    /// The database failed (HTTP 503): retry later.
    #[error("the issuer's database: {0}")]
    Store(#[from] StoreError),
    /// The issuer's own failure (random numbers, encoding, the PIN mailer; HTTP 500): retry
    /// later, the reason is in its log.
    #[error("the issuer failed: {0}")]
    Internal(String),
}

fn now_ms() -> i64 {
    signing::now_ms() as i64
}

fn reject(layer: Layer, code: &str, detail: impl Into<String>) -> IssuerResponse {
    IssuerResponse::Rejected(ErrorReport::new(layer, code, false, detail))
}

/// The JPKI issuer.
pub struct Issuer {
    config: IssuerConfig,
    db: Db,
    /// Where the CRL is published ([`crl`]), if anywhere.
    crl_file: Option<PathBuf>,
    published: std::sync::Mutex<crl::Published>,
    /// The budget of refused application checks per SP-TSM ([`budget`]).
    check_budget: CheckBudget,
    /// The in-memory count of refused requests in front of the trail ([`crate::refusals`]).
    refusal_gate: crate::refusals::Gate,
}

impl Issuer {
    /// An issuer over an open database ([`store::SCHEMA`]).
    pub fn new(config: IssuerConfig, db: Db) -> Issuer {
        Issuer {
            config,
            db,
            crl_file: None,
            published: Default::default(),
            check_budget: CheckBudget::default(),
            refusal_gate: Default::default(),
        }
    }

    /// Sets the budget of refused application checks per SP-TSM ([`budget`]; by default
    /// [`DEFAULT_REFUSED_CHECKS`] a minute).
    pub fn with_check_budget(mut self, budget: CheckBudget) -> Issuer {
        self.check_budget = budget;
        self
    }

    /// Publishes the CRL ([`crl`]) to `path` from now on: at every sweep when it changed,
    /// and after every revocation.
    pub fn with_crl_file(mut self, path: PathBuf) -> Issuer {
        self.crl_file = Some(path);
        self
    }

    /// Opens (creating) the database at `backend` and makes the issuer.
    pub async fn open(
        config: IssuerConfig,
        backend: &kagi_db::Backend,
    ) -> Result<Issuer, StoreError> {
        Ok(Issuer::new(
            config,
            Db::open(backend, &store::SCHEMA).await?,
        ))
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// This issuer's party.
    pub fn party(&self) -> &PartyId {
        &self.config.policy.me
    }

    /// Handles a signed request; the answer is signed. A request refused at the
    /// signed-message layer leaves a bounded `request-refused` audit event
    /// ([`crate::refusals`]).
    pub async fn handle(&self, body: &[u8]) -> Result<Vec<u8>, IssuerError> {
        let received = signing::receive_request::<IssuerRequest>(
            body,
            &self.config.trust,
            &self.config.policy,
            now_ms() as u64,
        );
        let (header, verified) = match received {
            Ok(r) => r,
            Err(e) => {
                let e = signing::ProtocolError::from(e);
                self.audit_refusal(None, &e).await;
                return Err(IssuerError::BadRequest(e.to_string()));
            }
        };
        let answer = match verified {
            Err(e) => {
                tracing::warn!(sender = %crate::refusals::sanitise(&header.sender.0), error = %e, "issuer request refused");
                self.audit_refusal(Some(&header), &e).await;
                IssuerResponse::Rejected(ErrorReport::from(&e))
            }
            Ok(env) => {
                let h = &env.header;
                let keep = h.expires_at.saturating_add(self.config.policy.max_skew_ms) as i64;
                if !self
                    .db
                    .first_seen(&h.sender.0, &h.msg_id.to_hex(), keep)
                    .await?
                {
                    let e = signing::ProtocolError::Replayed(h.msg_id, h.sender.clone());
                    tracing::warn!(sender = %h.sender, "replayed issuer request");
                    self.audit_refusal(Some(h), &e).await;
                    IssuerResponse::Rejected(ErrorReport::from(&e))
                } else {
                    tracing::info!(sender = %h.sender, request = env.body.name(), "issuer request");
                    self.answer(&h.sender, env.body).await?
                }
            }
        };
        self.config
            .signer
            .answer(&header, &answer, now_ms() as u64)
            .map_err(|e| IssuerError::Internal(e.to_string()))
    }

    /// The signature CA and its revocation data as they are now, or the answer saying the
    /// issuer cannot read them (retry later).
    fn sign_trust(&self) -> Result<kagi_certs::Trust, Box<IssuerResponse>> {
        self.config.sign_ca.load().map_err(|e| {
            tracing::error!(error = %e, "the signature CA's files");
            Box::new(IssuerResponse::Rejected(ErrorReport::new(
                Layer::Tsm,
                "issuer.sign-ca",
                true,
                "the issuer cannot read its signature CA or revocation data: retry later",
            )))
        })
    }

    /// Answers a verified request (within the budget of refused checks: [`budget`]).
    async fn answer_request(
        &self,
        sender: &PartyId,
        req: IssuerRequest,
    ) -> Result<IssuerResponse, IssuerError> {
        let Some(providers) = self.config.sp_tsms.get(sender) else {
            return Ok(reject(
                Layer::Business,
                "issuer.unknown-sp-tsm",
                format!(
                    "{sender} is not an SP-TSM this JPKI issuer serves: its operator must add it"
                ),
            ));
        };
        let mut refused = req.provider().filter(|p| !providers.contains(p)).map(|p| {
            reject(
                Layer::Business,
                "issuer.not-your-provider",
                format!("{sender} does not act for {p}"),
            )
        });
        // A check is audited also when refused here.
        if !matches!(req, IssuerRequest::CheckApplication { .. })
            && let Some(refused) = refused.take()
        {
            return Ok(refused);
        }
        match req {
            IssuerRequest::CheckApplication {
                application,
                provider,
                iccid,
                moves,
            } => {
                let moves = moves.as_ref().map(|m| transfer::Transfer {
                    from_serial: &m.from_serial,
                    from_iccid: &m.from_iccid,
                });
                self.check_application(sender, &provider, &iccid, &application, moves, refused)
                    .await
            }
            IssuerRequest::Issue {
                application,
                provider,
                iccid,
                card_certificate,
                instance,
                request_id,
                moves,
            } => {
                let transfer = match transfer::moving(&iccid, moves.as_ref()) {
                    Ok(t) => t,
                    Err(refused) => return Ok(*refused),
                };
                self.issue_once(
                    sender,
                    &provider,
                    &iccid,
                    &application,
                    &card_certificate,
                    &instance,
                    &request_id,
                    None,
                    transfer,
                )
                .await
            }
            IssuerRequest::Challenge {
                provider: _,
                iccid,
                card_certificate,
                instance,
                request_id,
            } => {
                self.challenge(sender, &iccid, &card_certificate, &instance, &request_id)
                    .await
            }
            IssuerRequest::Certify {
                application,
                provider,
                iccid,
                card_certificate,
                instance,
                request_id,
                nonce,
                proof,
                moves,
            } => {
                let transfer = match transfer::moving(&iccid, moves.as_ref()) {
                    Ok(t) => t,
                    Err(refused) => return Ok(*refused),
                };
                self.issue_once(
                    sender,
                    &provider,
                    &iccid,
                    &application,
                    &card_certificate,
                    &instance,
                    &request_id,
                    Some(on_card::OnCard {
                        nonce: &nonce,
                        proof: &proof,
                    }),
                    transfer,
                )
                .await
            }
            IssuerRequest::Status { serials } => {
                if serials.len() > 1000 {
                    return Ok(reject(
                        Layer::Protocol,
                        "protocol.too-many",
                        "ask for at most 1000 serials at a time",
                    ));
                }
                self.sync_revocations().await?;
                let mut revoked = Vec::new();
                for s in serials {
                    if let Some(l) = store::link(&self.db, &s).await?
                        && l.sp_tsm == sender.0
                        && l.state == "revoked"
                    {
                        revoked.push(RevokedPhone {
                            serial: l.serial,
                            sign_serial: l.sign_serial,
                            reason: l.reason.unwrap_or_default(),
                            revoked_at: l.revoked_at.unwrap_or(0).max(0) as u64,
                        });
                    }
                }
                Ok(IssuerResponse::Status { revoked })
            }
            IssuerRequest::Withdraw { serial, reason } => {
                self.withdraw(sender, &serial, &reason).await
            }
            IssuerRequest::Suspension { serial, hold } => {
                self.suspension(sender, &serial, hold).await
            }
            IssuerRequest::ResetPin {
                application,
                serial,
                card_certificate,
                instance,
                request_id,
            } => {
                self.reset_pin(
                    sender,
                    &application,
                    &serial,
                    &card_certificate,
                    &instance,
                    &request_id,
                )
                .await
            }
        }
    }

    /// Issues for a request whose idempotency key this worker claimed ([`Issuer::issue_once`]):
    /// an `Issued` answer is recorded under the key in the transaction that commits its link.
    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        sender: &PartyId,
        provider: &PartyId,
        iccid: &str,
        application: &[u8],
        card_certificate: &[u8],
        instance: &[u8],
        request_id: &IdempotencyKey,
        on_card: Option<on_card::OnCard<'_>>,
        replacing: Option<once::Replacing>,
        transfer: Option<transfer::Transfer<'_>>,
    ) -> Result<IssuerResponse, IssuerError> {
        let now = SystemTime::now();
        let from_iccid = transfer.as_ref().map(|t| t.from_iccid);
        let verified =
            match self.verify_application(sender, provider, iccid, application, now, from_iccid) {
                Ok(v) => v,
                Err(refused) => return Ok(*refused),
            };
        if let Some(t) = &transfer
            && let Some(refused) = self
                .transfer_refusal(sender, t, &verified.sign_serial)
                .await?
        {
            return Ok(refused);
        }
        let target = match SealTarget::verify(
            &self.config.manufacturer_ca,
            card_certificate,
            iccid,
            now,
        ) {
            Ok(t) => t,
            Err(e) => {
                return Ok(reject(
                    Layer::Business,
                    "issuer.card-certificate",
                    format!(
                        "the SIM's key agreement certificate does not check against the card manufacturer's CA: {e}"
                    ),
                ));
            }
        };
        // The phone's key — made on the SIM (its proof checked, its nonce spent) or here —,
        // its certificate (never past the signature certificate's end).
        let (public, key) = match on_card {
            Some(c) => match self
                .on_card_key(sender, &target, instance, request_id, c)
                .await?
            {
                Ok(public) => (public, None),
                Err(refused) => return Ok(refused),
            },
            None => {
                use p256::elliptic_curve::Generate;
                let key = p256::ecdsa::SigningKey::try_generate()
                    .map_err(|e| IssuerError::Internal(e.to_string()))?;
                ((*key.verifying_key()).into(), Some(key))
            }
        };
        let mut serial = [0u8; 4];
        getrandom::fill(&mut serial).map_err(|e| IssuerError::Internal(e.to_string()))?;
        let serial = u32::from_be_bytes(serial) & 0x7FFF_FFFF | 1;
        let sign_end = SystemTime::UNIX_EPOCH + Duration::from_secs(verified.not_after);
        let until = (now + self.config.validity).min(sign_end);
        let cert = self
            .config
            .ua_ca
            .certify(&public, &format!("KAGIPHONE{iccid}"), serial, now, until)
            .map_err(IssuerError::Internal)?;
        let pin = new_pin().map_err(IssuerError::Internal)?;
        let credential = match key {
            Some(key) => {
                let key_bytes = Zeroizing::new(key.to_bytes().to_vec());
                tsm_protocol::seal::bundle(
                    &target,
                    instance,
                    request_id,
                    &key_bytes,
                    cert,
                    self.config.ua_ca.certificate_der(),
                    pin.as_bytes(),
                    &verified.sign_serial,
                )
                .map_err(IssuerError::Internal)?
            }
            // Made on the SIM: nothing private to seal but the PIN.
            None => tsm_protocol::control::CredentialBundle {
                sealed_key: Vec::new(),
                sealed_pin: tsm_protocol::seal::seal_pin(
                    &target,
                    instance,
                    request_id,
                    pin.as_bytes(),
                )
                .map_err(IssuerError::Internal)?,
                certificate: cert,
                ca_certificate: self.config.ua_ca.certificate_der(),
                my_number_sign_serial: verified.sign_serial.clone(),
            },
        };
        let serial_hex = serial_hex(serial);
        let not_after = until
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let link = store::Link {
            serial: serial_hex.clone(),
            sign_serial: verified.sign_serial.clone(),
            iccid: iccid.into(),
            provider: provider.0.clone(),
            sp_tsm: sender.0.clone(),
            state: "active".into(),
            reason: None,
            not_after: not_after as i64,
            revoked_at: None,
        };
        let answer = IssuerResponse::Issued {
            credential,
            serial: serial_hex.clone(),
            not_after,
        };
        let encoded = tsm_protocol::codec::encode(&answer)
            .map_err(|e| IssuerError::Internal(e.to_string()))?;
        let at = now_ms();
        let finish = match &replacing {
            None => vec![store::finish_issue(
                &sender.0,
                &request_id.to_hex(),
                encoded,
                at,
            )],
            Some(r) => once::replace_batch(&sender.0, request_id, r, encoded, &link, at),
        };
        // A replacement's application was spent by the issuance it replaces (same request).
        // A key made on the SIM replaced the applet's earlier one: the SIM's earlier
        // certificate is superseded now. (A sealed key is delivered later, and the SP-TSM may
        // still refuse it: nothing earlier is superseded at the issuer then.)
        let mut finish = finish;
        if on_card.is_some() {
            finish.extend(store::supersede_batch(&link, at));
        }
        if let Some(refused) = self
            .record_with(
                &link,
                &hex::encode(verified.application.body.nonce),
                finish,
                replacing.is_some(),
            )
            .await?
        {
            return Ok(refused);
        }
        self.mail_pin(&serial_hex, &pin)?;
        tracing::info!(serial = %serial_hex, sign_serial = %verified.sign_serial, iccid, "phone certificate issued");
        Ok(answer)
    }

    /// Commits an issuance's link (and the application's nonce): `Some(refusal)` when the
    /// signature serial was revoked meanwhile, or the application was used before.
    pub async fn record(
        &self,
        link: &store::Link,
        nonce_hex: &str,
    ) -> Result<Option<IssuerResponse>, IssuerError> {
        self.record_with(link, nonce_hex, Vec::new(), false).await
    }

    /// [`Issuer::record`] with more writes in the same transaction; `application_spent`: the
    /// application's nonce is not recorded again (the issuance replaces one made for it).
    async fn record_with(
        &self,
        link: &store::Link,
        nonce_hex: &str,
        extra: Vec<kagi_db::Stmt>,
        application_spent: bool,
    ) -> Result<Option<IssuerResponse>, IssuerError> {
        let at = now_ms();
        let mut batch = store::issue_batch(link, nonce_hex, at);
        if application_spent {
            batch.remove(store::CONFLICT_REPLAYED);
        }
        let first_extra = batch.len();
        batch.extend(extra);
        match self.db.commit(batch).await {
            Err(StoreError::Conflict(i)) if i >= first_extra => Err(IssuerError::Internal(
                "another worker took over this issue request meanwhile; nothing was issued".into(),
            )),
            Ok(()) => Ok(None),
            Err(StoreError::Conflict(store::CONFLICT_REVOKED)) => Ok(Some(reject(
                Layer::Business,
                "application.revoked",
                format!(
                    "the signature certificate {} was revoked: the card cannot apply",
                    link.sign_serial
                ),
            ))),
            Err(StoreError::Conflict(store::CONFLICT_REPLAYED)) => Ok(Some(reject(
                Layer::Business,
                "application.replayed",
                "the application was already used (replay): make a fresh one",
            ))),
            Err(e) => Err(e.into()),
        }
    }

    fn mail_pin(&self, serial: &str, pin: &str) -> Result<(), IssuerError> {
        let dir = &self.config.pin_mailer;
        kagi_serve::files::create_private_dir(dir)
            .map_err(|e| IssuerError::Internal(e.to_string()))?;
        kagi_serve::files::write_private(
            &dir.join(format!("{serial}.pin")),
            format!("{pin}\n").as_bytes(),
        )
        .map_err(|e| IssuerError::Internal(e.to_string()))
    }

    /// Revokes signature serial `sign_serial` and, in the same transaction, every active phone
    /// certificate linked to it; the phone serials revoked.
    pub async fn revoke_sign_serial(
        &self,
        sign_serial: &str,
        actor: &str,
    ) -> Result<Vec<String>, IssuerError> {
        self.db
            .commit(store::revoke_batch(sign_serial, actor, now_ms()))
            .await?;
        self.refresh_crl().await;
        let revoked: Vec<String> = store::links_of(&self.db, sign_serial)
            .await?
            .into_iter()
            .filter(|l| l.state == "revoked")
            .map(|l| l.serial)
            .collect();
        tracing::info!(
            sign_serial,
            phones = revoked.len(),
            "signature certificate revoked, linked phone certificates revoked"
        );
        Ok(revoked)
    }

    /// Reloads the signature CA's CRL and revocation list and revokes what is newly on them
    /// (with the linked phone certificates); how many signature serials were new.
    pub async fn sync_revocations(&self) -> Result<usize, IssuerError> {
        let trust = match self.config.sign_ca.load() {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "the signature CA's revocation data could not be read; kept as before");
                return Ok(0);
            }
        };
        let known: std::collections::BTreeSet<String> = store::revoked_sign_serials(&self.db)
            .await?
            .into_iter()
            .collect();
        let mut n = 0;
        for s in trust.revoked_serials() {
            if !known.contains(&s) {
                self.revoke_sign_serial(&s, "sign-ca").await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// The periodic work while serving: revocations synced, old replay entries dropped.
    pub async fn sweep(&self) -> Result<(), IssuerError> {
        self.flush_refusals().await;
        self.sync_revocations().await?;
        self.db
            .commit(vec![store::note_crl_drops(now_ms() / 1000, now_ms())])
            .await?;
        self.publish_crl(false).await?;
        store::purge_replay(&self.db, now_ms()).await?;
        Ok(())
    }
}

/// A serial as kagi prints it (`kagi_certs::serial_hex`): upper-case hex of whole bytes, no
/// zero bytes in front — the form the SP-TSM asks for it by.
fn serial_hex(serial: u32) -> String {
    let b = serial.to_be_bytes();
    let skip = b.iter().take(3).take_while(|x| **x == 0).count();
    hex::encode_upper(&b[skip..])
}

/// A fresh four-digit PIN, uniform (rejection sampling).
fn new_pin() -> Result<Zeroizing<String>, String> {
    loop {
        let mut b = [0u8; 2];
        getrandom::fill(&mut b).map_err(|e| e.to_string())?;
        let n = u16::from_be_bytes(b);
        if n < 60_000 {
            return Ok(Zeroizing::new(format!("{:04}", n % 10_000)));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn serials_print_in_whole_bytes_as_certificates_do() {
        assert_eq!(super::serial_hex(0x0FAC_7022), "0FAC7022");
        assert_eq!(super::serial_hex(0x7F00_0001), "7F000001");
        assert_eq!(super::serial_hex(0x0000_7022), "7022");
        assert_eq!(super::serial_hex(1), "01");
    }
}
