//! The administrators' signed requests: services, cards and holders, enrolments, and the
//! credentials they make.

use crate::envelope::SealedRecord;
use crate::store::back_channel::IdemRow;
use crate::store::{CredentialRow, Shard};
use broker_protocol::api::{AdminRequest, AdminResponse, BackChannel, Method, ServicePolicy};
use broker_protocol::envelope::KeyKind;
use kagi_db::StoreError;
use kagi_signed::password;
use kagi_signed::signing::{self};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{Broker, BrokerError, Result, random, refuse};

/// How long an idempotent answer is kept (a day).
pub const IDEM_KEEP_MS: i64 = 86_400_000;

/// Where and under which key a request's answer is kept for retries.
pub(super) struct Idem<'a> {
    shard: &'a Shard,
    index: usize,
    sender: String,
    key: String,
    request_hash: Vec<u8>,
}

/// A credential's secret, made at enrolment.
struct NewSecret {
    secret: Zeroizing<Vec<u8>>,
    public_key: Option<Vec<u8>>,
}

fn new_secret(method: Method) -> Result<NewSecret> {
    use p256::pkcs8::EncodePublicKey;
    Ok(match method {
        Method::Mac => NewSecret {
            secret: Zeroizing::new(random::<16>()?.to_vec()),
            public_key: None,
        },
        Method::SignP256 => {
            use p256::elliptic_curve::Generate;
            let bad = |e: String| BrokerError::KeyGeneration {
                method: "P-256",
                why: e,
            };
            let k = p256::ecdsa::SigningKey::try_generate()?;
            NewSecret {
                secret: Zeroizing::new(k.to_bytes().to_vec()),
                public_key: Some(
                    k.verifying_key()
                        .to_public_key_der()
                        .map_err(|e| bad(e.to_string()))?
                        .as_bytes()
                        .to_vec(),
                ),
            }
        }
        Method::SignRsa => {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::pkcs8::EncodePublicKey as _;
            let bad = |e: String| BrokerError::KeyGeneration {
                method: "RSA",
                why: e,
            };
            let k = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)
                .map_err(|e| bad(e.to_string()))?;
            NewSecret {
                secret: Zeroizing::new(
                    k.to_pkcs1_der()
                        .map_err(|e| bad(e.to_string()))?
                        .as_bytes()
                        .to_vec(),
                ),
                public_key: Some(
                    k.to_public_key()
                        .to_public_key_der()
                        .map_err(|e| bad(e.to_string()))?
                        .as_bytes()
                        .to_vec(),
                ),
            }
        }
        // An assertion service needs no per-card secret, only the pairwise id.
        Method::Assertion => NewSecret {
            secret: Zeroizing::new(Vec::new()),
            public_key: None,
        },
    })
}

impl Broker {
    /// Handles a signed administrator's request; the answer is signed.
    pub async fn admin(&self, body: &[u8]) -> Result<Vec<u8>> {
        let (header, verified) = signing::receive_request::<AdminRequest>(
            body,
            &self.config.admin_trust,
            &self.config.policy,
            signing::now_ms(),
        )?;
        let answer = match verified {
            Err(e) => AdminResponse::Rejected {
                code: e.code().to_string(),
                detail: e.to_string(),
            },
            Ok(env) if env.header.sender.role() != "admin" => AdminResponse::Rejected {
                code: "admin.not-an-administrator".into(),
                detail: format!("{} is not an administrator", env.header.sender),
            },
            Ok(env) => {
                let h = &env.header;
                let idem = self.idem_scope(h, &env.body)?;
                let stored = match &idem {
                    Some(i) => self.stored_answer(i).await?,
                    None => None,
                };
                let keep = h.expires_at.saturating_add(self.config.policy.max_skew_ms) as i64;
                // A request with an idempotency key is carried out at most once by its key
                // (the same bytes again after a failure that kept no answer are carried out
                // then); the others at most once by their message id.
                let replayed = idem.is_none()
                    && !self
                        .shards
                        .first()
                        .first_seen(&h.sender.0, &h.msg_id.to_hex(), keep)
                        .await?;
                if let Some(a) = stored {
                    // A retry of a request already carried out: its first answer, nothing done.
                    a
                } else if matches!(env.body, AdminRequest::RotateServiceKey { .. })
                    && idem.is_none()
                {
                    AdminResponse::Rejected {
                        code: "admin.idempotency-key-missing".into(),
                        detail: "a key rotation needs an idempotency key (send the same key again to retry it safely)".into(),
                    }
                } else if replayed {
                    AdminResponse::Rejected {
                        code: "protocol.replayed".into(),
                        detail: "this request was already received".into(),
                    }
                } else {
                    match self.handle_admin(env.body, idem.as_ref()).await {
                        Ok(r) => r,
                        Err(BrokerError::Refused(e)) => AdminResponse::Rejected {
                            code: e.code,
                            detail: e.detail,
                        },
                        Err(e) => return Err(e),
                    }
                }
            }
        };
        self.config
            .signer
            .answer(&header, &answer, signing::now_ms())
            .map_err(|e| BrokerError::Sign(e.to_string()))
    }

