//! The on-card mode's pending challenge (`[jpki_issuer] key_generation = "on-card"`): the
//! JPKI issuer's challenge an operation's key is being generated against, kept with the
//! operation so that a restarted SP-TSM — or another instance — carries on with it. Nothing
//! in it is secret: the issuer's ephemeral *public* point and a nonce (`card_wire::keygen::
//! challenge`; the ephemeral private key is derived again at the issuer from its own secret).
//! It is written only while the operation is live (one conditional statement), replaced by
//! the next challenge, and deleted once the issuer answered the Certify it was spent by or
//! the operation ended.

use super::{Stmt, Store, StoreError};
use tsm_protocol::OpId;

/// A pending challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingChallenge {
    /// The issuer's challenge (its ephemeral point, then the nonce).
    pub challenge: Vec<u8>,
    /// Until when the issuer accepts it (Unix milliseconds).
    pub expires_at: i64,
}

impl Store {
    /// Statements keeping `challenge` (valid until `expires_at`) for operation `op`,
    /// replacing the one before — only while the operation is live: the first statement
    /// matches the live operation or fails the batch (`StoreError::Conflict(0)`).
    pub fn put_challenge(op: &OpId, challenge: Vec<u8>, expires_at: i64, now: i64) -> Vec<Stmt> {
        vec![
            Stmt::one(
                "UPDATE ops SET updated_at = updated_at WHERE id = $1
                 AND state IN ('awaiting-device', 'device-bound', 'running', 'interrupted')",
                vec![op.to_hex().into()],
            ),
            Stmt::one(
                "INSERT INTO keygen_challenges (op_id, challenge, expires_at, updated_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (op_id) DO UPDATE SET challenge = excluded.challenge,
                 expires_at = excluded.expires_at, updated_at = excluded.updated_at",
                vec![
                    op.to_hex().into(),
                    challenge.into(),
                    expires_at.into(),
                    now.into(),
                ],
            ),
        ]
    }

    /// Statement dropping operation `op`'s pending challenge (spent, or of no use any more).
    pub fn drop_challenge(op: &OpId) -> Stmt {
        Stmt::any(
            "DELETE FROM keygen_challenges WHERE op_id = $1",
            vec![op.to_hex().into()],
        )
    }

    /// Statement dropping operation `op`'s pending challenge if the operation is over.
    pub fn drop_challenge_if_over(op: &OpId) -> Stmt {
        Stmt::any(
            "DELETE FROM keygen_challenges WHERE op_id = $1 AND EXISTS (SELECT 1 FROM ops
             WHERE id = $1 AND state IN ('completed', 'failed', 'expired', 'cancelled'))",
            vec![op.to_hex().into()],
        )
    }

    /// Operation `op`'s pending challenge, if one is kept.
    pub async fn challenge(&self, op: &OpId) -> Result<Option<PendingChallenge>, StoreError> {
        let rows = self
            .query(
                "SELECT challenge, expires_at FROM keygen_challenges WHERE op_id = $1",
                vec![op.to_hex().into()],
            )
            .await?;
        Ok(rows.first().map(|r| PendingChallenge {
            challenge: r[0].blob(),
            expires_at: r[1].int(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Backend;
    use crate::store::ops::OpRow;
    use tsm_protocol::control::OpState;

    fn op(id: u8) -> OpRow {
        OpRow {
            iccid: format!("8981{id}"),
            expires_at: i64::MAX,
            ..crate::store::ops::tests::op(id, Some(&format!("k{id}")))
        }
    }

    #[tokio::test]
    async fn sqlite_the_challenge_survives_a_restart_and_only_a_live_operation_keeps_one() {
        let dir = std::env::temp_dir().join(format!("kagi-tsm-keygen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let backend = Backend::Sqlite(dir.join("t.db"));
        exercise(&backend).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn postgres_the_challenge_survives_a_restart_and_only_a_live_operation_keeps_one() {
        let pg = crate::testing::PrivatePostgres::start("keygen").unwrap();
        exercise(&Backend::Postgres(pg.url.clone())).await;
    }

    async fn exercise(backend: &Backend) {
        let a = op(1);
        {
            let store = Store::open(backend).await.unwrap();
            store.create_op(&a, vec![]).await.unwrap();
            assert_eq!(store.challenge(&a.id).await.unwrap(), None);
            store
                .commit(Store::put_challenge(&a.id, vec![1; 97], 5_000, 1))
                .await
                .unwrap();
        }
        // Another process over the same database (a restart) finds it.
        let store = Store::open(backend).await.unwrap();
        assert_eq!(
            store.challenge(&a.id).await.unwrap(),
            Some(PendingChallenge {
                challenge: vec![1; 97],
                expires_at: 5_000
            })
        );
        // Racing writers (two sessions' plans): one row, one of theirs, whole.
        let writes = (2u8..10).map(|i| {
            let store = store.clone();
            let id = a.id;
            tokio::spawn(async move {
                store
                    .commit(Store::put_challenge(&id, vec![i; 97], i64::from(i), 2))
                    .await
            })
        });
        for w in writes.collect::<Vec<_>>() {
            w.await.unwrap().unwrap();
        }
        let kept = store.challenge(&a.id).await.unwrap().unwrap();
        let i = kept.challenge[0];
        assert!((2..10).contains(&i));
        assert_eq!(kept.challenge, vec![i; 97]);
        assert_eq!(kept.expires_at, i64::from(i));
        let rows = store
            .query(
                "SELECT count(*) FROM keygen_challenges WHERE op_id = $1",
                vec![a.id.to_hex().into()],
            )
            .await
            .unwrap();
        assert_eq!(rows[0][0].int(), 1);
        // Spent: gone.
        store
            .commit(vec![Store::drop_challenge(&a.id)])
            .await
            .unwrap();
        assert_eq!(store.challenge(&a.id).await.unwrap(), None);
        // An operation that is over keeps none: a late write is refused, a kept one goes
        // with the operation's last save.
        store
            .commit(Store::put_challenge(&a.id, vec![7; 97], 9, 3))
            .await
            .unwrap();
        let mut over = store.op(&a.id).await.unwrap().unwrap();
        over.state = OpState::Failed;
        store.save_op(&over, vec![]).await.unwrap();
        assert_eq!(store.challenge(&a.id).await.unwrap(), None);
        assert!(matches!(
            store
                .commit(Store::put_challenge(&a.id, vec![8; 97], 9, 4))
                .await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(store.challenge(&a.id).await.unwrap(), None);
        // Nor does an operation that does not exist.
        assert!(matches!(
            store
                .commit(Store::put_challenge(&OpId([9; 16]), vec![8; 97], 9, 4))
                .await,
            Err(StoreError::Conflict(_))
        ));
    }
}
