//! Holders' card logins: the stateless challenge, the card's signature over it checked
//! against its certificate and the card CAs, and the session it opens (the password login is
//! in `password_login`).

use crate::store::Shard;
use broker_protocol::api::{self, ApiError, CardLogin, Challenge, Session};
use broker_protocol::assertion::Assurance;
use kagi_db::StoreError;
use kagi_signed::certkey::CertKey;
use sha2::{Digest, Sha256};

use super::{Broker, Result, random, refuse};

impl Broker {
    /// A login challenge: 16 random bytes and an expiry, MAC'd (stateless, valid 2 minutes).
    pub fn challenge(&self) -> Result<Challenge> {
        let r = random::<16>()?;
        let expires = (self.now() / 1000 + 120) as u64;
        let mut nonce = r.to_vec();
        nonce.extend_from_slice(&expires.to_be_bytes());
        let tag = self.mac(&[b"challenge", &nonce])?;
        nonce.extend_from_slice(&tag[..16]);
        Ok(Challenge {
            nonce: api::b64(&nonce),
            broker: self.config.name.clone(),
            expires_at: expires,
        })
    }

    /// Checks a challenge this broker issued; returns its expiry (Unix seconds).
    fn check_challenge(&self, nonce: &[u8]) -> std::result::Result<i64, ApiError> {
        let bad = || {
            refuse(
                "login.bad-challenge",
                "not a challenge of this broker: ask for a new one",
            )
        };
        if nonce.len() != 40 {
            return Err(bad());
        }
        let tag = self.mac(&[b"challenge", &nonce[..24]]).map_err(|_| bad())?;
        if !kagi_signed::access::same(
            &{
                let mut t = [0u8; 32];
                t[..16].copy_from_slice(&tag[..16]);
                t
            },
            &{
                let mut t = [0u8; 32];
                t[..16].copy_from_slice(&nonce[24..]);
                t
            },
        ) {
            return Err(bad());
        }
        let expires = u64::from_be_bytes(nonce[16..24].try_into().map_err(|_| bad())?) as i64;
        if expires < self.now() / 1000 {
            return Err(refuse(
                "login.challenge-expired",
                "the challenge expired: ask for a new one",
            ));
        }
        Ok(expires)
    }

    fn session_token(&self, card: &str) -> Result<(String, [u8; 32])> {
        let shard = self.shards.index_of(card);
        let r = random::<32>()?;
        let token = format!("{shard}.{}", api::b64(r.as_ref()));
        Ok((token.clone(), Sha256::digest(token.as_bytes()).into()))
    }

    /// A card login: the card signed [`api::login_message`] of a fresh challenge with its
    /// user-authentication key; the certificate chains to a trusted CA, is valid now, is not
    /// revoked, and its card is enrolled and not revoked here.
    pub async fn login_card(&self, l: &CardLogin) -> Result<Session> {
        use der::{Decode, Encode};
        let nonce = api::unb64(&l.nonce)
            .ok_or_else(|| refuse("login.malformed", "nonce is not base64url"))?;
        let nonce_expiry = self.check_challenge(&nonce)?;
        let der = api::unb64(&l.certificate)
            .ok_or_else(|| refuse("login.malformed", "certificate is not base64url"))?;
        let sig = api::unb64(&l.signature)
            .ok_or_else(|| refuse("login.malformed", "signature is not base64url"))?;
        let cert = x509_cert::Certificate::from_der(&der).map_err(|e| {
            refuse(
                "login.bad-certificate",
                format!("the certificate does not parse: {e}"),
            )
        })?;
        let card = kagi_certs::subject_cn(&cert)
            .ok_or_else(|| refuse("login.bad-certificate", "the certificate names no card"))?;
        let trust = self.config.card_trust.current()?;
        let judged = kagi_certs::judge(&der, &trust, std::time::SystemTime::now());
        match judged.verdict {
            kagi_certs::Verdict::Eligible => {}
            kagi_certs::Verdict::Revoked => {
                self.audit(&card, "", Assurance::Card, "login", "login.revoked")
                    .await?;
                return Err(refuse("login.revoked", "the certificate is revoked").into());
            }
            kagi_certs::Verdict::Expired => {
                return Err(refuse("login.expired", "the certificate is not valid now").into());
            }
            kagi_certs::Verdict::UnknownIssuer => {
                return Err(refuse(
                    "login.unknown-issuer",
                    format!(
                        "no trusted CA issued this certificate ({})",
                        judged.issuer.unwrap_or_default()
                    ),
                )
                .into());
            }
            kagi_certs::Verdict::NotAJpkiCard => {
                return Err(refuse("login.bad-certificate", judged.reasons.join("; ")).into());
            }
        }
        let spki = cert.tbs_certificate().subject_public_key_info().to_der()?;
        let key = CertKey::from_spki(&spki)
            .map_err(|e| refuse("login.bad-certificate", e.to_string()))?;
        if key
            .verify(&api::login_message(&self.config.name, &nonce), &sig)
            .is_err()
        {
            return Err(refuse("login.bad-signature", "the card's signature does not verify: wrong PIN-protected key, or another challenge").into());
        }
        let shard = self.shards.of(&card);
        match shard.card(&card).await? {
            None => {
                return Err(refuse(
                    "login.not-enrolled",
                    format!("card {card} is not enrolled at this broker"),
                )
                .into());
            }
            Some(c) if c.state != "active" => {
                self.audit(&card, "", Assurance::Card, "login", "login.revoked")
                    .await?;
                return Err(refuse("login.revoked", format!("card {card} is revoked")).into());
            }
            Some(_) => {}
        }
        self.open_session(shard, &card, Assurance::Card, Some((&nonce, nonce_expiry)))
            .await
    }

