//! One issuance per idempotency key. An SP-TSM's `Issue` carries its idempotency key
//! (`request_id`); requests with the same key — a retry after a lost answer, or several racing
//! (a provider's `Apply` sent twice at once) — get one certificate and the same answer. The
//! key is claimed by one atomic conditional insert ([`store::claim_issue`]); the winner issues
//! and records its `Issued` answer under the key in the transaction that commits the link; the
//! others wait for that answer (at most [`WAIT`], then `issuer.in-progress`, retryable) and
//! return it. A refusal is not kept: the claim is released and the next request with the key
//! is decided again. The same key with another request is `protocol.idempotency-conflict`,
//! except a Certify whose key the SIM made again (the same application, SIM and applet, a
//! new challenge): its answer was lost before the SP-TSM saved it, so the new key is
//! certified and, in the same transaction, the previous certificate is revoked (`withdrawn`,
//! audited) and the recorded answer replaced — never two active certificates for one
//! request, never an undelivered one left valid. A stale copy of the first Certify cannot do
//! it: its nonce is spent. Past [`store::ISSUE_ANSWER_KEEP_MS`] the record is gone and a key
//! made again is a new issuance; the SIM's earlier certificate is then revoked as
//! `superseded` by the issuance itself ([`store::supersede_batch`]: one certificate per SIM
//! and provider).

use super::{Issuer, IssuerError, now_ms, reject, store};
use sha2::{Digest, Sha256};
use std::time::Duration;
use tsm_protocol::issuer::IssuerResponse;
use tsm_protocol::{ErrorReport, IdempotencyKey, Layer, PartyId};

/// How long a request waits for another one holding its key.
const WAIT: Duration = Duration::from_secs(30);

/// How often it looks.
const POLL: Duration = Duration::from_millis(20);

