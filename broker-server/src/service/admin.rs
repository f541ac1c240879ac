//! The administrators' signed requests: services, cards and holders, enrolments, and the
//! credentials they make.

use crate::envelope::SealedRecord;
use crate::store::{CredentialRow, Shard};
use broker_protocol::api::{AdminRequest, AdminResponse, Method, ServicePolicy};
use broker_protocol::envelope::KeyKind;
use kagi_db::StoreError;
use kagi_signed::password;
use kagi_signed::signing::{self};
use zeroize::Zeroizing;

use super::{Broker, BrokerError, Result, random, refuse};

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
                let keep = h.expires_at.saturating_add(self.config.policy.max_skew_ms) as i64;
                if !self
                    .shards
                    .first()
                    .first_seen(&h.sender.0, &h.msg_id.to_hex(), keep)
                    .await?
                {
                    AdminResponse::Rejected {
                        code: "protocol.replayed".into(),
                        detail: "this request was already received".into(),
                    }
                } else {
                    match self.handle_admin(env.body).await {
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

    async fn handle_admin(&self, req: AdminRequest) -> Result<AdminResponse> {
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
                self.enrol(&card, &service, false).await
            }
            AdminRequest::RotateServiceKey { card, service } => {
                self.enrol(&card, &service, true).await
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
                self.shards
                    .everywhere(vec![Shard::put_setting("current_kek", &to)])
                    .await?;
                let (rewrapped, remaining) = self.rewrap_some(&to, 20_000).await?;
                Ok(AdminResponse::Rotation {
                    kek: to,
                    rewrapped,
                    remaining,
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
    async fn enrol(&self, card: &str, service: &str, rotate: bool) -> Result<AdminResponse> {
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
        match shard.commit(batch).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                return Err(refuse(
                    "admin.conflict",
                    "another request changed this credential meanwhile: ask again",
                )
                .into());
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(card = %card, service = %service, version, "credential made");
        Ok(AdminResponse::Credential {
            version: version as u32,
            public_key: secret.public_key,
            shared_key: (policy.method == Method::Mac).then(|| secret.secret.to_vec()),
        })
    }
}
