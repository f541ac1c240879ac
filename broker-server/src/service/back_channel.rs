//! The back channel, one-time-code mode: for a service registered with
//! [`BackChannel::Code`], an act gives the holder's client only a single-use code; the
//! service redeems it at the broker with a request signed by its own key and receives the
//! proof for its own challenge (or nonce). The holder's device never carries the proof.
//!
//! A code is 256 random bits (with its shard's index in front), stored only as its SHA-256,
//! bound to the service and to its challenge, valid the service's `code_secs`, and redeemed
//! by one conditional update — at most once, only by its service, only for its challenge.

use crate::store::Shard;
use crate::store::back_channel::CodeRow;
use broker_protocol::api::{self, ActResult, BackChannel, Redeem, ServicePolicy};
use broker_protocol::assertion::Assurance;
use kagi_db::StoreError;
use kagi_signed::ids::PartyId;
use kagi_signed::signing::{self, Kind, Sealed, Trust};
use sha2::{Digest, Sha256};

use super::{Broker, Result, random, refuse};

/// What a proof is made over: a MAC or signature service's challenge, an assertion
/// service's nonce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofInput {
    /// The challenge (1 to 1024 bytes).
    Challenge(Vec<u8>),
    /// The nonce (1 to 256 characters).
    Nonce(String),
}

impl ProofInput {
    /// What a code is bound to: SHA-256 over a tag and the input.
    pub fn binding(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        match self {
            ProofInput::Challenge(c) => {
                h.update(b"kagi-broker code challenge\0");
                h.update(c);
            }
            ProofInput::Nonce(n) => {
                h.update(b"kagi-broker code nonce\0");
                h.update(n.as_bytes());
            }
        }
        h.finalize().into()
    }
}

/// The longest a code may live, seconds.
pub const MAX_CODE_SECS: u32 = 600;

fn code_hash(code: &str) -> [u8; 32] {
    Sha256::digest(code.as_bytes()).into()
}

impl Broker {
    /// Makes a code for the holder's act and stores its hash; the answer carries the code
    /// and no proof.
    pub(super) async fn issue_code(
        &self,
        shard: &Shard,
        card: &str,
        assurance: Assurance,
        policy: &ServicePolicy,
        input: &ProofInput,
        code_secs: u32,
    ) -> Result<ActResult> {
        let index = self.shards.index_of(card);
        let code = format!("{index}.{}", api::b64(random::<32>()?.as_ref()));
        let t = self.now();
        let row = CodeRow {
            card: card.into(),
            service: policy.id.clone(),
            binding: input.binding().to_vec(),
            assurance,
            expires_at: t + i64::from(code_secs.clamp(1, MAX_CODE_SECS)) * 1000,
            redeemed_at: None,
        };
        shard
            .commit(vec![Shard::put_code(&code_hash(&code), &row, t)])
            .await?;
        tracing::info!(card = %card, service = %policy.id, "back-channel code issued");
        Ok(ActResult {
            service: policy.id.clone(),
            method: policy.method,
            mac: None,
            signature: None,
            assertion: None,
            code: Some(code),
            delivered: false,
        })
    }

