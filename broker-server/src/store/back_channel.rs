//! The back channel's rows: each service's mode (on every shard, like the services), the
//! single-use codes of the one-time-code mode (on the card's shard, stored only as SHA-256
//! hashes), and the administrators' idempotent answers.

use super::Shard;
use broker_protocol::Assurance;
use broker_protocol::api::BackChannel;
use kagi_db::{Stmt, StoreError, Val};

/// The tables (added to the broker's schema).
pub const DDL: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS back_channels (
        service TEXT PRIMARY KEY, mode TEXT NOT NULL, service_key BYTES, code_secs BIGINT,
        updated_at BIGINT NOT NULL)",
    // A code is redeemed by one conditional update (`redeemed_at IS NULL AND expires_at >
    // now`, the service and the binding): two redemptions racing, one wins.
    "CREATE TABLE IF NOT EXISTS redeem_codes (
        code_hash BYTES PRIMARY KEY, card TEXT NOT NULL, service TEXT NOT NULL,
        binding BYTES NOT NULL, assurance TEXT NOT NULL, created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL, redeemed_at BIGINT)",
    // The answer to an administrator's request with an idempotency key, sealed under a KEK
    // (it may carry a MAC key), written in the transaction of the change it answers.
    "CREATE TABLE IF NOT EXISTS admin_idem (
        sender TEXT NOT NULL, idem_key TEXT NOT NULL, request_hash BYTES NOT NULL,
        kek TEXT NOT NULL, wrapped_dek BYTES NOT NULL, nonce BYTES NOT NULL,
        ciphertext BYTES NOT NULL, keep_until BIGINT NOT NULL,
        PRIMARY KEY (sender, idem_key))",
    // Push mode: where the broker delivers a service's proofs, and the CA its TLS
    // certificate must chain to (a table of its own, so older databases only gain it).
    "CREATE TABLE IF NOT EXISTS push_endpoints (
        service TEXT PRIMARY KEY, url TEXT NOT NULL, service_ca BYTES NOT NULL,
        updated_at BIGINT NOT NULL)",
];

/// A code as it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeRow {
    /// The card the holder logged in with.
    pub card: String,
    /// The service it was made for.
    pub service: String,
    /// SHA-256 of what it is bound to (the service's challenge or nonce).
    pub binding: Vec<u8>,
    /// How the holder had authenticated.
    pub assurance: Assurance,
    /// Unix ms.
    pub expires_at: i64,
    /// Unix ms, once redeemed.
    pub redeemed_at: Option<i64>,
}

/// A stored idempotent answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemRow {
    /// SHA-256 of the request's body.
    pub request_hash: Vec<u8>,
    /// The answer, sealed.
    pub sealed: crate::envelope::SealedRecord,
}

impl Shard {
    /// Statement writing a service's back-channel mode (a push endpoint needs
    /// [`Shard::put_push_endpoint`] in the same transaction).
    pub fn put_back_channel(service: &str, bc: &BackChannel, now: i64) -> Stmt {
        let (key, secs) = match bc {
            BackChannel::Relayed | BackChannel::Push { .. } => (Val::Null, Val::Null),
            BackChannel::Code {
                service_key,
                code_secs,
            } => (
                Val::Blob(service_key.clone()),
                Val::Int(i64::from(*code_secs)),
            ),
        };
        Stmt::any(
            "INSERT INTO back_channels (service, mode, service_key, code_secs, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (service) DO UPDATE SET mode = $2, service_key = $3, code_secs = $4, updated_at = $5",
            vec![service.into(), bc.name().into(), key, secs, now.into()],
        )
    }

    /// Statement writing (push mode) or removing (other modes) a service's push endpoint.
    pub fn put_push_endpoint(service: &str, bc: &BackChannel, now: i64) -> Stmt {
        match bc {
            BackChannel::Push { url, service_ca } => Stmt::any(
                "INSERT INTO push_endpoints (service, url, service_ca, updated_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (service) DO UPDATE SET url = $2, service_ca = $3, updated_at = $4",
                vec![
                    service.into(),
                    url.clone().into(),
                    service_ca.clone().into(),
                    now.into(),
                ],
            ),
            _ => Stmt::any(
                "DELETE FROM push_endpoints WHERE service = $1",
                vec![service.into()],
            ),
        }
    }

