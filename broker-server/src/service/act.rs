//! Acting for a logged-in holder at a service: a MAC or a signature with the card's
//! service key (opened for the request only), or a signed assertion; the holder's audit
//! trail.

use crate::store::{CredentialRow, Shard};
use broker_protocol::api::{self, Act, ActResult, AuditEntry, BackChannel, Method, ServicePolicy};
use broker_protocol::assertion::{self, Assurance, Claims};
use broker_protocol::envelope::KeyUse;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::back_channel::ProofInput;
use super::{Broker, BrokerError, Result, random, refuse};

impl Broker {
    /// Acts for the holder at a service: checks the session, the card, the consent and the
    /// service's policy, then answers the service's challenge with the card's key for it, or
    /// signs an assertion.
    pub async fn act(&self, a: &Act) -> Result<ActResult> {
        let (card, assurance, shard) = self.session(&a.session).await?;
        let result = self.act_for(&card, assurance, shard, a).await;
        let outcome = match &result {
            Ok(_) => "ok".to_string(),
            Err(BrokerError::Refused(e)) => e.code.clone(),
            Err(_) => "error".to_string(),
        };
        shard
            .commit(vec![Shard::audit(
                &card,
                self.now(),
                &a.service,
                assurance.name(),
                "act",
                &outcome,
            )])
            .await?;
        result
    }

    async fn act_for(
        &self,
        card: &str,
        assurance: Assurance,
        shard: &Shard,
        a: &Act,
    ) -> Result<ActResult> {
        if !a.consent {
            return Err(refuse(
                "act.no-consent",
                "the holder has not consented to this service",
            )
            .into());
        }
        // An unknown service and one this card has no credential for answer alike (the
        // holder learns nothing about services that are not theirs).
        let not_yours = || {
            refuse(
                "act.not-enrolled",
                format!("the card has no credential for {}", a.service),
            )
        };
        let policy = shard.service(&a.service).await?.ok_or_else(not_yours)?;
        let cred = shard
            .active_credential(card, &a.service)
            .await?
            .ok_or_else(not_yours)?;
        if assurance < policy.min_assurance {
            return Err(refuse(
                "act.assurance",
                format!(
                    "{} requires a {} login",
                    policy.id,
                    policy.min_assurance.name()
                ),
            )
            .into());
        }
        let hour = ((self.now() / 3_600_000) % 24) as u8;
        if !policy.allows_hour(hour) {
            return Err(refuse(
                "act.outside-hours",
                format!("{} is not available at {hour}:00 UTC", policy.id),
            )
            .into());
        }
        let input = match policy.method {
            Method::Assertion => ProofInput::Nonce(
                a.nonce
                    .clone()
                    .filter(|n| !n.is_empty() && n.len() <= 256)
                    .ok_or_else(|| {
                        refuse("act.no-nonce", "an assertion needs the service's nonce")
                    })?,
            ),
            _ => ProofInput::Challenge(
                a.challenge
                    .as_deref()
                    .and_then(api::unb64)
                    .filter(|c| !c.is_empty() && c.len() <= 1024)
                    .ok_or_else(|| {
                        refuse(
                            "act.no-challenge",
                            "this service needs its challenge (1 to 1024 bytes, base64url)",
                        )
                    })?,
            ),
        };
        // A service with a back channel gets the proof from the broker, not from the holder.
        match shard.back_channel(&policy.id).await? {
            BackChannel::Code { code_secs, .. } => {
                self.issue_code(shard, card, assurance, &policy, &input, code_secs)
                    .await
            }
            BackChannel::Push { url, service_ca } => {
                let proof = self.prove(card, assurance, &policy, &cred, &input)?;
                self.push(&cred.pairwise, &input, proof, &url, &service_ca)
                    .await
            }
            BackChannel::Relayed => self.prove(card, assurance, &policy, &cred, &input),
        }
    }

