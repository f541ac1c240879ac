//! The typed records the TSM keeps of cards, their credentials and the audit trail, and the
//! statements that read and write them.

use super::{Stmt, Store, StoreError, Val};
use serde::Serialize;
use tsm_protocol::OpId;

/// A registered SIM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRow {
    /// ICCID.
    pub iccid: String,
    /// Card image number (hex).
    pub cin: String,
    /// The provider domain's AID.
    pub sd_aid: Vec<u8>,
    /// Free memory on record.
    pub free_memory: i64,
    /// `active`, `lost`, `replaced`.
    pub state: String,
    /// The ICCID that replaced it.
    pub replaced_by: Option<String>,
    /// The operator that registered it.
    pub mno: String,
}

/// A credential issued (or being issued) to a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRow {
    /// The issuing operation.
    pub op_id: OpId,
    /// The card.
    pub iccid: String,
    /// The provider.
    pub party: String,
    /// `pending`, `active`, `revoked`.
    pub state: String,
    /// Revocation reason.
    pub reason: Option<String>,
    /// Certificate serial (hex).
    pub serial: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    /// The linked My Number signature-certificate serial.
    pub my_number_serial: String,
    /// The applet instance.
    pub instance: Vec<u8>,
    /// The applet still has to be deleted from the card.
    pub deletion_pending: bool,
}

/// An audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRow {
    /// The operation.
    pub op_id: String,
    /// Unix milliseconds.
    pub at: i64,
    /// Who (a party, `relay`, `tsm`).
    pub actor: String,
    /// What.
    pub event: String,
    /// Details (log-safe).
    pub detail: String,
}

impl Store {
    /// Statement registering a card for its operator, or updating it when the same
    /// operator registered it before. It changes no row when another operator holds the ICCID
    /// (so the batch fails with a conflict and nothing moves).
    pub fn register_card(c: &CardRow, now: i64) -> Stmt {
        Stmt::one(
            "INSERT INTO cards (iccid, cin, sd_aid, free_memory, state, replaced_by, mno, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (iccid) DO UPDATE SET cin = $2, sd_aid = $3, free_memory = $4, state = $5, replaced_by = $6, updated_at = $8
             WHERE cards.mno = $7",
            vec![
                c.iccid.clone().into(),
                c.cin.clone().into(),
                c.sd_aid.clone().into(),
                c.free_memory.into(),
                c.state.clone().into(),
                c.replaced_by.clone().into(),
                c.mno.clone().into(),
                now.into(),
            ],
        )
    }

    /// Statement changing the state of a card of operator `mno` (`lost`, `replaced` with
    /// the ICCID that replaced it); it changes no row (a conflict) when the card is not that
    /// operator's.
    pub fn mark_card(
        iccid: &str,
        mno: &str,
        state: &str,
        replaced_by: Option<&str>,
        now: i64,
    ) -> Stmt {
        Stmt::one(
            "UPDATE cards SET state = $3, replaced_by = $4, updated_at = $5 WHERE iccid = $1 AND mno = $2",
            vec![
                iccid.into(),
                mno.into(),
                state.into(),
                replaced_by.map(String::from).into(),
                now.into(),
            ],
        )
    }

    /// Statement that changes nothing but fails the batch (a conflict) unless the card is
    /// active when the batch commits: what a new operation on the card is created with, so a
    /// card reported lost meanwhile gets none.
    pub fn require_active_card(iccid: &str) -> Stmt {
        Stmt::one(
            "UPDATE cards SET updated_at = updated_at WHERE iccid = $1 AND state = 'active'",
            vec![iccid.into()],
        )
    }

    /// Statement recording the provider domain an operation created on a card.
    pub fn set_card_domain(iccid: &str, sd_aid: &[u8], now: i64) -> Stmt {
        Stmt::any(
            "UPDATE cards SET sd_aid = $2, updated_at = $3 WHERE iccid = $1",
            vec![iccid.into(), sd_aid.to_vec().into(), now.into()],
        )
    }

    /// A card by ICCID.
    pub async fn card(&self, iccid: &str) -> Result<Option<CardRow>, StoreError> {
        let rows = self
            .query(
                "SELECT iccid, cin, sd_aid, free_memory, state, replaced_by, mno FROM cards WHERE iccid = $1",
                vec![iccid.into()],
            )
            .await?;
        Ok(rows.first().map(|r| CardRow {
            iccid: r[0].text(),
            cin: r[1].text(),
            sd_aid: r[2].blob(),
            free_memory: r[3].int(),
            state: r[4].text(),
            replaced_by: r[5].opt_text(),
            mno: r[6].text(),
        }))
    }

