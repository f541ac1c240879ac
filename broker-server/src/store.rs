//! The broker's state: its tables in [`kagi_db`] (SQLite or PostgreSQL), spread over one or
//! more shards by card.
//!
//! Sharding (for 100M cards × 10 services): everything about a card — its holder record,
//! its credentials, its sessions, the nonces it used, its audit trail — lives on the shard
//! its id hashes to (jump consistent hashing of SHA-256(card): adding a shard moves only
//! 1/(n+1) of the cards). The small tables every shard needs — services and settings (the
//! current KEK) — are written to all shards. A login touches one shard, an act one shard; no
//! query spans shards except the administrator's audit of everything. With 10 shards of
//! PostgreSQL, each holds 10M cards and 100M credentials (about 32 GB at the measured 321 MB
//! per million credentials, indexes and audit rows included), well within one instance; the broker instances in front are
//! stateless and share the shards.

pub mod back_channel;
mod kek;

use crate::envelope::SealedRecord;
use broker_protocol::Assurance;
use broker_protocol::api::{AuditEntry, Method, ServicePolicy};
use kagi_db::{Backend, Db, Schema, Stmt, StoreError, Val};
use kagi_signed::password::{Phc, Verifier};
use sha2::{Digest, Sha256};

/// The broker's tables.
pub const SCHEMA: Schema = Schema {
    name: "broker",
    version: 1,
    ddl: &[
        "CREATE TABLE IF NOT EXISTS cards (
            card TEXT PRIMARY KEY, holder TEXT NOT NULL, state TEXT NOT NULL,
            pw_salt BYTES, pw_iterations BIGINT, pw_verifier BYTES, pw_failures BIGINT NOT NULL,
            updated_at BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS cards_holder ON cards (holder)",
        "CREATE TABLE IF NOT EXISTS services (
            id TEXT PRIMARY KEY, method TEXT NOT NULL, min_assurance TEXT NOT NULL,
            hours_from BIGINT, hours_to BIGINT, updated_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS credentials (
            card TEXT NOT NULL, service TEXT NOT NULL, version BIGINT NOT NULL, state TEXT NOT NULL,
            kek TEXT NOT NULL, wrapped_dek BYTES NOT NULL, nonce BYTES NOT NULL,
            ciphertext BYTES NOT NULL, public_key BYTES, pairwise TEXT NOT NULL,
            created_at BIGINT NOT NULL, PRIMARY KEY (card, service, version))",
        "CREATE INDEX IF NOT EXISTS credentials_kek ON credentials (kek)",
        "CREATE TABLE IF NOT EXISTS sessions (
            token_hash BYTES PRIMARY KEY, card TEXT NOT NULL, assurance TEXT NOT NULL,
            expires_at BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS sessions_card ON sessions (card)",
        "CREATE TABLE IF NOT EXISTS used_nonces (nonce BYTES PRIMARY KEY, expires_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS audit (
            id SERIAL_PK, card TEXT NOT NULL, at BIGINT NOT NULL, service TEXT NOT NULL,
            assurance TEXT NOT NULL, event TEXT NOT NULL, outcome TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS audit_card ON audit (card, id)",
        "CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
        // Records a KEK rotation could not open while the key store worked: set aside (and
        // audited) so that the rotation goes on with the others; `verify-records` lists them.
        "CREATE TABLE IF NOT EXISTS quarantine (
        card TEXT NOT NULL, service TEXT NOT NULL, version BIGINT NOT NULL, kek TEXT NOT NULL,
        at BIGINT NOT NULL, PRIMARY KEY (card, service, version))",
        // Password tries per holder and per client (`holder:<id>`, `client:<address>`), on
        // the first shard: claimed by compare-and-swap on `failures` before a password is
        // checked, so concurrent tries never check more than the backoff allows.
        "CREATE TABLE IF NOT EXISTS pw_backoff (
            key TEXT PRIMARY KEY, failures BIGINT NOT NULL, next_at BIGINT NOT NULL)",
        // A KEK rotation's claim on a record: instances rotating together take disjoint
        // records (a claim is an upsert that only replaces an expired one), and the claim of
        // an instance that died expires.
        "CREATE TABLE IF NOT EXISTS rekey_leases (
            card TEXT NOT NULL, service TEXT NOT NULL, version BIGINT NOT NULL,
            owner TEXT NOT NULL, until BIGINT NOT NULL, PRIMARY KEY (card, service, version))",
        "CREATE TABLE IF NOT EXISTS replay (
            sender TEXT NOT NULL, msg_id TEXT NOT NULL, keep_until BIGINT NOT NULL,
            PRIMARY KEY (sender, msg_id))",
        back_channel::DDL[0],
        back_channel::DDL[1],
        back_channel::DDL[2],
        back_channel::DDL[3],
    ],
    migrations: &[],
};

