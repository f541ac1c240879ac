//! PIN reset only after a fresh signature with the My Number card (issue #16's lifecycle):
//! the holder signs a **pin-reset** application (`kagi_certs::application::Kind::PinReset`,
//! its own signature domain) naming the SIM and provider; the issuer checks it like an issue
//! application (signature, signature CA, its CRL, freshness, SIM and provider) and that it is
//! signed by the **same card** the phone certificate is linked to (`application.other-card`
//! otherwise), records its nonce (a replay is `application.replayed`) in the transaction that
//! also requires the link to be still active, and answers a fresh PIN sealed to the SIM for the
//! applet's PIN file — the holder's letter goes to the PIN mailer as at issue. Once per
//! idempotency key ([`Issuer::once`], as an issue): a retry after a lost answer gets the same
//! sealed PIN (kept [`store::ISSUE_ANSWER_KEEP_MS`]), not a replay refusal.

use super::{Issuer, IssuerError, new_pin, now_ms, reject, store};
use kagi_db::{Stmt, StoreError};
use sha2::{Digest, Sha256};
use std::time::SystemTime;
use tsm_protocol::issuer::IssuerResponse;
use tsm_protocol::seal::SealTarget;
use tsm_protocol::{IdempotencyKey, Layer, PartyId};

impl Issuer {
    /// [`tsm_protocol::issuer::IssuerRequest::ResetPin`] from `sender`, at most once per
    /// idempotency key.
    pub(super) async fn reset_pin(
        &self,
        sender: &PartyId,
        application: &[u8],
        serial: &str,
        card_certificate: &[u8],
        instance: &[u8],
        request_id: &IdempotencyKey,
    ) -> Result<IssuerResponse, IssuerError> {
        let hash = tsm_protocol::codec::encode(&(
            "reset-pin",
            serial,
            application,
            card_certificate,
            instance,
        ))
        .map(|b| Sha256::digest(b).to_vec())
        .map_err(|e| IssuerError::Internal(e.to_string()))?;
        let key = request_id.to_hex();
        let work = async || {
            self.reset_pin_now(
                sender,
                application,
                serial,
                card_certificate,
                instance,
                request_id,
            )
            .await
        };
        match self.once(sender, &key, &hash, work, |_| false).await? {
            Ok(answer) => Ok(answer),
            Err(_) => Err(IssuerError::Internal(
                "a PIN reset's idempotency record was diverted".into(),
            )),
        }
    }

    /// The PIN reset itself, its answer recorded under the claimed key.
    async fn reset_pin_now(
        &self,
        sender: &PartyId,
        application: &[u8],
        serial: &str,
        card_certificate: &[u8],
        instance: &[u8],
        request_id: &IdempotencyKey,
    ) -> Result<IssuerResponse, IssuerError> {
        use kagi_certs::application as app;
        let Some(link) = store::link(&self.db, serial)
            .await?
            .filter(|l| l.sp_tsm == sender.0)
        else {
            return Ok(reject(
                Layer::Business,
                "issuer.unknown-certificate",
                format!("no phone certificate {serial} was issued to {sender}"),
            ));
        };
        if link.state != "active" {
            return Ok(reject(
                Layer::Business,
                "issuer.not-active",
                format!(
                    "phone certificate {serial} is {}: only an active one gets a new PIN",
                    link.state
                ),
            ));
        }
        let now = SystemTime::now();
        let trust = match self.sign_trust() {
            Ok(t) => t,
            Err(answer) => return Ok(*answer),
        };
        let expect = app::Expect {
            iccid: &link.iccid,
            provider: &link.provider,
            now,
            max_age: self.config.max_age,
        };
        let verified = match app::check_kind(application, &trust, &expect, app::Kind::PinReset) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(sender = %sender, code = e.code(), "pin-reset application refused");
                return Ok(reject(
                    Layer::Business,
                    &format!("application.{}", e.code()),
                    e.to_string(),
                ));
            }
        };
        if verified.sign_serial != link.sign_serial {
            return Ok(reject(
                Layer::Business,
                "application.other-card",
                format!(
                    "the pin-reset application is signed by the card of signature certificate {}, the phone certificate is linked to {}: sign with that My Number card",
                    verified.sign_serial, link.sign_serial
                ),
            ));
        }
        let target = match SealTarget::verify(
            &self.config.manufacturer_ca,
            card_certificate,
            &link.iccid,
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
        let pin = new_pin().map_err(IssuerError::Internal)?;
        let sealed_pin =
            tsm_protocol::seal::seal_pin(&target, instance, request_id, pin.as_bytes())
                .map_err(IssuerError::Internal)?;
        let answer = IssuerResponse::PinReset {
            serial: serial.into(),
            sealed_pin,
        };
        let encoded = tsm_protocol::codec::encode(&answer)
            .map_err(|e| IssuerError::Internal(e.to_string()))?;
        let at = now_ms();
        let batch = vec![
            Stmt::one(
                "INSERT INTO applications (sign_serial, nonce, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                vec![
                    link.sign_serial.clone().into(),
                    hex::encode(verified.application.body.nonce).into(),
                    at.into(),
                ],
            ),
            Stmt::one(
                "UPDATE links SET issued_at = issued_at WHERE serial = $1 AND state = 'active'",
                vec![serial.into()],
            ),
            store::audit(
                at,
                &sender.0,
                "pin-reset",
                &format!(
                    "phone {serial} sign {}: a fresh pin-reset application",
                    link.sign_serial
                ),
            ),
            store::finish_issue(&sender.0, &request_id.to_hex(), encoded, at),
        ];
        match self.db.commit(batch).await {
            Ok(()) => {}
            Err(StoreError::Conflict(0)) => {
                return Ok(reject(
                    Layer::Business,
                    "application.replayed",
                    "the pin-reset application was already used (replay): make a fresh one",
                ));
            }
            Err(StoreError::Conflict(3)) => {
                return Err(IssuerError::Internal(
                    "another worker took over this PIN reset meanwhile; nothing was reset".into(),
                ));
            }
            Err(StoreError::Conflict(_)) => {
                return Ok(reject(
                    Layer::Business,
                    "issuer.not-active",
                    format!("phone certificate {serial} was revoked or suspended meanwhile"),
                ));
            }
            Err(e) => return Err(e.into()),
        }
        self.mail_pin(serial, &pin)?;
        tracing::info!(serial, "PIN reset on a fresh signature");
        Ok(answer)
    }
}