impl Issuer {
    /// [`Issuer::issue`] at most once per (SP-TSM, idempotency key); see the module.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn issue_once(
        &self,
        sender: &PartyId,
        provider: &PartyId,
        iccid: &str,
        application: &[u8],
        card_certificate: &[u8],
        instance: &[u8],
        request_id: &IdempotencyKey,
        on_card: Option<super::on_card::OnCard<'_>>,
        transfer: Option<super::transfer::Transfer<'_>>,
    ) -> Result<IssuerResponse, IssuerError> {
        let key = request_id.to_hex();
        let mut hash = request_hash(
            provider,
            iccid,
            application,
            card_certificate,
            instance,
            on_card,
        )?;
        if let Some(t) = transfer {
            // A transfer is also recognised by the certificate it moves.
            let moved = tsm_protocol::codec::encode(&(t.from_serial, t.from_iccid))
                .map_err(|e| IssuerError::Internal(e.to_string()))?;
            hash.extend(Sha256::digest(moved));
        }
        // The same Certify with a key made again (its answer was lost).
        let made_again = |r: &store::IssueRecord| {
            on_card.is_some()
                && r.state == "done"
                && r.request_hash.len() == hash.len()
                && r.request_hash[..32] == hash[..32]
                && r.request_hash != hash
        };
        // A replacement's transfer was done by the issuance it replaces.
        let issue = async |replacing: Option<Replacing>| {
            let transfer = if replacing.is_some() { None } else { transfer };
            self.issue(
                sender,
                provider,
                iccid,
                application,
                card_certificate,
                instance,
                request_id,
                on_card,
                replacing,
                transfer,
            )
            .await
        };
        let r = match self
            .once(sender, &key, &hash, async || issue(None).await, made_again)
            .await?
        {
            Ok(answer) => return Ok(answer),
            Err(r) => r,
        };
        // The new key is certified and the previous certificate revoked in one transaction.
        let bytes = r.answer.clone().unwrap_or_default();
        let Ok(IssuerResponse::Issued { serial, .. }) =
            tsm_protocol::codec::decode::<IssuerResponse>(&bytes)
        else {
            return Err(IssuerError::Internal(
                "a kept Certify answer is not an issuance".into(),
            ));
        };
        tracing::warn!(sender = %sender, request_id = %key, previous = %serial, "Certify with a key made again under the same request: the previous certificate is revoked if this one is issued");
        issue(Some(Replacing {
            request_hash: r.request_hash,
            serial,
            new_hash: hash,
        }))
        .await
    }

    /// `work` at most once per (`sender`, idempotency key `key`) for the request recognised by
    /// `hash`: the winner of the claim runs it (its success — `Issued`, `PinReset` — records
    /// the answer in its own transaction; a refusal releases the claim); a request finding the
    /// key taken waits for the answer and returns it, or is refused as a conflict when the key
    /// was used for another request — unless `diverted` says the record is one the caller
    /// handles itself (`Err(record)`).
    pub(super) async fn once(
        &self,
        sender: &PartyId,
        key: &str,
        hash: &[u8],
        work: impl AsyncFnOnce() -> Result<IssuerResponse, IssuerError>,
        diverted: impl Fn(&store::IssueRecord) -> bool,
    ) -> Result<Result<IssuerResponse, store::IssueRecord>, IssuerError> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if store::claim_issue(&self.db, &sender.0, key, hash, now_ms()).await? {
                let answer = work().await;
                if !matches!(
                    answer,
                    Ok(IssuerResponse::Issued { .. } | IssuerResponse::PinReset { .. })
                ) {
                    self.db
                        .commit(vec![store::release_issue(&sender.0, key)])
                        .await?;
                }
                return answer.map(Ok);
            }
            match store::issue_record(&self.db, &sender.0, key).await? {
                // Released meanwhile (a refusal): claim it again.
                None => {}
                Some(r) if diverted(&r) => return Ok(Err(r)),
                Some(r) if r.request_hash != hash => {
                    return Ok(Ok(reject(
                        Layer::Protocol,
                        "protocol.idempotency-conflict",
                        format!(
                            "the idempotency key {key} was used for another request: use a fresh key"
                        ),
                    )));
                }
                Some(r) if r.state == "done" => {
                    // Repeated only once it is sure to survive a failover (`Db::settle`).
                    self.db.settle().await?;
                    let bytes = r.answer.unwrap_or_default();
                    let answer = tsm_protocol::codec::decode::<IssuerResponse>(&bytes)
                        .map_err(|e| IssuerError::Internal(format!("a kept answer: {e}")))?;
                    tracing::info!(sender = %sender, request_id = %key, "request answered again (same idempotency key)");
                    return Ok(Ok(answer));
                }
                Some(_) if tokio::time::Instant::now() >= deadline => {
                    return Ok(Ok(IssuerResponse::Rejected(ErrorReport::new(
                        Layer::Tsm,
                        "issuer.in-progress",
                        true,
                        format!(
                            "another request with the idempotency key {key} is still being answered: send it again later"
                        ),
                    ))));
                }
                // Another request is working on it: wait for its answer.
                Some(_) => {}
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A Certify's earlier issuance that a new key replaces (its answer never reached the SP-TSM).
pub(super) struct Replacing {
    /// The recorded request's hash (the record is replaced only if it is still this one).
    pub request_hash: Vec<u8>,
    /// The previous phone certificate's serial, revoked in the same transaction.
    pub serial: String,
    /// This request's hash, recorded instead.
    pub new_hash: Vec<u8>,
}

/// What an issue request is recognised by: SHA-256 over the application, SIM and applet;
/// for a Certify, a second SHA-256 over the challenge's nonce and the SIM's answer follows
/// (so the same request with a key made again is told from another request).
fn request_hash(
    provider: &PartyId,
    iccid: &str,
    application: &[u8],
    card_certificate: &[u8],
    instance: &[u8],
    on_card: Option<super::on_card::OnCard<'_>>,
) -> Result<Vec<u8>, IssuerError> {
    let internal = |e: tsm_protocol::codec::CodecError| IssuerError::Internal(e.to_string());
    let mut hash =
        tsm_protocol::codec::encode(&(&provider.0, iccid, application, card_certificate, instance))
            .map(|b| Sha256::digest(b).to_vec())
            .map_err(internal)?;
    if let Some(c) = on_card {
        let key = tsm_protocol::codec::encode(&(c.nonce, c.proof)).map_err(internal)?;
        hash.extend(Sha256::digest(key));
    }
    Ok(hash)
}

/// Statements replacing a Certify's recorded issuance by `link`'s (answer `answer`): the
/// record, only if it is still the one read (`r.request_hash`), and the previous certificate
/// revoked (`withdrawn`, audited).
pub(super) fn replace_batch(
    sp_tsm: &str,
    request_id: &IdempotencyKey,
    r: &Replacing,
    answer: Vec<u8>,
    link: &store::Link,
    at: i64,
) -> Vec<kagi_db::Stmt> {
    let mut batch = vec![kagi_db::Stmt::one(
        "UPDATE issues SET request_hash = $3, answer = $4, at = $5
         WHERE sp_tsm = $1 AND request_id = $2 AND state = 'done' AND request_hash = $6",
        vec![
            sp_tsm.into(),
            request_id.to_hex().into(),
            r.new_hash.clone().into(),
            answer.into(),
            at.into(),
            r.request_hash.clone().into(),
        ],
    )];
    let detail = format!(
        "phone {} sign {}: its Certify answer was lost, replaced by {} (key made again)",
        r.serial, link.sign_serial, link.serial
    );
    batch.extend(store::withdraw_batch(
        &r.serial,
        sp_tsm,
        "withdrawn",
        &detail,
        at,
    ));
    batch
}