/// A card's holder record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardRow {
    /// The card's id (its authentication certificate's subject common name).
    pub card: String,
    /// The holder's id (the password path's login name).
    pub holder: String,
    /// `active` or `revoked`.
    pub state: String,
    /// The holder's password verifier: Argon2id (PHC string in `pw_verifier`), or PBKDF2
    /// (`pw_salt`, `pw_iterations`, `pw_verifier`) from before, upgraded at the next login.
    pub password: Option<Verifier>,
}

/// A card's credential for a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRow {
    /// The card.
    pub card: String,
    /// The service.
    pub service: String,
    /// Its version (a rotation makes a new one).
    pub version: i64,
    /// `active`, `retired`.
    pub state: String,
    /// The sealed secret.
    pub sealed: SealedRecord,
    /// Signature credentials: the public key (DER SubjectPublicKeyInfo).
    pub public_key: Option<Vec<u8>>,
    /// The holder's id at this service (pairwise).
    pub pairwise: String,
}

impl CredentialRow {
    /// What binds the sealed secret to this row.
    pub fn aad(card: &str, service: &str, version: i64) -> Vec<u8> {
        format!("kagi-broker credential\0{card}\0{service}\0{version}").into_bytes()
    }
}

/// One shard.
#[derive(Clone)]
pub struct Shard(pub Db);

impl std::ops::Deref for Shard {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.0
    }
}

fn arr<const N: usize>(v: &Val) -> Option<[u8; N]> {
    <[u8; N]>::try_from(v.blob().as_slice()).ok()
}

fn credential_from(r: &[Val]) -> CredentialRow {
    CredentialRow {
        card: r[0].text(),
        service: r[1].text(),
        version: r[2].int(),
        state: r[3].text(),
        sealed: SealedRecord {
            kek: r[4].text(),
            wrapped_dek: r[5].blob(),
            nonce: r[6].blob(),
            ciphertext: r[7].blob(),
        },
        public_key: match &r[8] {
            Val::Blob(b) => Some(b.clone()),
            _ => None,
        },
        pairwise: r[9].text(),
    }
}

impl Shard {
    /// Statement enrolling (or re-enrolling) a card's holder — only while the card is not
    /// revoked: changes one row, or none when the card is revoked (a revoke always wins).
    pub fn enrol_card(card: &str, holder: &str, password_phc: Option<&str>, now: i64) -> Stmt {
        Stmt::one(
            "INSERT INTO cards (card, holder, state, pw_salt, pw_iterations, pw_verifier, pw_failures, updated_at)
             VALUES ($1, $2, 'active', NULL, NULL, $3, 0, $4)
             ON CONFLICT (card) DO UPDATE SET holder = $2, pw_salt = NULL, pw_iterations = NULL,
             pw_verifier = $3, pw_failures = 0, updated_at = $4 WHERE cards.state = 'active'",
            vec![
                card.into(),
                holder.into(),
                password_phc.map(|p| p.as_bytes().to_vec()).into(),
                now.into(),
            ],
        )
    }

    /// Statement revoking a card (one row; none if the card is unknown). Nothing else of the
    /// row is written, so no concurrent request can write `active` back.
    pub fn revoke_card(card: &str, now: i64) -> Stmt {
        Stmt::one(
            "UPDATE cards SET state = 'revoked', updated_at = $2 WHERE card = $1",
            vec![card.into(), now.into()],
        )
    }