    /// The KEK new records are sealed under.
    pub async fn current_kek(&self) -> Result<String> {
        Ok(self
            .shards
            .first()
            .setting("current_kek")
            .await?
            .unwrap_or_else(|| self.config.default_kek.clone()))
    }

    async fn handle_admin(
        &self,
        req: AdminRequest,
        idem: Option<&Idem<'_>>,
    ) -> Result<AdminResponse> {
        let t = self.now();
        match req {
            AdminRequest::RegisterService(p) => {
                self.shards
                    .everywhere(vec![Shard::put_service(&p, t)])
                    .await?;
                tracing::info!(service = %p.id, method = p.method.name(), "service registered");
                Ok(AdminResponse::Ok)
            }
            AdminRequest::EnrolCard {
                card,
                holder,
                password,
            } => {
                if let Some(p) = &password {
                    password::accept(p, &self.password_policy)
                        .map_err(|e| refuse("admin.weak-password-verifier", e.to_string()))?;
                }
                let shard = self.shards.of(&card);
                // One conditional upsert: a revoked card stays revoked, whatever else runs.
                match shard
                    .commit(vec![
                        Shard::enrol_card(&card, &holder, password.as_deref(), t),
                        Shard::audit(&card, t, "", "", "enrol-card", "ok"),
                    ])
                    .await
                {
                    Ok(()) => Ok(AdminResponse::Ok),
                    Err(StoreError::Conflict(0)) => {
                        Err(refuse("admin.revoked", format!("card {card} is revoked")).into())
                    }
                    Err(e) => Err(e.into()),
                }
            }
            AdminRequest::EnrolCredential { card, service } => {
                self.enrol(&card, &service, false, idem).await
            }
            AdminRequest::RotateServiceKey { card, service } => {
                self.enrol(&card, &service, true, idem).await
            }
            AdminRequest::RotateKek { to } => {
                // A KEK made for this rotation while the broker runs.
                if !self.config.envelope.keks().contains(&to) {
                    self.config.envelope.refresh().map_err(BrokerError::Keys)?;
                }
                if !self.config.envelope.keks().contains(&to) {
                    return Err(refuse(
                        "admin.unknown-kek",
                        format!("the key store holds no KEK '{to}'"),
                    )
                    .into());
                }
                // Records kept inside the HSM move only under a KEK that may wrap keys: say
                // so now, not record by record in the sweep.
                if !self
                    .config
                    .envelope
                    .holds_inside(&to)
                    .map_err(BrokerError::Keys)?
                {
                    let mut inside = 0u64;
                    for s in self.shards.all() {
                        inside += s.inside_records_not_under(&to).await?;
                    }
                    if inside > 0 {
                        return Err(refuse(
                            "admin.kek-cannot-wrap",
                            format!(
                                "the KEK '{to}' may not wrap keys, and {inside} records are kept inside the HSM under other KEKs: nothing was changed; make a new KEK with `kagi broker new-kek` (it may wrap) and rotate to it"
                            ),
                        )
                        .into());
                    }
                }
                self.shards
                    .everywhere(vec![Shard::put_setting("current_kek", &to)])
                    .await?;
                let r = self.rotate_some(&to, 20_000).await?;
                Ok(AdminResponse::Rotation {
                    kek: to,
                    rewrapped: r.rewrapped,
                    converted: r.converted,
                    remaining: r.remaining,
                })
            }
            AdminRequest::RevokeCard { card } => {
                let shard = self.shards.of(&card);
                // Only the state changes, in one statement with the end of the sessions:
                // nothing a login or an act writes can bring the card back.
                match shard
                    .commit(vec![
                        Shard::revoke_card(&card, t),
                        Shard::end_sessions(&card),
                        Shard::audit(&card, t, "", "", "revoke-card", "ok"),
                    ])
                    .await
                {
                    Ok(()) => {}
                    Err(StoreError::Conflict(0)) => {
                        return Err(refuse(
                            "admin.unknown-card",
                            format!("card {card} is not enrolled"),
                        )
                        .into());
                    }
                    Err(e) => return Err(e.into()),
                }
                tracing::info!(card = %card, "card revoked");
                Ok(AdminResponse::Ok)
            }
            AdminRequest::SetBackChannel {
                service,
                back_channel,
            } => {
                self.set_back_channel(&service, &back_channel, t).await?;
                Ok(AdminResponse::Ok)
            }
            AdminRequest::Audit { card } => {
                let mut all = Vec::new();
                match &card {
                    Some(c) => all = self.shards.of(c).audit_trail(Some(c)).await?,
                    None => {
                        for s in self.shards.all() {
                            all.extend(s.audit_trail(None).await?);
                        }
                        all.sort_by_key(|a| a.at);
                    }
                }
                Ok(AdminResponse::Audit(all))
            }
        }
    }

