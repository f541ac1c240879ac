//! What a KEK rotation asks of the tables before it starts.

use super::Shard;
use kagi_db::StoreError;

impl Shard {
    /// Credential records of the in-store form (kept inside the HSM: no GCM nonce, see
    /// [`broker_protocol::envelope::FORM_IN_STORE`]) under another KEK than `kek`.
    pub async fn inside_records_not_under(&self, kek: &str) -> Result<u64, StoreError> {
        let rows = self
            .query(
                "SELECT COUNT(*) FROM credentials WHERE kek <> $1 AND length(nonce) = 0",
                vec![kek.into()],
            )
            .await?;
        Ok(rows
            .first()
            .map_or(0, |r| u64::try_from(r[0].int()).unwrap_or(0)))
    }
}