    /// Statement inserting a new credential (with the operation that issues it).
    pub fn insert_credential(c: &CredentialRow, now: i64) -> Stmt {
        Stmt::one(
            "INSERT INTO credentials (op_id, iccid, party, state, reason, serial, not_after, my_number_serial, instance, deletion_pending, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            vec![
                c.op_id.to_hex().into(),
                c.iccid.clone().into(),
                c.party.clone().into(),
                c.state.clone().into(),
                c.reason.clone().into(),
                c.serial.clone().into(),
                c.not_after.into(),
                c.my_number_serial.clone().into(),
                c.instance.clone().into(),
                i64::from(c.deletion_pending).into(),
                now.into(),
            ],
        )
    }

    /// Statement moving a credential from state `from` to `to` (nothing when it is in another
    /// state by then: a revocation that landed first stays).
    pub fn credential_state(op: &OpId, from: &str, to: &str, now: i64) -> Stmt {
        Stmt::any(
            "UPDATE credentials SET state = $3, updated_at = $4 WHERE op_id = $1 AND state = $2",
            vec![op.to_hex().into(), from.into(), to.into(), now.into()],
        )
    }

    /// Statement revoking a credential, decided by the database on the row as it is when the
    /// statement runs: an active credential, or one whose download was under way, has its
    /// applet deleted from the card later. A revoked credential stays as it is.
    pub fn revoke_credential(op: &OpId, reason: &str, now: i64) -> Stmt {
        Stmt::any(
            "UPDATE credentials SET state = 'revoked', reason = $2, updated_at = $3,
             deletion_pending = CASE WHEN state = 'active' OR EXISTS
                (SELECT 1 FROM ops WHERE ops.id = $1 AND ops.state IN ('running', 'interrupted'))
                THEN 1 ELSE deletion_pending END
             WHERE op_id = $1 AND state <> 'revoked'",
            vec![op.to_hex().into(), reason.into(), now.into()],
        )
    }

    /// Statement recording that a revoked credential's applet is gone from the card.
    pub fn credential_deleted(op: &OpId, now: i64) -> Stmt {
        Stmt::any(
            "UPDATE credentials SET deletion_pending = 0, updated_at = $2 WHERE op_id = $1",
            vec![op.to_hex().into(), now.into()],
        )
    }

    fn credential_from(r: &[Val]) -> Option<CredentialRow> {
        Some(CredentialRow {
            op_id: OpId::from_hex(&r[0].text())?,
            iccid: r[1].text(),
            party: r[2].text(),
            state: r[3].text(),
            reason: r[4].opt_text(),
            serial: r[5].text(),
            not_after: r[6].int(),
            my_number_serial: r[7].text(),
            instance: r[8].blob(),
            deletion_pending: r[9].int() != 0,
        })
    }

    /// A credential by its issuing operation.
    pub async fn credential(&self, op: &OpId) -> Result<Option<CredentialRow>, StoreError> {
        let rows = self
            .query(
                "SELECT op_id, iccid, party, state, reason, serial, not_after, my_number_serial, instance, deletion_pending FROM credentials WHERE op_id = $1",
                vec![op.to_hex().into()],
            )
            .await?;
        Ok(rows.first().and_then(|r| Self::credential_from(r)))
    }

    /// The credentials on a card.
    pub async fn credentials_on(&self, iccid: &str) -> Result<Vec<CredentialRow>, StoreError> {
        let rows = self
            .query(
                "SELECT op_id, iccid, party, state, reason, serial, not_after, my_number_serial, instance, deletion_pending FROM credentials WHERE iccid = $1",
                vec![iccid.into()],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| Self::credential_from(r))
            .collect())
    }

    /// Serials of revoked credentials (hex), for the revocation list.
    pub async fn revoked_serials(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .query(
                "SELECT serial FROM credentials WHERE state = 'revoked' ORDER BY serial",
                vec![],
            )
            .await?;
        Ok(rows.iter().map(|r| r[0].text()).collect())
    }

    /// Statement appending an audit event.
    pub fn audit(op: &OpId, at: i64, actor: &str, event: &str, detail: &str) -> Stmt {
        Stmt::any(
            "INSERT INTO audit (op_id, at, actor, event, detail) VALUES ($1, $2, $3, $4, $5)",
            vec![
                op.to_hex().into(),
                at.into(),
                actor.into(),
                event.into(),
                detail.into(),
            ],
        )
    }

    /// The audit trail of an operation (or of every operation when `op` is `None`), oldest
    /// first.
    pub async fn audit_trail(&self, op: Option<&OpId>) -> Result<Vec<AuditRow>, StoreError> {
        let rows = match op {
            Some(id) => {
                self.query(
                    "SELECT op_id, at, actor, event, detail FROM audit WHERE op_id = $1 ORDER BY id",
                    vec![id.to_hex().into()],
                )
                .await?
            }
            None => {
                self.query(
                    "SELECT op_id, at, actor, event, detail FROM audit ORDER BY id",
                    vec![],
                )
                .await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| AuditRow {
                op_id: r[0].text(),
                at: r[1].int(),
                actor: r[2].text(),
                event: r[3].text(),
                detail: r[4].text(),
            })
            .collect())
    }
}