    /// Statement that changes one row only while the card is active: put first in a batch
    /// that opens a session, it takes the row's lock (PostgreSQL) or the writer (SQLite), so
    /// a revoke committed before it makes the batch fail, and a revoke after it waits and
    /// then ends the session.
    pub fn still_active(card: &str, now: i64) -> Stmt {
        Stmt::one(
            "UPDATE cards SET updated_at = $2 WHERE card = $1 AND state = 'active'",
            vec![card.into(), now.into()],
        )
    }

    /// Statement replacing a holder's password verifier by `new_phc`, only if it is still
    /// the one that was read (`old`), and touching nothing else of the row.
    pub fn upgrade_verifier(card: &str, old: &Verifier, new_phc: &str, now: i64) -> Stmt {
        let old_bytes = match old {
            Verifier::Argon2id(p) => p.to_phc().into_bytes(),
            Verifier::Pbkdf2 { hash, .. } => hash.to_vec(),
        };
        Stmt::any(
            "UPDATE cards SET pw_salt = NULL, pw_iterations = NULL, pw_verifier = $2, updated_at = $4
             WHERE card = $1 AND pw_verifier = $3",
            vec![
                card.into(),
                new_phc.as_bytes().to_vec().into(),
                old_bytes.into(),
                now.into(),
            ],
        )
    }

    /// A backoff entry: `(failures, next_at ms)`.
    pub async fn backoff(&self, key: &str) -> Result<Option<(i64, i64)>, StoreError> {
        let rows = self
            .query(
                "SELECT failures, next_at FROM pw_backoff WHERE key = $1",
                vec![key.into()],
            )
            .await?;
        Ok(rows.first().map(|r| (r[0].int(), r[1].int())))
    }

    /// Statement claiming a try: the entry goes from `seen` failures (`None`: no entry) to
    /// `failures`, next try at `next_at` — changes one row only if nobody claimed meanwhile.
    pub fn claim_try(key: &str, seen: Option<i64>, failures: i64, next_at: i64) -> Stmt {
        match seen {
            None => Stmt::one(
                "INSERT INTO pw_backoff (key, failures, next_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                vec![key.into(), failures.into(), next_at.into()],
            ),
            Some(f) => Stmt::one(
                "UPDATE pw_backoff SET failures = $3, next_at = $4 WHERE key = $1 AND failures = $2",
                vec![key.into(), f.into(), failures.into(), next_at.into()],
            ),
        }
    }

    /// Statement forgetting a holder's failures (the right password).
    pub fn clear_backoff(key: &str) -> Stmt {
        Stmt::any(
            "UPDATE pw_backoff SET failures = 0, next_at = 0 WHERE key = $1",
            vec![key.into()],
        )
    }

    /// Statement giving a client back the try a right password used.
    pub fn refund_try(key: &str) -> Stmt {
        Stmt::any(
            "UPDATE pw_backoff SET failures = failures - 1 WHERE key = $1 AND failures > 0",
            vec![key.into()],
        )
    }

    /// Statement enrolling a card (active, holder id = card id) unless it exists.
    pub fn insert_card_if_new(card: &str, now: i64) -> Stmt {
        Stmt::any(
            "INSERT INTO cards (card, holder, state, pw_failures, updated_at) VALUES ($1, $1, 'active', 0, $2)
             ON CONFLICT (card) DO NOTHING",
            vec![card.into(), now.into()],
        )
    }

    fn card_from(r: &[Val]) -> CardRow {
        let password = match (arr::<16>(&r[3]), &r[4], arr::<32>(&r[5])) {
            (Some(salt), Val::Int(i), Some(hash)) => Some(Verifier::Pbkdf2 {
                salt,
                iterations: u32::try_from(*i).unwrap_or(0),
                hash,
            }),
            _ => std::str::from_utf8(&r[5].blob())
                .ok()
                .and_then(|s| Phc::parse(s).ok())
                .map(Verifier::Argon2id),
        };
        CardRow {
            card: r[0].text(),
            holder: r[1].text(),
            state: r[2].text(),
            password,
        }
    }