    /// A new credential: its secret generated here and sealed at once under `kek`.
    fn make_credential(
        &self,
        kek: &str,
        card: &str,
        service: &str,
        method: Method,
        version: i64,
    ) -> Result<(CredentialRow, NewSecret)> {
        let aad = CredentialRow::aad(card, service, version);
        let kind = match method {
            Method::Mac => Some(KeyKind::Aes128),
            Method::SignP256 => Some(KeyKind::P256),
            Method::SignRsa => Some(KeyKind::Rsa2048),
            Method::Assertion => None,
        };
        // Generated inside the key store when it keeps credentials there; else here.
        let inside = match kind {
            Some(k) => self
                .config
                .envelope
                .generate(kek, &aad, k)
                .map_err(BrokerError::Keys)?,
            None => None,
        };
        let (sealed, secret): (SealedRecord, NewSecret) = match inside {
            Some(g) => (
                g.record,
                NewSecret {
                    secret: g.shared.unwrap_or_default(),
                    public_key: g.public_key,
                },
            ),
            None => {
                let secret = new_secret(method)?;
                let sealed = self
                    .config
                    .envelope
                    .seal(kek, &aad, &secret.secret)
                    .map_err(BrokerError::Keys)?;
                (sealed, secret)
            }
        };
        let pairwise = hex::encode(
            &self.mac(&[b"pairwise", card.as_bytes(), &[0], service.as_bytes()])?[..16],
        );
        let row = CredentialRow {
            card: card.into(),
            service: service.into(),
            version,
            state: "active".into(),
            sealed,
            public_key: secret.public_key.clone(),
            pairwise,
        };
        Ok((row, secret))
    }

    /// Enrols many new cards at once (a migration from another system, or a synthetic load):
    /// each card active with holder id = card id, and a credential for each of `services`
    /// (which must be registered), made and sealed as a single enrolment makes them. A card's
    /// rows are committed together, 200 cards per transaction per shard. Cards already
    /// enrolled keep what they have (their rows are skipped). Returns the credentials made.
    pub async fn enrol_many(&self, cards: &[String], services: &[String]) -> Result<u64> {
        let mut policies = Vec::new();
        for s in services {
            let p = self
                .shards
                .first()
                .service(s)
                .await?
                .ok_or_else(|| refuse("admin.unknown-service", format!("no service {s}")))?;
            policies.push(p);
        }
        let kek = self.current_kek().await?;
        let mut made = 0u64;
        let mut pending: Vec<Vec<kagi_db::Stmt>> = vec![Vec::new(); self.shards.all().len()];
        let mut in_batch = vec![0usize; pending.len()];
        for card in cards {
            let i = self.shards.index_of(card);
            let t = self.now();
            pending[i].push(Shard::insert_card_if_new(card, t));
            for p in &policies {
                let (row, _secret) = self.make_credential(&kek, card, &p.id, p.method, 1)?;
                let mut insert = Shard::insert_credential(&row, t);
                insert.expect = kagi_db::Expect::Any;
                pending[i].push(insert);
                made += 1;
            }
            pending[i].push(Shard::audit(card, t, "", "", "enrol-bulk", "ok"));
            in_batch[i] += 1;
            if in_batch[i] == 200 {
                self.shards.all()[i]
                    .commit(std::mem::take(&mut pending[i]))
                    .await?;
                in_batch[i] = 0;
            }
        }
        for (i, batch) in pending.into_iter().enumerate() {
            if !batch.is_empty() {
                self.shards.all()[i].commit(batch).await?;
            }
        }
        Ok(made)
    }

