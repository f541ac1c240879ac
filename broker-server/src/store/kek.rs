//! What a KEK rotation asks of the tables: its work (records to re-wrap or convert), the
//! claims instances take on records, and the conditional update of each record.

use super::{CredentialRow, Shard, credential_from};
use crate::envelope::SealedRecord;
use kagi_db::{Stmt, StoreError};

/// A rotation's query with its work predicate on `credentials c`, as a `&'static str`:
/// records under another KEK than `$1`, and with `convert` (the key store keeps credentials
/// inside under `$1`) also those of the data-key form (a GCM nonce) under `$1` itself, of the
/// services whose credential is a key (an assertion service's record is no key the HSM
/// could use).
macro_rules! rotation_sql {
    ($convert:expr, $before:literal, $after:literal) => {
        if $convert {
            concat!(
                $before,
                " ((c.kek < $1 OR c.kek > $1) OR (length(c.nonce) > 0 AND c.service IN
                    (SELECT id FROM services WHERE method <> 'assertion'))) ",
                $after
            )
        } else {
            concat!($before, " (c.kek < $1 OR c.kek > $1) ", $after)
        }
    };
}

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

    /// Up to `limit` records a rotation to `kek` has to do, not quarantined and not claimed
    /// at `now`: those under another KEK, and with `convert` also those of the data-key form
    /// under `kek` itself (see `rotation_sql!`).
    pub async fn rotation_work(
        &self,
        kek: &str,
        convert: bool,
        limit: i64,
        now: i64,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let rows = self
            .query(
                rotation_sql!(
                    convert,
                    "SELECT c.card, c.service, c.version, c.state, c.kek, c.wrapped_dek, c.nonce, c.ciphertext, c.public_key, c.pairwise
                 FROM credentials c WHERE",
                    "AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.card = c.card
                     AND q.service = c.service AND q.version = c.version)
                 AND NOT EXISTS (SELECT 1 FROM rekey_leases l WHERE l.card = c.card
                     AND l.service = c.service AND l.version = c.version
                     AND l.until >= $3)
                 LIMIT $2"
                ),
                vec![kek.into(), limit.into(), now.into()],
            )
            .await?;
        Ok(rows.iter().map(|r| credential_from(r)).collect())
    }

    /// Statement claiming a record for a KEK rotation by `owner` until `until`: changes one
    /// row when the record is free (no claim, or an expired one), none when another instance
    /// holds it.
    pub fn claim_rekey(c: &CredentialRow, owner: &str, now: i64, until: i64) -> Stmt {
        Stmt::any(
            "INSERT INTO rekey_leases (card, service, version, owner, until) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (card, service, version) DO UPDATE SET owner = excluded.owner, until = excluded.until
             WHERE rekey_leases.until < $6",
            vec![
                c.card.clone().into(),
                c.service.clone().into(),
                c.version.into(),
                owner.into(),
                until.into(),
                now.into(),
            ],
        )
    }

    /// The records `owner` holds claims on that are still work for a rotation to `to`
    /// (`rotation_sql!`), as they are now (read after the claims were committed: a
    /// record another instance re-wrapped before this one could claim it is not among them).
    pub async fn claimed_not_under(
        &self,
        owner: &str,
        to: &str,
        convert: bool,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let rows = self
            .query(
                rotation_sql!(
                    convert,
                    "SELECT c.card, c.service, c.version, c.state, c.kek, c.wrapped_dek, c.nonce, c.ciphertext, c.public_key, c.pairwise
                 FROM credentials c JOIN rekey_leases l
                   ON l.card = c.card AND l.service = c.service AND l.version = c.version
                 WHERE l.owner = $2 AND",
                    ""
                ),
                vec![to.into(), owner.into()],
            )
            .await?;
        Ok(rows.iter().map(|r| credential_from(r)).collect())
    }

    /// Statement releasing every claim of `owner`.
    pub fn release_rekeys(owner: &str) -> Stmt {
        Stmt::any(
            "DELETE FROM rekey_leases WHERE owner = $1",
            vec![owner.into()],
        )
    }

    /// How many records a rotation to `kek` still has to do (`rotation_sql!`), not
    /// counting quarantined ones.
    pub async fn count_rotation_work(&self, kek: &str, convert: bool) -> Result<i64, StoreError> {
        let rows = self
            .query(
                rotation_sql!(
                    convert,
                    "SELECT COUNT(*) FROM credentials c WHERE",
                    "AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.card = c.card
                     AND q.service = c.service AND q.version = c.version)"
                ),
                vec![kek.into()],
            )
            .await?;
        Ok(rows.first().map(|r| r[0].int()).unwrap_or(0))
    }

    /// Statement swapping a record's sealed form under a new KEK, or into the in-HSM form
    /// (only if it is still as it was read: under `from`, with the wrapped key `c` holds; a
    /// rotation run twice, or by two instances, re-wraps or converts each record once).
    pub fn rewrap_stmt(c: &CredentialRow, from: &str, to: &SealedRecord) -> Stmt {
        Stmt::one(
            // The whole sealed form: a record kept in the HSM is re-wrapped as a whole (its
            // ciphertext is the wrapped key); a data-key record keeps nonce and ciphertext,
            // or changes form as a whole when it is converted.
            "UPDATE credentials SET kek = $4, wrapped_dek = $5, nonce = $7, ciphertext = $8 WHERE card = $1 AND service = $2 AND version = $3 AND kek = $6 AND wrapped_dek = $9",
            vec![
                c.card.clone().into(),
                c.service.clone().into(),
                c.version.into(),
                to.kek.clone().into(),
                to.wrapped_dek.clone().into(),
                from.into(),
                to.nonce.clone().into(),
                to.ciphertext.clone().into(),
                c.sealed.wrapped_dek.clone().into(),
            ],
        )
    }
}