    /// A service redeems a code (`body`: a [`Redeem`] signed by the service's registered
    /// key as `sp:<service>`, to this broker): the proof for the service's challenge or
    /// nonce, once. Refusals: `redeem.malformed`, `redeem.forged` (not signed by the key
    /// registered for the service's codes — also when the service is not in code mode: before
    /// the signature is checked the answer tells nothing about the mode),
    /// `redeem.unknown-code`, `redeem.misdirected` (made for another service),
    /// `redeem.replayed`, `redeem.expired`, `redeem.wrong-challenge`, `redeem.revoked`.
    pub async fn redeem(&self, body: &[u8]) -> Result<ActResult> {
        let malformed = |why: String| refuse("redeem.malformed", why);
        let sealed = Sealed::from_bytes(body).map_err(|e| malformed(e.to_string()))?;
        let claimed = sealed.peek_header().map_err(|e| malformed(e.to_string()))?;
        let service = match claimed.sender.0.split_once(':') {
            Some(("sp", name)) => name.to_string(),
            _ => {
                return Err(refuse(
                    "redeem.forged",
                    format!(
                        "{} is not a service party (sp:<service id>)",
                        claimed.sender
                    ),
                )
                .into());
            }
        };
        // Until the signature is checked, every refusal is this one, whatever the service's
        // mode: an unauthenticated caller learns nothing about it (the reason is logged).
        let forged = |why: String| {
            tracing::info!(service = %service, reason = %why, "redemption refused as forged");
            refuse(
                "redeem.forged",
                format!(
                    "the redemption is not a valid request signed by the key {} registered for one-time codes",
                    claimed.sender
                ),
            )
        };
        let BackChannel::Code { service_key, .. } =
            self.shards.first().back_channel(&service).await?
        else {
            return Err(forged(format!("service {service} is not in code mode")).into());
        };
        let key = {
            use p256::pkcs8::DecodePublicKey;
            p256::ecdsa::VerifyingKey::from_public_key_der(&service_key).map_err(|e| {
                forged(format!(
                    "the key registered for {service} is not a P-256 key ({e}): register it again"
                ))
            })?
        };
        let mut trust = Trust::new();
        trust.add(
            PartyId::new(&api::service_party(&service)).map_err(|e| malformed(e.to_string()))?,
            key,
        );
        let env = signing::verify::<Redeem>(
            &sealed,
            Kind::ControlRequest,
            &trust,
            &self.config.policy,
            signing::now_ms(),
        )
        .map_err(|e| forged(e.to_string()))?;
        let r = env.body;
        if r.service != service {
            return Err(refuse(
                "redeem.forged",
                format!("{} signed a redemption for {}", claimed.sender, r.service),
            )
            .into());
        }
        let input = match (&r.challenge, &r.nonce) {
            (Some(c), None) => ProofInput::Challenge(
                api::unb64(c)
                    .filter(|c| !c.is_empty() && c.len() <= 1024)
                    .ok_or_else(|| {
                        malformed("the challenge is not 1 to 1024 bytes of base64url".into())
                    })?,
            ),
            (None, Some(n)) if !n.is_empty() && n.len() <= 256 => ProofInput::Nonce(n.clone()),
            _ => {
                return Err(malformed(
                    "give the challenge (MAC and signature services) or the nonce (assertion services)".into(),
                )
                .into());
            }
        };
        let unknown = || {
            refuse(
                "redeem.unknown-code",
                "no such code: the holder's client must log in again",
            )
        };
        let shard = r
            .code
            .split_once('.')
            .and_then(|(i, _)| i.parse::<usize>().ok())
            .and_then(|i| self.shards.get(i))
            .ok_or_else(unknown)?;
        let hash = code_hash(&r.code);
        // The card, to guard the redemption; the decision is the conditional update's.
        let row = shard.code(&hash).await?.ok_or_else(unknown)?;
        let t = self.now();
        let binding = input.binding();
        let batch = vec![
            Shard::redeem_code(&hash, &service, &binding, t),
            Shard::still_active(&row.card, t),
            Shard::audit(&row.card, t, &service, row.assurance.name(), "redeem", "ok"),
        ];
        match shard.commit(batch).await {
            Ok(()) => {}
            Err(StoreError::Conflict(0)) => {
                let why = self
                    .why_not_redeemed(shard, &hash, &service, &binding, t)
                    .await?;
                self.audit(&row.card, &service, row.assurance, "redeem", &why.code)
                    .await?;
                return Err(why.into());
            }
            Err(StoreError::Conflict(1)) => {
                return Err(refuse("redeem.revoked", "the holder's card is revoked").into());
            }
            Err(e) => return Err(e.into()),
        }
        let not_enrolled = || {
            refuse(
                "redeem.revoked",
                format!("the card has no credential for {service} any more"),
            )
        };
        let policy = shard.service(&service).await?.ok_or_else(not_enrolled)?;
        let cred = shard
            .active_credential(&row.card, &service)
            .await?
            .ok_or_else(not_enrolled)?;
        self.prove(&row.card, row.assurance, &policy, &cred, &input)
    }

    /// Why the conditional update found no code to redeem (read after it, to explain).
    async fn why_not_redeemed(
        &self,
        shard: &Shard,
        hash: &[u8; 32],
        service: &str,
        binding: &[u8],
        now: i64,
    ) -> Result<api::ApiError> {
        let Some(row) = shard.code(hash).await? else {
            return Ok(refuse("redeem.unknown-code", "no such code"));
        };
        Ok(if row.service != service {
            refuse(
                "redeem.misdirected",
                "this code was made for another service",
            )
        } else if row.redeemed_at.is_some() {
            refuse(
                "redeem.replayed",
                "this code was already redeemed: the holder's client must log in again",
            )
        } else if row.expires_at <= now {
            refuse(
                "redeem.expired",
                "this code expired: the holder's client must log in again",
            )
        } else if !kagi_signed::access::same(
            &<[u8; 32]>::try_from(row.binding.as_slice()).unwrap_or([0; 32]),
            &<[u8; 32]>::try_from(binding).unwrap_or([1; 32]),
        ) {
            refuse(
                "redeem.wrong-challenge",
                "this code was made for another challenge of this service: start the login again",
            )
        } else {
            // Redeemable now: it changed between the update and this read (cannot happen
            // for one code; answered as a conflict to retry).
            refuse("redeem.conflict", "the code changed meanwhile: ask again")
        })
    }
}