    /// Makes a card's credential for a service (or, with `rotate`, a new version of it): the
    /// secret generated here, sealed at once, its new version and the old one's retirement in
    /// one transaction — no half-rotated key.
    async fn enrol(
        &self,
        card: &str,
        service: &str,
        rotate: bool,
        idem: Option<&Idem<'_>>,
    ) -> Result<AdminResponse> {
        let shard = self.shards.of(card);
        match shard.card(card).await? {
            Some(c) if c.state == "active" => {}
            Some(_) => {
                return Err(refuse("admin.revoked", format!("card {card} is revoked")).into());
            }
            None => {
                return Err(
                    refuse("admin.unknown-card", format!("card {card} is not enrolled")).into(),
                );
            }
        }
        let policy: ServicePolicy = shard
            .service(service)
            .await?
            .ok_or_else(|| refuse("admin.unknown-service", format!("no service {service}")))?;
        let existing = shard.active_credential(card, service).await?;
        if let (Some(c), false) = (&existing, rotate) {
            // Enrolled already: the same answer again.
            if policy.method == Method::Mac && c.sealed.in_store_kind().is_some() {
                // The AES key was read once, for this service, and stays in the HSM since.
                return Err(refuse(
                    "admin.key-in-hsm",
                    format!(
                        "{card} is enrolled at {service} already and its key stays inside the HSM: rotate the service key to give the service a new one"
                    ),
                )
                .into());
            }
            let shared = if policy.method == Method::Mac {
                let aad = CredentialRow::aad(&c.card, &c.service, c.version);
                Some(
                    self.config
                        .envelope
                        .shared_secret(&aad, &c.sealed)
                        .map_err(BrokerError::Keys)?
                        .to_vec(),
                )
            } else {
                None
            };
            return Ok(AdminResponse::Credential {
                version: c.version as u32,
                public_key: c.public_key.clone(),
                shared_key: shared,
            });
        }
        let version = existing.as_ref().map(|c| c.version + 1).unwrap_or(1);
        let kek = self.current_kek().await?;
        let (row, secret) = self.make_credential(&kek, card, service, policy.method, version)?;
        let t = self.now();
        let mut batch = vec![Shard::insert_credential(&row, t)];
        if let Some(old) = &existing {
            batch.push(Shard::retire_credential(card, service, old.version));
        }
        batch.push(Shard::audit(
            card,
            t,
            service,
            "",
            if rotate { "rotate-key" } else { "enrol" },
            "ok",
        ));
        let answer = AdminResponse::Credential {
            version: version as u32,
            public_key: secret.public_key,
            shared_key: (policy.method == Method::Mac).then(|| secret.secret.to_vec()),
        };
        // The answer kept for retries, written with the change it answers. An AES key made
        // inside the HSM is given once: what is kept says so (a retry learns the change was
        // done) instead of keeping a copy of the key, openable outside the HSM, for a day.
        if let Some(i) = idem {
            let kept = match &answer {
                AdminResponse::Credential {
                    shared_key: Some(_),
                    ..
                } if row.sealed.in_store_kind().is_some() => AdminResponse::Rejected {
                    code: "admin.key-given-once".into(),
                    detail: format!(
                        "this request was done: {card} has credential version {version} at {service}, whose MAC key was given in the first answer only and stays inside the HSM; if that answer was lost, rotate the service key again with a new idempotency key"
                    ),
                },
                a => a.clone(),
            };
            batch.push(self.store_answer(i, &kek, &kept, t)?);
        }
        match shard.commit(batch).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                // The same request, sent again at the same time, committed first: its answer.
                if let Some(i) = idem
                    && let Some(a) = self.stored_answer(i).await?
                {
                    return Ok(a);
                }
                return Err(refuse(
                    "admin.conflict",
                    "another request changed this credential meanwhile: ask again",
                )
                .into());
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(card = %card, service = %service, version, "credential made");
        Ok(answer)
    }