    /// A service's back-channel mode ([`BackChannel::Relayed`] when none was set).
    pub async fn back_channel(&self, service: &str) -> Result<BackChannel, StoreError> {
        let rows = self
            .query(
                "SELECT b.mode, b.service_key, b.code_secs, p.url, p.service_ca
                 FROM back_channels b LEFT JOIN push_endpoints p ON p.service = b.service
                 WHERE b.service = $1",
                vec![service.into()],
            )
            .await?;
        Ok(match rows.first() {
            Some(r) if r[0].text() == "code" => BackChannel::Code {
                service_key: r[1].blob(),
                code_secs: u32::try_from(r[2].int()).unwrap_or(0),
            },
            Some(r) if r[0].text() == "push" => BackChannel::Push {
                url: r[3].text(),
                service_ca: r[4].blob(),
            },
            _ => BackChannel::Relayed,
        })
    }

    /// Statement storing a new code (its hash only).
    pub fn put_code(code_hash: &[u8; 32], c: &CodeRow, now: i64) -> Stmt {
        Stmt::one(
            "INSERT INTO redeem_codes (code_hash, card, service, binding, assurance, created_at, expires_at, redeemed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)",
            vec![
                code_hash.to_vec().into(),
                c.card.clone().into(),
                c.service.clone().into(),
                c.binding.clone().into(),
                c.assurance.name().into(),
                now.into(),
                c.expires_at.into(),
            ],
        )
    }

    /// Statement redeeming a code: changes its one row only if it is not redeemed yet, not
    /// expired at `now`, made for `service` and bound to `binding` (else nothing, and the
    /// batch fails).
    pub fn redeem_code(code_hash: &[u8; 32], service: &str, binding: &[u8], now: i64) -> Stmt {
        Stmt::one(
            "UPDATE redeem_codes SET redeemed_at = $4
             WHERE code_hash = $1 AND service = $2 AND binding = $3
               AND redeemed_at IS NULL AND expires_at > $4",
            vec![
                code_hash.to_vec().into(),
                service.into(),
                binding.to_vec().into(),
                now.into(),
            ],
        )
    }

    /// A code by its hash (to explain a refused redemption, and to answer a redeemed one).
    pub async fn code(&self, code_hash: &[u8; 32]) -> Result<Option<CodeRow>, StoreError> {
        let rows = self
            .query(
                "SELECT card, service, binding, assurance, expires_at, redeemed_at FROM redeem_codes WHERE code_hash = $1",
                vec![code_hash.to_vec().into()],
            )
            .await?;
        Ok(rows.first().and_then(|r| {
            Some(CodeRow {
                card: r[0].text(),
                service: r[1].text(),
                binding: r[2].blob(),
                assurance: Assurance::parse(&r[3].text())?,
                expires_at: r[4].int(),
                redeemed_at: match r[5] {
                    Val::Int(t) => Some(t),
                    _ => None,
                },
            })
        }))
    }

    /// Statement storing an idempotent answer (fails if the key is taken: a concurrent
    /// request with the same key committed first).
    pub fn put_idem(sender: &str, key: &str, row: &IdemRow, keep_until: i64) -> Stmt {
        Stmt::one(
            "INSERT INTO admin_idem (sender, idem_key, request_hash, kek, wrapped_dek, nonce, ciphertext, keep_until)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            vec![
                sender.into(),
                key.into(),
                row.request_hash.clone().into(),
                row.sealed.kek.clone().into(),
                row.sealed.wrapped_dek.clone().into(),
                row.sealed.nonce.clone().into(),
                row.sealed.ciphertext.clone().into(),
                keep_until.into(),
            ],
        )
    }

    /// The stored answer for a sender's idempotency key.
    pub async fn idem(&self, sender: &str, key: &str) -> Result<Option<IdemRow>, StoreError> {
        let rows = self
            .query(
                "SELECT request_hash, kek, wrapped_dek, nonce, ciphertext FROM admin_idem WHERE sender = $1 AND idem_key = $2",
                vec![sender.into(), key.into()],
            )
            .await?;
        Ok(rows.first().map(|r| IdemRow {
            request_hash: r[0].blob(),
            sealed: crate::envelope::SealedRecord {
                kek: r[1].text(),
                wrapped_dek: r[2].blob(),
                nonce: r[3].blob(),
                ciphertext: r[4].blob(),
            },
        }))
    }

    /// Forgets codes and idempotent answers past their time.
    pub async fn purge_back_channel(&self, now: i64) -> Result<(), StoreError> {
        self.commit(vec![
            Stmt::any(
                "DELETE FROM redeem_codes WHERE expires_at < $1",
                vec![(now - 3_600_000).into()],
            ),
            Stmt::any(
                "DELETE FROM admin_idem WHERE keep_until < $1",
                vec![now.into()],
            ),
        ])
        .await
    }
}