    /// A card by id.
    pub async fn card(&self, card: &str) -> Result<Option<CardRow>, StoreError> {
        let rows = self
            .query(
                "SELECT card, holder, state, pw_salt, pw_iterations, pw_verifier FROM cards WHERE card = $1",
                vec![card.into()],
            )
            .await?;
        Ok(rows.first().map(|r| Self::card_from(r)))
    }

    /// A card by its holder's id.
    pub async fn card_of_holder(&self, holder: &str) -> Result<Option<CardRow>, StoreError> {
        let rows = self
            .query(
                "SELECT card, holder, state, pw_salt, pw_iterations, pw_verifier FROM cards WHERE holder = $1",
                vec![holder.into()],
            )
            .await?;
        Ok(rows.first().map(|r| Self::card_from(r)))
    }

    /// Statement writing a service's policy.
    pub fn put_service(s: &ServicePolicy, now: i64) -> Stmt {
        let (from, to) = match s.allowed_hours {
            Some((f, t)) => (Val::Int(i64::from(f)), Val::Int(i64::from(t))),
            None => (Val::Null, Val::Null),
        };
        Stmt::any(
            "INSERT INTO services (id, method, min_assurance, hours_from, hours_to, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET method = $2, min_assurance = $3, hours_from = $4, hours_to = $5, updated_at = $6",
            vec![
                s.id.clone().into(),
                s.method.name().into(),
                s.min_assurance.name().into(),
                from,
                to,
                now.into(),
            ],
        )
    }

    /// A service's policy.
    pub async fn service(&self, id: &str) -> Result<Option<ServicePolicy>, StoreError> {
        let rows = self
            .query(
                "SELECT id, method, min_assurance, hours_from, hours_to FROM services WHERE id = $1",
                vec![id.into()],
            )
            .await?;
        Ok(rows.first().and_then(|r| {
            Some(ServicePolicy {
                id: r[0].text(),
                method: Method::parse(&r[1].text())?,
                min_assurance: Assurance::parse(&r[2].text())?,
                allowed_hours: match (&r[3], &r[4]) {
                    (Val::Int(f), Val::Int(t)) => Some((*f as u8, *t as u8)),
                    _ => None,
                },
            })
        }))
    }

    /// Statement adding a credential version (fails if the version exists: another
    /// instance made it first).
    pub fn insert_credential(c: &CredentialRow, now: i64) -> Stmt {
        Stmt::one(
            "INSERT INTO credentials (card, service, version, state, kek, wrapped_dek, nonce, ciphertext, public_key, pairwise, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
            vec![
                c.card.clone().into(),
                c.service.clone().into(),
                c.version.into(),
                c.state.clone().into(),
                c.sealed.kek.clone().into(),
                c.sealed.wrapped_dek.clone().into(),
                c.sealed.nonce.clone().into(),
                c.sealed.ciphertext.clone().into(),
                c.public_key.clone().into(),
                c.pairwise.clone().into(),
                now.into(),
            ],
        )
    }

    /// Statement retiring a credential version (only if still active).
    pub fn retire_credential(card: &str, service: &str, version: i64) -> Stmt {
        Stmt::one(
            "UPDATE credentials SET state = 'retired' WHERE card = $1 AND service = $2 AND version = $3 AND state = 'active'",
            vec![card.into(), service.into(), version.into()],
        )
    }

    /// The active credential of a card for a service.
    pub async fn active_credential(
        &self,
        card: &str,
        service: &str,
    ) -> Result<Option<CredentialRow>, StoreError> {
        let rows = self
            .query(
                "SELECT card, service, version, state, kek, wrapped_dek, nonce, ciphertext, public_key, pairwise
                 FROM credentials WHERE card = $1 AND service = $2 AND state = 'active' ORDER BY version DESC",
                vec![card.into(), service.into()],
            )
            .await?;
        Ok(rows.first().map(|r| credential_from(r)))
    }

    /// Up to `limit` credentials whose data keys are not under `kek` (for a rotation).
    pub async fn credentials_not_under(
        &self,
        kek: &str,
        limit: i64,
        now: i64,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        self.rotation_work(kek, false, limit, now).await
    }