    /// The idempotency scope of a request that changes a card's credentials and carries an
    /// idempotency key: its answer is kept on the card's shard, in the transaction of the
    /// change. Other requests are idempotent by themselves (upserts, a revocation).
    fn idem_scope<'a>(
        &'a self,
        h: &signing::Header,
        req: &AdminRequest,
    ) -> Result<Option<Idem<'a>>> {
        let card = match req {
            AdminRequest::EnrolCredential { card, .. }
            | AdminRequest::RotateServiceKey { card, .. } => card,
            _ => return Ok(None),
        };
        let Some(key) = h.idempotency_key else {
            return Ok(None);
        };
        Ok(Some(Idem {
            shard: self.shards.of(card),
            index: self.shards.index_of(card),
            sender: h.sender.0.clone(),
            key: key.to_hex(),
            request_hash: Sha256::digest(kagi_signed::codec::encode(req)?).to_vec(),
        }))
    }

    fn idem_aad(i: &Idem<'_>) -> Vec<u8> {
        format!("kagi-broker idempotent answer\0{}\0{}", i.sender, i.key).into_bytes()
    }

    /// The statement keeping `answer` (sealed under `kek`: it may carry a MAC key) for
    /// retries with the same key, a day.
    fn store_answer(
        &self,
        i: &Idem<'_>,
        kek: &str,
        answer: &AdminResponse,
        t: i64,
    ) -> Result<kagi_db::Stmt> {
        let plain = Zeroizing::new(kagi_signed::codec::encode(answer)?);
        let sealed = self
            .config
            .envelope
            .seal(kek, &Self::idem_aad(i), &plain)
            .map_err(BrokerError::Keys)?;
        Ok(Shard::put_idem(
            &i.sender,
            &i.key,
            &IdemRow {
                request_hash: i.request_hash.clone(),
                sealed,
            },
            t + IDEM_KEEP_MS,
        ))
    }

    /// The answer kept for this idempotency key: the first answer for the same request, a
    /// refusal for another request under the same key, `None` if the key is new.
    async fn stored_answer(&self, i: &Idem<'_>) -> Result<Option<AdminResponse>> {
        let conflict = || AdminResponse::Rejected {
            code: "admin.idempotency-conflict".into(),
            detail:
                "this idempotency key was used for another request: use a new key for a new request"
                    .into(),
        };
        let Some(row) = i.shard.idem(&i.sender, &i.key).await? else {
            // The key kept on another shard: it was used for another card's request.
            for (n, s) in self.shards.all().iter().enumerate() {
                if n != i.index && s.idem(&i.sender, &i.key).await?.is_some() {
                    return Ok(Some(conflict()));
                }
            }
            return Ok(None);
        };
        if row.request_hash != i.request_hash {
            return Ok(Some(conflict()));
        }
        // The first answer is repeated only once it is sure to survive a failover.
        i.shard.settle().await?;
        let plain = self
            .config
            .envelope
            .open(&Self::idem_aad(i), &row.sealed)
            .map_err(BrokerError::Keys)?;
        Ok(Some(kagi_signed::codec::decode(&plain)?))
    }

    /// Sets how a registered service receives proofs: code mode — its key must be a P-256
    /// public key, its codes live 1 to [`super::back_channel::MAX_CODE_SECS`] seconds; push
    /// mode — an `https://` URL and a usable CA.
    async fn set_back_channel(&self, service: &str, bc: &BackChannel, t: i64) -> Result<()> {
        if self.shards.first().service(service).await?.is_none() {
            return Err(refuse(
                "admin.unknown-service",
                format!("no service {service}: register it first"),
            )
            .into());
        }
        if let BackChannel::Code {
            service_key,
            code_secs,
        } = bc
        {
            use p256::pkcs8::DecodePublicKey;
            let bad = |why: String| refuse("admin.bad-back-channel", why);
            kagi_signed::ids::PartyId::new(&broker_protocol::api::service_party(service))
                .map_err(|e| bad(format!("the service id cannot sign redemptions: {e}")))?;
            p256::ecdsa::VerifyingKey::from_public_key_der(service_key).map_err(|e| {
                bad(format!(
                    "the service key is not a P-256 public key (DER SubjectPublicKeyInfo): {e}"
                ))
            })?;
            if !(1..=super::back_channel::MAX_CODE_SECS).contains(code_secs) {
                return Err(bad(format!(
                    "codes live 1 to {} seconds, not {code_secs}",
                    super::back_channel::MAX_CODE_SECS
                ))
                .into());
            }
        }
        if let BackChannel::Push { url, service_ca } = bc {
            let bad = |why: String| refuse("admin.bad-back-channel", why);
            kagi_signed::ids::PartyId::new(&broker_protocol::api::service_party(service))
                .map_err(|e| bad(format!("the service id cannot receive pushes: {e}")))?;
            super::push::check_endpoint(url, service_ca).map_err(bad)?;
        }
        self.shards
            .everywhere(vec![
                Shard::put_back_channel(service, bc, t),
                Shard::put_push_endpoint(service, bc, t),
            ])
            .await?;
        tracing::info!(service = %service, mode = bc.name(), "back channel set");
        Ok(())
    }
}
