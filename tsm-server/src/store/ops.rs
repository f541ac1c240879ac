//! The typed records the TSM keeps of its operations (with the replay cache, device tickets
//! and relay sessions), and the statements that read and write them. Cards, credentials and
//! the audit trail are in `cards` (re-exported here).

pub use super::cards::{AuditRow, CardRow, CredentialRow};
pub mod legacy;

use super::{Stmt, Store, StoreError, Val};
use serde::{Deserialize, Serialize};
use tsm_protocol::control::{ControlRequest, OpState};
use tsm_protocol::{ErrorReport, MsgId, Nonce, OpId, Sealed};

/// What an operation carries beyond its indexed columns (stored as one canonical blob, format
/// 2; format-1 records still decode, see `store::legacy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpData {
    /// The provider's request.
    pub request: ControlRequest,
    /// Its message id and nonce (echoed in the receipt).
    pub request_id: (MsgId, Nonce),
    /// SHA-256 over the operation and the access code (empty when none).
    pub code_hash: [u8; 32],
    /// Wrong entries left.
    pub attempts_left: u8,
    /// Steps done (log-safe).
    pub steps: Vec<String>,
    /// The signed receipt, once completed.
    pub receipt: Option<Sealed>,
    /// Why it failed.
    pub error: Option<ErrorReport>,
    /// The nonce the new key signs.
    pub proof_nonce: [u8; 32],
    /// Child operations.
    pub children: Vec<OpId>,
    /// The access code and device ticket, sealed under the TSM's state key, so a provider
    /// that lost the answer gets them again for the same idempotency key.
    pub sealed_secrets: Vec<u8>,
    /// The card image number the card reported under the secure channel.
    pub cin: String,
    /// The relay session currently bound to the operation (a newer one supersedes it).
    pub session: Option<tsm_protocol::SessionId>,
    /// The phase of a multi-domain operation (creating a domain: the issuer's, then the new
    /// domain's keys).
    pub phase: u8,
}

/// An operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRow {
    /// Id.
    pub id: OpId,
    /// Kind (`issue`, `reset-pin`, `card-delete`, ...).
    pub kind: String,
    /// The party that asked.
    pub party: String,
    /// State.
    pub state: OpState,
    /// The card.
    pub iccid: String,
    /// The client's idempotency key (hex).
    pub idem_key: Option<String>,
    /// SHA-256 of the request body, for idempotency conflicts.
    pub request_hash: Vec<u8>,
    /// The parent operation.
    pub parent: Option<OpId>,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Unix milliseconds.
    pub expires_at: i64,
    /// Unix milliseconds.
    pub updated_at: i64,
    /// Compare-and-swap version.
    pub version: i64,
    /// The rest.
    pub data: OpData,
}

