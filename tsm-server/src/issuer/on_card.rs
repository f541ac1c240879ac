//! The on-card mode (the preferred one: the phone's private key never leaves the SIM). The
//! issuer hands out a challenge — an ephemeral P-256 point and a fresh nonce — for one SIM,
//! applet instance and request ([`Issuer::challenge`]); the SIM's JPKI applet generates the
//! key under the provider's secure channel and answers its public key, a proof of possession
//! over the nonce and the card's tag under its manufacturer-certified key agreement key
//! (`card_wire::keygen`). Certify spends the nonce — one conditional update from `open` to
//! `used`, so two racing requests cannot both use it — and checks the proof
//! ([`Issuer::on_card_key`]); then the key is certified as in the seed mode.
//!
//! No secret is stored for a challenge: its ephemeral key is derived again from the issuer's
//! challenge secret and the nonce (HMAC-SHA256, a counter byte until the bytes are a scalar).

use super::{Issuer, IssuerError, now_ms, reject, store};
use card_wire::keygen::{self, KeygenError};
use hmac::{KeyInit as _, Mac};
use kagi_db::{Stmt, StoreError};
use tsm_protocol::issuer::IssuerResponse;
use tsm_protocol::seal::SealTarget;
use tsm_protocol::{IdempotencyKey, Layer, PartyId};

/// How long a challenge may be answered.
pub const CHALLENGE_TTL_MS: i64 = 600_000;

/// The SIM's answer to a challenge, as a Certify carries it.
#[derive(Debug, Clone, Copy)]
pub(super) struct OnCard<'a> {
    /// The challenge's nonce.
    pub nonce: &'a [u8],
    /// The applet's answer (`card_wire::keygen`).
    pub proof: &'a [u8],
}

/// The challenge's ephemeral key for `nonce`, derived from the issuer's challenge secret.
fn ephemeral(secret: &[u8; 32], nonce: &[u8]) -> Result<p256::SecretKey, IssuerError> {
    for counter in 0u8..=255 {
        let mut h = <hmac::Hmac<sha2::Sha256>>::new_from_slice(secret)
            .map_err(|e| IssuerError::Internal(e.to_string()))?;
        h.update(b"kagi issuer challenge v1\0");
        h.update(nonce);
        h.update(&[counter]);
        let bytes = zeroize::Zeroizing::new(h.finalize().into_bytes());
        if let Ok(k) = p256::SecretKey::from_slice(&bytes) {
            return Ok(k);
        }
    }
    Err(IssuerError::Internal(
        "no challenge key could be derived".into(),
    ))
}

fn keygen_code(e: &KeygenError) -> &'static str {
    match e {
        KeygenError::Possession => "keygen.possession",
        KeygenError::NotThisCard => "keygen.not-this-sim",
        KeygenError::Malformed(_) | KeygenError::BadChallenge => "keygen.malformed",
        KeygenError::Random(_) => "keygen.random",
    }
}

impl Issuer {
    /// A challenge for the SIM `iccid` (its certificate checked against the manufacturer CA)
    /// and applet `instance`, under `request_id`.
    pub(super) async fn challenge(
        &self,
        sender: &PartyId,
        iccid: &str,
        card_certificate: &[u8],
        instance: &[u8],
        request_id: &IdempotencyKey,
    ) -> Result<IssuerResponse, IssuerError> {
        if let Err(e) = SealTarget::verify(
            &self.config.manufacturer_ca,
            card_certificate,
            iccid,
            std::time::SystemTime::now(),
        ) {
            return Ok(reject(
                Layer::Business,
                "issuer.card-certificate",
                format!(
                    "the SIM's key agreement certificate does not check against the card manufacturer's CA: {e}"
                ),
            ));
        }
        let mut nonce = [0u8; keygen::NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| IssuerError::Internal(e.to_string()))?;
        let eph = ephemeral(&self.config.challenge_key, &nonce)?;
        let expires_at = now_ms() + CHALLENGE_TTL_MS;
        self.db
            .commit(vec![
                Stmt::one(
                    "INSERT INTO challenges (nonce, sp_tsm, iccid, instance, request_id, state, expires_at)
                     VALUES ($1, $2, $3, $4, $5, 'open', $6)",
                    vec![
                        hex::encode(nonce).into(),
                        sender.0.clone().into(),
                        iccid.into(),
                        hex::encode(instance).into(),
                        request_id.to_hex().into(),
                        expires_at.into(),
                    ],
                ),
                store::audit(now_ms(), &sender.0, "challenge", &format!("SIM {iccid}")),
            ])
            .await?;
        Ok(IssuerResponse::Challenge {
            challenge: keygen::challenge(&eph, &nonce),
            expires_at: expires_at as u64,
        })
    }

    /// Spends the challenge `c.nonce` (it must be this SP-TSM's, for this SIM, instance and
    /// request, open and not expired) and checks the SIM's proof: the new public key, or the
    /// refusal (`keygen.*`, each its own code).
    pub(super) async fn on_card_key(
        &self,
        sender: &PartyId,
        target: &SealTarget,
        instance: &[u8],
        request_id: &IdempotencyKey,
        c: OnCard<'_>,
    ) -> Result<Result<p256::PublicKey, IssuerResponse>, IssuerError> {
        if c.nonce.len() != keygen::NONCE_LEN {
            return Ok(Err(reject(
                Layer::Protocol,
                "keygen.malformed",
                "the challenge nonce is 32 bytes: send the nonce of the issuer's challenge",
            )));
        }
        let nonce_hex = hex::encode(c.nonce);
        let spent = self
            .db
            .commit(vec![Stmt::one(
                "UPDATE challenges SET state = 'used'
                 WHERE nonce = $1 AND sp_tsm = $2 AND iccid = $3 AND instance = $4
                 AND request_id = $5 AND state = 'open' AND expires_at > $6",
                vec![
                    nonce_hex.clone().into(),
                    sender.0.clone().into(),
                    target.iccid().into(),
                    hex::encode(instance).into(),
                    request_id.to_hex().into(),
                    now_ms().into(),
                ],
            )])
            .await;
        match spent {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => {
                let rows = self
                    .db
                    .query(
                        "SELECT state FROM challenges WHERE nonce = $1",
                        vec![nonce_hex.into()],
                    )
                    .await?;
                let used = rows.first().is_some_and(|r| r[0].text() == "used");
                tracing::warn!(sender = %sender, iccid = target.iccid(), used, "on-card key challenge refused");
                return Ok(Err(if used {
                    reject(
                        Layer::Business,
                        "keygen.replayed",
                        "this challenge was already used (replay): ask the issuer for a fresh challenge and generate the key again",
                    )
                } else {
                    reject(
                        Layer::Business,
                        "keygen.unknown-challenge",
                        "no open challenge of this SP-TSM has this nonce for this SIM, applet instance and request (unknown or expired): ask for a fresh challenge",
                    )
                }));
            }
            Err(e) => return Err(e.into()),
        }
        let eph = ephemeral(&self.config.challenge_key, c.nonce)?;
        let id = keygen::Identity {
            iccid: target.iccid(),
            card_serial: target.serial(),
            instance,
            key_fid: card_wire::jpki::EF_AUTH_KEY,
        };
        match keygen::verify(target.public_key(), &id, &eph, c.nonce, c.proof) {
            Ok(k) => Ok(Ok(k)),
            Err(e) => {
                tracing::warn!(sender = %sender, iccid = target.iccid(), code = keygen_code(&e), "on-card key proof refused");
                Ok(Err(reject(Layer::Business, keygen_code(&e), e.to_string())))
            }
        }
    }
}
