//! The issuer's trail of requests refused at the signed-message layer
//! ([`crate::refusals`]: `request-refused`, bounded per sender, code and minute).

use super::{Issuer, now_ms};

impl Issuer {
    /// Audits a request refused at the signed-message layer ([`crate::refusals`]).
    pub(super) async fn audit_refusal(
        &self,
        claimed: Option<&tsm_protocol::signing::Header>,
        e: &tsm_protocol::signing::ProtocolError,
    ) {
        crate::refusals::Refusal::new(
            crate::refusals::REQUEST_REFUSED,
            claimed,
            e,
            &self.config.trust,
        )
        .record(&self.refusal_gate, &self.db, now_ms(), false)
        .await;
    }

    /// Writes the refusals counted in memory and not yet in the trail (the sweep does this
    /// every few seconds).
    pub async fn flush_refusals(&self) {
        self.refusal_gate.flush(&self.db, now_ms(), false).await;
    }
}