fn decode_state(s: &str) -> OpState {
    match s {
        "awaiting-device" => OpState::AwaitingDevice,
        "device-bound" => OpState::DeviceBound,
        "running" => OpState::Running,
        "interrupted" => OpState::Interrupted,
        "completed" => OpState::Completed,
        "expired" => OpState::Expired,
        "cancelled" => OpState::Cancelled,
        _ => OpState::Failed,
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Db(format!("a stored {what} does not decode"))
}

fn op_from(r: &[Val]) -> Result<OpRow, StoreError> {
    Ok(OpRow {
        id: OpId::from_hex(&r[0].text()).ok_or_else(|| corrupt("operation id"))?,
        kind: r[1].text(),
        party: r[2].text(),
        state: decode_state(&r[3].text()),
        iccid: r[4].text(),
        idem_key: r[5].opt_text(),
        request_hash: r[6].blob(),
        parent: r[7].opt_text().and_then(|p| OpId::from_hex(&p)),
        created_at: r[8].int(),
        expires_at: r[9].int(),
        updated_at: r[10].int(),
        version: r[11].int(),
        data: legacy::decode(&r[12].blob()).ok_or_else(|| corrupt("operation"))?,
    })
}

fn data_blob(op: &OpRow) -> Result<Vec<u8>, StoreError> {
    legacy::encode(&op.data).map_err(|e| StoreError::Db(e.to_string()))
}

/// What creating an operation found.
#[derive(Debug)]
pub enum Created {
    /// It was created.
    New,
    /// The party's idempotency key names an existing operation.
    Existing(Box<OpRow>),
    /// The party has a live operation on this card already (this one).
    Busy(OpId),
}

impl Store {
    /// Records `(sender, msg_id)`; `false` if it was there already (a replay).
    pub async fn first_seen(
        &self,
        sender: &str,
        msg_id: &MsgId,
        keep_until: i64,
    ) -> Result<bool, StoreError> {
        self.0
            .first_seen(sender, &msg_id.to_hex(), keep_until)
            .await
    }

    /// Forgets replay entries past their keep time, the counters of refused messages of
    /// minutes long past (`crate::refusals`; their audit events stay) and the MNO-TSM
    /// preparations kept for operations that are over (`sealed`).
    pub async fn purge_replay(&self, now: i64) -> Result<(), StoreError> {
        self.commit(vec![
            Stmt::any("DELETE FROM replay WHERE keep_until < $1", vec![now.into()]),
            crate::refusals::purge(now),
            Self::forget_mno_prepared(),
        ])
        .await
    }

    /// Statement inserting an operation (conflicts with an existing idempotency key).
    pub fn insert_op(op: &OpRow) -> Result<Stmt, StoreError> {
        Ok(Stmt::one(
            "INSERT INTO ops (id, kind, party, state, iccid, idem_key, request_hash, parent, created_at, expires_at, updated_at, version, data)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) ON CONFLICT DO NOTHING",
            vec![
                op.id.to_hex().into(),
                op.kind.clone().into(),
                op.party.clone().into(),
                op.state.name().into(),
                op.iccid.clone().into(),
                op.idem_key.clone().into(),
                op.request_hash.clone().into(),
                op.parent.map(|p| p.to_hex()).into(),
                op.created_at.into(),
                op.expires_at.into(),
                op.updated_at.into(),
                op.version.into(),
                data_blob(op)?.into(),
            ],
        ))
    }

    /// Creates an operation with the other writes of `extra` in one transaction; an existing
    /// operation with the same party and idempotency key is returned instead.
    pub async fn create_op(&self, op: &OpRow, extra: Vec<Stmt>) -> Result<Created, StoreError> {
        let mut batch = vec![Self::insert_op(op)?];
        batch.extend(extra);
        match self.commit(batch).await {
            Ok(()) => Ok(Created::New),
            Err(StoreError::Conflict(0)) => {
                // Either the idempotency key was taken, or (ops_live) the party already runs
                // an operation on this card.
                if let Some(k) = &op.idem_key
                    && let Some(existing) = self.op_by_idem(&op.party, k).await?
                {
                    return Ok(Created::Existing(Box::new(existing)));
                }
                match self
                    .live_ops_on(&op.iccid)
                    .await?
                    .into_iter()
                    .find(|o| o.party == op.party)
                {
                    Some(live) => Ok(Created::Busy(live.id)),
                    None => Err(StoreError::Conflict(0)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Statement updating an operation if its version is still `op.version` (it becomes
    /// `op.version + 1`).
    pub fn update_op(op: &OpRow) -> Result<Stmt, StoreError> {
        Ok(Stmt::one(
            "UPDATE ops SET state = $2, updated_at = $3, version = version + 1, data = $4, expires_at = $5
             WHERE id = $1 AND version = $6",
            vec![
                op.id.to_hex().into(),
                op.state.name().into(),
                op.updated_at.into(),
                data_blob(op)?.into(),
                op.expires_at.into(),
                op.version.into(),
            ],
        ))
    }

    /// Saves an operation (compare-and-swap on its version) with `extra` writes.
    pub async fn save_op(&self, op: &OpRow, extra: Vec<Stmt>) -> Result<(), StoreError> {
        let mut batch = vec![Self::update_op(op)?];
        batch.extend(extra);
        // An operation that ends here takes its sealed parts with it. One saved in a state
        // that is not final stays so in this transaction (the compare-and-swap above fails the
        // whole batch otherwise), so the two deletions could find nothing: not run then, at
        // every relay round trip.
        if op.state.is_final() {
            batch.push(Self::erase_sealed_if_over(&op.id));
            batch.push(Self::drop_challenge_if_over(&op.id));
        }
        self.commit(batch).await
    }

    /// Statement cancelling an operation that is not over yet, whatever its version: a
    /// cancellation or revocation always lands, and the relay's next compare-and-swap on the
    /// operation fails.
    pub fn cancel_op(id: &OpId, now: i64) -> Stmt {
        Stmt::any(
            "UPDATE ops SET state = 'cancelled', updated_at = $2, version = version + 1
             WHERE id = $1 AND state IN ('awaiting-device', 'device-bound', 'running', 'interrupted')",
            vec![id.to_hex().into(), now.into()],
        )
    }

    /// Statement auditing a cancellation only if [`Store::cancel_op`] at `now`, earlier in the
    /// same transaction, cancelled the operation: a cancel that finds it over (the download
    /// finished meanwhile) leaves no "cancelled" entry beside the completion.
    pub fn audit_cancelled(id: &OpId, now: i64, actor: &str) -> Stmt {
        Stmt::any(
            "INSERT INTO audit (op_id, at, actor, event, detail)
             SELECT $1, $2, CAST($3 AS TEXT), 'cancelled', ''
             WHERE EXISTS (SELECT 1 FROM ops WHERE id = $1 AND state = 'cancelled' AND updated_at = $2)",
            vec![id.to_hex().into(), now.into(), actor.into()],
        )
    }

    /// An operation by id.
    pub async fn op(&self, id: &OpId) -> Result<Option<OpRow>, StoreError> {
        let rows = self
            .query(
                "SELECT id, kind, party, state, iccid, idem_key, request_hash, parent, created_at, expires_at, updated_at, version, data FROM ops WHERE id = $1",
                vec![id.to_hex().into()],
            )
            .await?;
        rows.first().map(|r| op_from(r)).transpose()
    }

    /// An operation by its party's idempotency key. A request repeated with its key is
    /// answered from it, so a row found is first made sure to survive a failover
    /// ([`kagi_db::Db::settle`]).
    pub async fn op_by_idem(&self, party: &str, key: &str) -> Result<Option<OpRow>, StoreError> {
        let rows = self
            .query(
                "SELECT id, kind, party, state, iccid, idem_key, request_hash, parent, created_at, expires_at, updated_at, version, data FROM ops WHERE party = $1 AND idem_key = $2",
                vec![party.into(), key.into()],
            )
            .await?;
        if !rows.is_empty() {
            self.settle().await?;
        }
        rows.first().map(|r| op_from(r)).transpose()
    }

    /// The live operations on a card (not final).
    pub async fn live_ops_on(&self, iccid: &str) -> Result<Vec<OpRow>, StoreError> {
        let rows = self
            .query(
                "SELECT id, kind, party, state, iccid, idem_key, request_hash, parent, created_at, expires_at, updated_at, version, data FROM ops
                 WHERE iccid = $1 AND state IN ('awaiting-device', 'device-bound', 'running', 'interrupted')",
                vec![iccid.into()],
            )
            .await?;
        rows.iter().map(|r| op_from(r)).collect()
    }

    /// The newest operation of `kind` on card `iccid`, whatever its state.
    pub async fn newest_op_on(&self, iccid: &str, kind: &str) -> Result<Option<OpRow>, StoreError> {
        let rows = self
            .query(
                "SELECT id, kind, party, state, iccid, idem_key, request_hash, parent, created_at, expires_at, updated_at, version, data FROM ops
                 WHERE iccid = $1 AND kind = $2 ORDER BY created_at DESC LIMIT 1",
                vec![iccid.into(), kind.into()],
            )
            .await?;
        rows.first().map(|r| op_from(r)).transpose()
    }

    /// Statement registering a device ticket for an operation.
    pub fn insert_ticket(hash: &[u8; 32], op: &OpId) -> Stmt {
        Stmt::one(
            "INSERT INTO tickets (hash, op_id) VALUES ($1, $2)",
            vec![hash.to_vec().into(), op.to_hex().into()],
        )
    }

    /// The operation a device ticket is for.
    pub async fn op_by_ticket(&self, hash: &[u8; 32]) -> Result<Option<OpRow>, StoreError> {
        let rows = self
            .query(
                "SELECT op_id FROM tickets WHERE hash = $1",
                vec![hash.to_vec().into()],
            )
            .await?;
        match rows.first().and_then(|r| OpId::from_hex(&r[0].text())) {
            Some(id) => self.op(&id).await,
            None => Ok(None),
        }
    }

    /// Statement saving a relay session's last order (`reply`) for `seq`.
    pub fn put_session(id: &str, op: &OpId, seq: i64, reply: Vec<u8>, now: i64) -> Stmt {
        Stmt::any(
            "INSERT INTO sessions (id, op_id, seq, reply, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET seq = $3, reply = $4, updated_at = $5",
            vec![
                id.into(),
                op.to_hex().into(),
                seq.into(),
                reply.into(),
                now.into(),
            ],
        )
    }

    /// A relay session: its operation, last order sequence number and the reply sent.
    pub async fn session(&self, id: &str) -> Result<Option<(OpId, i64, Vec<u8>)>, StoreError> {
        let rows = self
            .query(
                "SELECT op_id, seq, reply FROM sessions WHERE id = $1",
                vec![id.into()],
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| OpId::from_hex(&r[0].text()).map(|op| (op, r[1].int(), r[2].blob()))))
    }

    /// Operations by state, for the operator's overview.
    pub async fn count_by_state(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .query(
                "SELECT state, COUNT(*) FROM ops GROUP BY state ORDER BY state",
                vec![],
            )
            .await?;
        Ok(rows.iter().map(|r| (r[0].text(), r[1].int())).collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::store::Backend;

    /// An operation row for store tests: operation `id`, idempotency key `idem`.
    pub(crate) fn op(id: u8, idem: Option<&str>) -> OpRow {
        OpRow {
            id: OpId([id; 16]),
            kind: "issue".into(),
            party: "sp:bank".into(),
            state: OpState::AwaitingDevice,
            iccid: "8981".into(),
            idem_key: idem.map(String::from),
            request_hash: vec![1, 2],
            parent: None,
            created_at: 1,
            expires_at: 10,
            updated_at: 1,
            version: 0,
            data: OpData {
                request: ControlRequest::Cancel { op: OpId([0; 16]) },
                request_id: (MsgId([0; 16]), Nonce([0; 16])),
                code_hash: [0; 32],
                attempts_left: 3,
                steps: vec![],
                receipt: None,
                error: None,
                proof_nonce: [0; 32],
                children: vec![],
                sealed_secrets: vec![],
                cin: String::new(),
                session: None,
                phase: 0,
            },
        }
    }

    #[tokio::test]
    async fn sqlite_operations_idempotency_cas_replay() {
        let dir = std::env::temp_dir().join(format!("kagi-tsm-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let backend = Backend::Sqlite(dir.join("t.db"));
        exercise(&backend).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn postgres_operations_idempotency_cas_replay() {
        let pg = crate::testing::PrivatePostgres::start("store").unwrap();
        exercise(&Backend::Postgres(pg.url.clone())).await;
    }

    async fn exercise(backend: &Backend) {
        let store = Store::open(backend).await.unwrap();
        let a = op(1, Some("k1"));
        assert!(matches!(
            store.create_op(&a, vec![]).await.unwrap(),
            Created::New
        ));
        // The same idempotency key finds the first operation.
        match store.create_op(&op(2, Some("k1")), vec![]).await.unwrap() {
            Created::Existing(e) => assert_eq!(e.id, a.id),
            other => panic!("{other:?}"),
        }
        // Compare-and-swap: the second writer with the old version loses, nothing written.
        let mut b = store.op(&a.id).await.unwrap().unwrap();
        b.state = OpState::Running;
        store
            .save_op(&b, vec![Store::audit(&a.id, 2, "t", "run", "")])
            .await
            .unwrap();
        let stale = b.clone();
        assert!(matches!(
            store
                .save_op(&stale, vec![Store::audit(&a.id, 3, "t", "lost", "")])
                .await,
            Err(StoreError::Conflict(0))
        ));
        let now = store.op(&a.id).await.unwrap().unwrap();
        assert_eq!((now.state, now.version), (OpState::Running, 1));
        assert_eq!(store.audit_trail(Some(&a.id)).await.unwrap().len(), 1);
        // Replay cache.
        let m = MsgId([5; 16]);
        assert!(store.first_seen("sp:bank", &m, 100).await.unwrap());
        assert!(!store.first_seen("sp:bank", &m, 100).await.unwrap());
        assert!(store.first_seen("sp:shop", &m, 100).await.unwrap());
        store.purge_replay(1000).await.unwrap();
        assert!(store.first_seen("sp:bank", &m, 2000).await.unwrap());
        // Sessions, cards, credentials, the revocation list.
        store
            .commit(vec![
                Store::put_session("s1", &a.id, 3, vec![9], 5),
                Store::register_card(
                    &CardRow {
                        iccid: "8981".into(),
                        cin: "AA".into(),
                        sd_aid: vec![1, 2, 3, 4, 5],
                        free_memory: 4096,
                        state: "active".into(),
                        replaced_by: None,
                        mno: "mno:x".into(),
                    },
                    5,
                ),
                Store::insert_credential(
                    &CredentialRow {
                        op_id: a.id,
                        iccid: "8981".into(),
                        party: "sp:bank".into(),
                        state: "active".into(),
                        reason: None,
                        serial: "0A1B".into(),
                        not_after: 99,
                        my_number_serial: "77".into(),
                        instance: vec![6; 5],
                        deletion_pending: false,
                    },
                    5,
                ),
                Store::revoke_credential(&a.id, "card-lost", 5),
            ])
            .await
            .unwrap();
        assert_eq!(store.session("s1").await.unwrap(), Some((a.id, 3, vec![9])));
        assert_eq!(store.card("8981").await.unwrap().unwrap().free_memory, 4096);
        assert!(
            store
                .credential(&a.id)
                .await
                .unwrap()
                .unwrap()
                .deletion_pending
        );
        assert_eq!(
            store.revoked_serials().await.unwrap(),
            vec!["0A1B".to_string()]
        );
        // A second revocation changes nothing (the first reason stays).
        store
            .commit(vec![Store::revoke_credential(&a.id, "user-request", 6)])
            .await
            .unwrap();
        let c = store.credential(&a.id).await.unwrap().unwrap();
        assert_eq!(
            (c.state.as_str(), c.reason.as_deref()),
            ("revoked", Some("card-lost"))
        );
        // A revoked credential is not activated by a late completion.
        store
            .commit(vec![Store::credential_state(&a.id, "pending", "active", 7)])
            .await
            .unwrap();
        assert_eq!(
            store.credential(&a.id).await.unwrap().unwrap().state,
            "revoked"
        );
        // Another operator's registration of the same ICCID moves nothing.
        let theirs = CardRow {
            iccid: "8981".into(),
            cin: "BB".into(),
            sd_aid: vec![9],
            free_memory: 1,
            state: "active".into(),
            replaced_by: None,
            mno: "mno:y".into(),
        };
        assert!(matches!(
            store.commit(vec![Store::register_card(&theirs, 8)]).await,
            Err(StoreError::Conflict(0))
        ));
        assert!(matches!(
            store
                .commit(vec![Store::mark_card("8981", "mno:y", "lost", None, 8)])
                .await,
            Err(StoreError::Conflict(0))
        ));
        let card = store.card("8981").await.unwrap().unwrap();
        assert_eq!(
            (card.mno.as_str(), card.cin.as_str(), card.state.as_str()),
            ("mno:x", "AA", "active")
        );
        // Cancelling an operation that is over changes nothing, and audits nothing.
        let audited = || async { store.audit_trail(Some(&a.id)).await.unwrap().len() };
        let before = audited().await;
        store
            .commit(vec![
                Store::cancel_op(&a.id, 9),
                Store::audit_cancelled(&a.id, 9, "sp:bank"),
            ])
            .await
            .unwrap();
        let o = store.op(&a.id).await.unwrap().unwrap();
        assert_eq!((o.state, o.version), (OpState::Cancelled, 2));
        assert_eq!(audited().await, before + 1);
        store
            .commit(vec![
                Store::cancel_op(&a.id, 10),
                Store::audit_cancelled(&a.id, 10, "sp:bank"),
            ])
            .await
            .unwrap();
        assert_eq!(store.op(&a.id).await.unwrap().unwrap().version, 2);
        assert_eq!(
            audited().await,
            before + 1,
            "a cancel that cancelled nothing"
        );
        // Reopening keeps everything (and does not migrate twice).
        drop(store);
        let store = Store::open(backend).await.unwrap();
        assert!(store.op(&a.id).await.unwrap().is_some());
    }
}