    /// Up to `limit` credentials after `(card, service, version)` in key order (a walk over
    /// every record).
    pub async fn credentials_after(
        &self,
        after: &(String, String, i64),
        limit: i64,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let rows = self
            .query(
                "SELECT card, service, version, state, kek, wrapped_dek, nonce, ciphertext, public_key, pairwise
                 FROM credentials WHERE (card > $1) OR (card = $1 AND service > $2) OR (card = $1 AND service = $2 AND version > $3)
                 ORDER BY card, service, version LIMIT $4",
                vec![after.0.clone().into(), after.1.clone().into(), after.2.into(), limit.into()],
            )
            .await?;
        Ok(rows.iter().map(|r| credential_from(r)).collect())
    }

    /// How many credentials are not under `kek`.
    pub async fn count_not_under(&self, kek: &str) -> Result<i64, StoreError> {
        self.count_rotation_work(kek, false).await
    }

    /// Statement setting a record aside from KEK rotations (see the `quarantine` table).
    pub fn quarantine_stmt(c: &CredentialRow, at: i64) -> Stmt {
        Stmt::any(
            "INSERT INTO quarantine (card, service, version, kek, at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            vec![
                c.card.clone().into(),
                c.service.clone().into(),
                c.version.into(),
                c.sealed.kek.clone().into(),
                at.into(),
            ],
        )
    }

    /// How many records are set aside from KEK rotations.
    pub async fn count_quarantined(&self) -> Result<i64, StoreError> {
        let rows = self
            .query("SELECT COUNT(*) FROM quarantine", vec![])
            .await?;
        Ok(rows.first().map(|r| r[0].int()).unwrap_or(0))
    }

    /// Statement creating a session.
    pub fn put_session(
        token_hash: &[u8; 32],
        card: &str,
        assurance: Assurance,
        expires_at: i64,
    ) -> Stmt {
        Stmt::one(
            "INSERT INTO sessions (token_hash, card, assurance, expires_at) VALUES ($1, $2, $3, $4)",
            vec![
                token_hash.to_vec().into(),
                card.into(),
                assurance.name().into(),
                expires_at.into(),
            ],
        )
    }

    /// A session's card and assurance, if it is valid at `now`.
    pub async fn session(
        &self,
        token_hash: &[u8; 32],
        now: i64,
    ) -> Result<Option<(String, Assurance)>, StoreError> {
        let rows = self
            .query(
                "SELECT card, assurance FROM sessions WHERE token_hash = $1 AND expires_at > $2",
                vec![token_hash.to_vec().into(), now.into()],
            )
            .await?;
        Ok(rows
            .first()
            .and_then(|r| Some((r[0].text(), Assurance::parse(&r[1].text())?))))
    }

    /// Statement ending every session of a card.
    pub fn end_sessions(card: &str) -> Stmt {
        Stmt::any("DELETE FROM sessions WHERE card = $1", vec![card.into()])
    }

    /// Statement recording a login nonce as used (fails if it was used before).
    pub fn use_nonce(nonce: &[u8], expires_at: i64) -> Stmt {
        Stmt::one(
            "INSERT INTO used_nonces (nonce, expires_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            vec![nonce.to_vec().into(), expires_at.into()],
        )
    }

    /// Statement appending to the audit trail.
    pub fn audit(
        card: &str,
        at: i64,
        service: &str,
        assurance: &str,
        event: &str,
        outcome: &str,
    ) -> Stmt {
        Stmt::any(
            "INSERT INTO audit (card, at, service, assurance, event, outcome) VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                card.into(),
                at.into(),
                service.into(),
                assurance.into(),
                event.into(),
                outcome.into(),
            ],
        )
    }

    /// The audit trail of a card (or all, when `card` is `None`), oldest first.
    pub async fn audit_trail(&self, card: Option<&str>) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = match card {
            Some(c) => {
                self.query(
                    "SELECT at, card, service, assurance, event, outcome FROM audit WHERE card = $1 ORDER BY id",
                    vec![c.into()],
                )
                .await?
            }
            None => {
                self.query(
                    "SELECT at, card, service, assurance, event, outcome FROM audit ORDER BY id",
                    vec![],
                )
                .await?
            }
        };
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                at: r[0].int().max(0) as u64,
                card: r[1].text(),
                service: r[2].text(),
                assurance: r[3].text(),
                event: r[4].text(),
                outcome: r[5].text(),
            })
            .collect())
    }

    /// A setting.
    pub async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let rows = self
            .query(
                "SELECT value FROM settings WHERE name = $1",
                vec![name.into()],
            )
            .await?;
        Ok(rows.first().map(|r| r[0].text()))
    }

    /// Statement writing a setting.
    pub fn put_setting(name: &str, value: &str) -> Stmt {
        Stmt::any(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = $2",
            vec![name.into(), value.into()],
        )
    }

    /// Forgets expired sessions, nonces and replay entries.
    pub async fn purge(&self, now: i64) -> Result<(), StoreError> {
        self.commit(vec![
            Stmt::any(
                "DELETE FROM sessions WHERE expires_at < $1",
                vec![now.into()],
            ),
            Stmt::any(
                "DELETE FROM used_nonces WHERE expires_at < $1",
                vec![now.into()],
            ),
            Stmt::any("DELETE FROM replay WHERE keep_until < $1", vec![now.into()]),
        ])
        .await
    }
}