    /// The proof for `input` with the card's credential for the service (a MAC or a
    /// signature over the challenge, or an assertion for the nonce).
    pub(super) fn prove(
        &self,
        card: &str,
        assurance: Assurance,
        policy: &ServicePolicy,
        cred: &CredentialRow,
        input: &ProofInput,
    ) -> Result<ActResult> {
        let mut out = ActResult {
            service: policy.id.clone(),
            method: policy.method,
            mac: None,
            signature: None,
            assertion: None,
            code: None,
            delivered: false,
        };
        let challenge = || match input {
            ProofInput::Challenge(c) => Ok(c.as_slice()),
            ProofInput::Nonce(_) => Err(refuse(
                "act.no-challenge",
                "this service needs its challenge (1 to 1024 bytes, base64url)",
            )),
        };
        match policy.method {
            Method::Assertion => {
                let ProofInput::Nonce(nonce) = input else {
                    return Err(
                        refuse("act.no-nonce", "an assertion needs the service's nonce").into(),
                    );
                };
                let iat = (self.now() / 1000) as u64;
                let claims = Claims {
                    iss: self.config.name.clone(),
                    sub: cred.pairwise.clone(),
                    aud: policy.id.clone(),
                    iat,
                    exp: iat + 120,
                    nonce: nonce.clone(),
                    acr: assurance.acr().into(),
                    jti: api::b64(random::<16>()?.as_ref()),
                };
                out.assertion = Some(
                    assertion::sign(&self.config.assertion_key, &claims)
                        .map_err(|e| BrokerError::Sign(e.to_string()))?,
                );
            }
            Method::Mac => {
                let c = challenge()?;
                if let Some(mac) = self.use_inside(cred, KeyUse::Cmac(c))? {
                    out.mac = Some(api::b64(&mac));
                    return Ok(self.acted(card, policy, out));
                }
                let secret = self.open(cred)?;
                let key = card_wire::scp03::AesKey::new(&secret)
                    .map_err(|_| BrokerError::CorruptKey("MAC"))?;
                out.mac = Some(api::b64(&card_wire::scp03::crypto::cmac(&key, c)));
            }
            Method::SignP256 => {
                use p256::ecdsa::signature::Signer as _;
                let c = challenge()?;
                if let Some(sig) = self.use_inside(cred, KeyUse::EcdsaSha256(c))? {
                    out.signature = Some(api::b64(&sig));
                    return Ok(self.acted(card, policy, out));
                }
                let secret = self.open(cred)?;
                let key = p256::ecdsa::SigningKey::from_slice(&secret)
                    .map_err(|_| BrokerError::CorruptKey("P-256"))?;
                let sig: p256::ecdsa::Signature = key.sign(c);
                out.signature = Some(api::b64(&sig.to_bytes()));
            }
            Method::SignRsa => {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                use rsa::signature::{SignatureEncoding, Signer as _};
                let c = challenge()?;
                if let Some(sig) = self.use_inside(cred, KeyUse::RsaSha256(c))? {
                    out.signature = Some(api::b64(&sig));
                    return Ok(self.acted(card, policy, out));
                }
                let secret = self.open(cred)?;
                let key = rsa::PrivateKey::from_pkcs1_der(&secret)
                    .map_err(|_| BrokerError::CorruptKey("RSA"))?;
                let sig = rsa::pkcs1v15::SigningKey::<Sha256>::new(key).sign(c);
                out.signature = Some(api::b64(&sig.to_vec()));
            }
        }
        Ok(self.acted(card, policy, out))
    }

    fn acted(&self, card: &str, policy: &ServicePolicy, out: ActResult) -> ActResult {
        tracing::info!(card = %card, service = %policy.id, method = policy.method.name(), "acted");
        out
    }

    /// Uses the credential inside the key store if its record is of that form (`None`: the
    /// record is of the data-key form, to be opened here).
    fn use_inside(&self, cred: &CredentialRow, u: KeyUse<'_>) -> Result<Option<Vec<u8>>> {
        self.config
            .envelope
            .use_key(
                &CredentialRow::aad(&cred.card, &cred.service, cred.version),
                &cred.sealed,
                u,
            )
            .map_err(BrokerError::Keys)
    }

    pub(super) fn open(&self, cred: &CredentialRow) -> Result<Zeroizing<Vec<u8>>> {
        self.config
            .envelope
            .open(
                &CredentialRow::aad(&cred.card, &cred.service, cred.version),
                &cred.sealed,
            )
            .map_err(BrokerError::Keys)
    }

    /// The holder's own audit trail: who (which service), when, with which assurance.
    pub async fn holder_audit(&self, token: &str) -> Result<Vec<AuditEntry>> {
        let (card, _, shard) = self.session(token).await?;
        Ok(shard.audit_trail(Some(&card)).await?)
    }
}