    pub(crate) async fn open_session(
        &self,
        shard: &Shard,
        card: &str,
        assurance: Assurance,
        nonce: Option<(&[u8], i64)>,
    ) -> Result<Session> {
        let (token, hash) = self.session_token(card)?;
        let t = self.now();
        let expires = t / 1000 + self.config.session_secs as i64;
        let mut batch = Vec::new();
        if let Some((n, exp)) = nonce {
            batch.push(Shard::use_nonce(n, exp * 1000));
        }
        // The card must still be active when the session is written: a revoke committed
        // first fails this batch, one after it ends the session.
        let guard = batch.len();
        batch.push(Shard::still_active(card, t));
        batch.push(Shard::put_session(&hash, card, assurance, expires));
        batch.push(Shard::audit(card, t, "", assurance.name(), "login", "ok"));
        match shard.commit(batch).await {
            Ok(()) => {}
            Err(StoreError::Conflict(0)) if nonce.is_some() => {
                return Err(refuse(
                    "login.replayed",
                    "this challenge was already used: ask for a new one",
                )
                .into());
            }
            Err(StoreError::Conflict(i)) if i == guard => {
                return Err(refuse("login.revoked", format!("card {card} is revoked")).into());
            }
            Err(e) => return Err(e.into()),
        }
        tracing::info!(card = %card, assurance = assurance.name(), "login");
        Ok(Session {
            session: token,
            assurance,
            expires_at: expires as u64,
        })
    }

    /// The card and assurance of a live session, if its card is still active.
    pub(super) async fn session(&self, token: &str) -> Result<(String, Assurance, &Shard)> {
        let bad = || {
            refuse(
                "session.unknown",
                "no such session (expired or ended): log in again",
            )
        };
        let shard = token
            .split_once('.')
            .and_then(|(i, _)| i.parse::<usize>().ok())
            .and_then(|i| self.shards.get(i))
            .ok_or_else(bad)?;
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let (card, assurance) = shard
            .session(&hash, self.now() / 1000)
            .await?
            .ok_or_else(bad)?;
        match shard.card(&card).await? {
            Some(c) if c.state == "active" => Ok((card, assurance, shard)),
            _ => Err(refuse("session.revoked", "the card is revoked").into()),
        }
    }

    pub(super) async fn audit(
        &self,
        card: &str,
        service: &str,
        a: Assurance,
        event: &str,
        outcome: &str,
    ) -> Result<()> {
        self.shards
            .of(card)
            .commit(vec![Shard::audit(
                card,
                self.now(),
                service,
                a.name(),
                event,
                outcome,
            )])
            .await?;
        Ok(())
    }
}