/// Jump consistent hashing (Lamping and Veach, 2014): the shard, in `0..n`, of a 64-bit key.
pub fn jump_hash(mut key: u64, n: u32) -> u32 {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(n) {
        b = j;
        key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
        j = ((b.wrapping_add(1) as f64)
            * ((1u64 << 31) as f64 / ((key >> 33).wrapping_add(1) as f64))) as i64;
    }
    b.max(0) as u32
}

/// The shards: each card's data on one, the small shared tables on all.
#[derive(Clone)]
pub struct Shards(Vec<Shard>);

impl Shards {
    /// Opens (creating and migrating) every shard.
    pub async fn open(backends: &[Backend]) -> Result<Shards, StoreError> {
        if backends.is_empty() {
            return Err(StoreError::Db("no database given".into()));
        }
        let mut v = Vec::new();
        for b in backends {
            v.push(Shard(Db::open(b, &SCHEMA).await?));
        }
        Ok(Shards(v))
    }

    /// The shard of a card.
    pub fn of(&self, card: &str) -> &Shard {
        &self.0[self.index_of(card)]
    }

    /// The shard of a card, by index (for sessions, whose token names it).
    pub fn index_of(&self, card: &str) -> usize {
        let h = Sha256::digest(card.as_bytes());
        let key = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
        jump_hash(key, self.0.len() as u32) as usize
    }

    /// Shard `i`.
    pub fn get(&self, i: usize) -> Option<&Shard> {
        self.0.get(i)
    }

    /// Every shard.
    pub fn all(&self) -> &[Shard] {
        &self.0
    }

    /// The first shard (administrators' replay cache).
    pub fn first(&self) -> &Shard {
        &self.0[0]
    }

    /// Runs `stmt` on every shard (the shared tables).
    pub async fn everywhere(&self, stmts: Vec<Stmt>) -> Result<(), StoreError> {
        for s in &self.0 {
            s.commit(stmts.clone()).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_spreads_and_moves_little() {
        let keys: Vec<u64> = (0..10_000u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .collect();
        let mut counts = [0u32; 4];
        for k in &keys {
            counts[jump_hash(*k, 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|c| (2200..2800).contains(c)),
            "{counts:?}"
        );
        // From 4 to 5 shards, about a fifth of the keys move, and only to the new shard.
        let moved: Vec<&u64> = keys
            .iter()
            .filter(|k| jump_hash(**k, 4) != jump_hash(**k, 5))
            .collect();
        assert!((1700..2300).contains(&moved.len()), "{}", moved.len());
        assert!(moved.iter().all(|k| jump_hash(**k, 5) == 4));
        assert_eq!(jump_hash(42, 1), 0);
    }
}
