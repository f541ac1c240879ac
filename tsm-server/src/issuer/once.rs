//! One issuance per idempotency key. An SP-TSM's `Issue` carries its idempotency key
//! (`request_id`); requests with the same key — a retry after a lost answer, or several racing
//! (a provider's `Apply` sent twice at once) — get one certificate and the same answer. The
//! key is claimed by one atomic conditional insert ([`store::claim_issue`]); the winner issues
//! and records its `Issued` answer under the key in the transaction that commits the link; the
//! others wait for that answer (at most [`WAIT`], then `issuer.in-progress`, retryable) and
//! return it. A refusal is not kept: the claim is released and the next request with the key
//! is decided again. The same key with another request is `protocol.idempotency-conflict`.

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
    ) -> Result<IssuerResponse, IssuerError> {
        let key = request_id.to_hex();
        let hash = tsm_protocol::codec::encode(&(
            &provider.0,
            iccid,
            application,
            card_certificate,
            instance,
            on_card.map(|c| (c.nonce, c.proof)),
        ))
        .map(|b| Sha256::digest(b).to_vec())
        .map_err(|e| IssuerError::Internal(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if store::claim_issue(&self.db, &sender.0, &key, &hash, now_ms()).await? {
                let answer = self
                    .issue(
                        sender,
                        provider,
                        iccid,
                        application,
                        card_certificate,
                        instance,
                        request_id,
                        on_card,
                    )
                    .await;
                if !matches!(answer, Ok(IssuerResponse::Issued { .. })) {
                    self.db
                        .commit(vec![store::release_issue(&sender.0, &key)])
                        .await?;
                }
                return answer;
            }
            match store::issue_record(&self.db, &sender.0, &key).await? {
                // Released meanwhile (a refusal): claim it again.
                None => {}
                Some(r) if r.request_hash != hash => {
                    return Ok(reject(
                        Layer::Protocol,
                        "protocol.idempotency-conflict",
                        format!(
                            "the idempotency key {key} was used for another issue request: use a fresh key"
                        ),
                    ));
                }
                Some(r) if r.state == "done" => {
                    // Repeated only once it is sure to survive a failover (`Db::settle`).
                    self.db.settle().await?;
                    let bytes = r.answer.unwrap_or_default();
                    let answer = tsm_protocol::codec::decode::<IssuerResponse>(&bytes)
                        .map_err(|e| IssuerError::Internal(format!("a kept answer: {e}")))?;
                    tracing::info!(sender = %sender, request_id = %key, "issue request answered again (same idempotency key)");
                    return Ok(answer);
                }
                Some(_) if tokio::time::Instant::now() >= deadline => {
                    return Ok(IssuerResponse::Rejected(ErrorReport::new(
                        Layer::Tsm,
                        "issuer.in-progress",
                        true,
                        format!(
                            "another request with the idempotency key {key} is still being issued: send it again later"
                        ),
                    )));
                }
                // Another request is issuing it: wait for its answer.
                Some(_) => {}
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
