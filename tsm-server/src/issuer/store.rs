//! The JPKI issuer's state ([`SCHEMA`] in `kagi_db`, SQLite or PostgreSQL): the signature
//! certificates it has seen (and whether revoked), the links phone-certificate serial ↔
//! signature-certificate serial (seed 004 ⑧), the applications already used, the replay log
//! of signed requests and the audit trail.
//!
//! The one rule the tables keep: **no active phone certificate is linked to a revoked
//! signature certificate**. An issuance and a revocation of the same signature serial both
//! write that serial's `sign_certs` row first — the issuance by a conditional update (`WHERE
//! revoked = 0`, it must change one row), the revocation by setting `revoked = 1` — so the
//! database orders them: a revocation committed first makes the issuance's update find no row
//! (nothing is written, the issuance is refused); an issuance committed first has its link
//! revoked by the revocation's update of `links`, which runs after it waited for that row.

use kagi_db::{Db, Schema, Stmt, StoreError};

/// The issuer's tables.
pub const SCHEMA: Schema = Schema {
    name: "jpki-issuer",
    version: 1,
    ddl: &[
        "CREATE TABLE IF NOT EXISTS sign_certs (
        serial TEXT PRIMARY KEY, revoked BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS links (
        serial TEXT PRIMARY KEY, sign_serial TEXT NOT NULL, iccid TEXT NOT NULL,
        provider TEXT NOT NULL, sp_tsm TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
        not_after BIGINT NOT NULL, issued_at BIGINT NOT NULL, revoked_at BIGINT)",
        "CREATE INDEX IF NOT EXISTS links_sign ON links (sign_serial, state)",
        "CREATE TABLE IF NOT EXISTS applications (
        sign_serial TEXT NOT NULL, nonce TEXT NOT NULL, at BIGINT NOT NULL,
        PRIMARY KEY (sign_serial, nonce))",
        "CREATE TABLE IF NOT EXISTS replay (
        sender TEXT NOT NULL, msg_id TEXT NOT NULL, keep_until BIGINT NOT NULL,
        PRIMARY KEY (sender, msg_id))",
        "CREATE TABLE IF NOT EXISTS audit (
        id SERIAL_PK, at BIGINT NOT NULL, actor TEXT NOT NULL, event TEXT NOT NULL,
        detail TEXT NOT NULL)",
    ],
};

/// A phone certificate and its link, as the issuer records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The phone certificate's serial (upper-case hex).
    pub serial: String,
    /// The linked signature certificate's serial (upper-case hex).
    pub sign_serial: String,
    /// The SIM.
    pub iccid: String,
    /// The provider.
    pub provider: String,
    /// The SP-TSM that relayed it.
    pub sp_tsm: String,
    /// `active` or `revoked`.
    pub state: String,
    /// Why revoked (`sign-revoked`).
    pub reason: Option<String>,
    /// notAfter (Unix seconds).
    pub not_after: i64,
    /// When revoked (Unix milliseconds).
    pub revoked_at: Option<i64>,
}

/// Where a refused issuance batch failed (the statement index [`issue_batch`] reports in
/// `StoreError::Conflict`).
pub const CONFLICT_REVOKED: usize = 1;
/// The application's nonce was used before.
pub const CONFLICT_REPLAYED: usize = 2;

/// The issuance's writes, all or none: the signature serial's row (still not revoked: the
/// conditional update must change it — [`CONFLICT_REVOKED`] otherwise), the application's
/// nonce (unused — [`CONFLICT_REPLAYED`]), the link, the audit event.
pub fn issue_batch(link: &Link, nonce_hex: &str, at: i64) -> Vec<Stmt> {
    vec![
        Stmt::any(
            "INSERT INTO sign_certs (serial, revoked, updated_at) VALUES ($1, 0, $2) ON CONFLICT (serial) DO NOTHING",
            vec![link.sign_serial.clone().into(), at.into()],
        ),
        Stmt::one(
            "UPDATE sign_certs SET updated_at = $2 WHERE serial = $1 AND revoked = 0",
            vec![link.sign_serial.clone().into(), at.into()],
        ),
        Stmt::one(
            "INSERT INTO applications (sign_serial, nonce, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            vec![link.sign_serial.clone().into(), nonce_hex.into(), at.into()],
        ),
        Stmt::one(
            "INSERT INTO links (serial, sign_serial, iccid, provider, sp_tsm, state, not_after, issued_at)
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $7)",
            vec![
                link.serial.clone().into(),
                link.sign_serial.clone().into(),
                link.iccid.clone().into(),
                link.provider.clone().into(),
                link.sp_tsm.clone().into(),
                link.not_after.into(),
                at.into(),
            ],
        ),
        audit(
            at,
            &link.sp_tsm,
            "issued",
            &format!(
                "phone {} sign {} sim {} provider {}",
                link.serial, link.sign_serial, link.iccid, link.provider
            ),
        ),
    ]
}

/// The revocation of signature serial `sign_serial` and of every active phone certificate
/// linked to it, in one transaction.
pub fn revoke_batch(sign_serial: &str, actor: &str, at: i64) -> Vec<Stmt> {
    vec![
        Stmt::any(
            "INSERT INTO sign_certs (serial, revoked, updated_at) VALUES ($1, 1, $2)
             ON CONFLICT (serial) DO UPDATE SET revoked = 1, updated_at = excluded.updated_at",
            vec![sign_serial.into(), at.into()],
        ),
        Stmt::any(
            "UPDATE links SET state = 'revoked', reason = 'sign-revoked', revoked_at = $2
             WHERE sign_serial = $1 AND state = 'active'",
            vec![sign_serial.into(), at.into()],
        ),
        audit(at, actor, "sign-revoked", sign_serial),
    ]
}

/// An audit event.
pub fn audit(at: i64, actor: &str, event: &str, detail: &str) -> Stmt {
    Stmt::any(
        "INSERT INTO audit (at, actor, event, detail) VALUES ($1, $2, $3, $4)",
        vec![at.into(), actor.into(), event.into(), detail.into()],
    )
}

/// The signature serials already recorded as revoked.
pub async fn revoked_sign_serials(db: &Db) -> Result<Vec<String>, StoreError> {
    Ok(db
        .query("SELECT serial FROM sign_certs WHERE revoked = 1", vec![])
        .await?
        .into_iter()
        .map(|r| r[0].text())
        .collect())
}

/// The phone certificate `serial`'s link, if this issuer made it.
pub async fn link(db: &Db, serial: &str) -> Result<Option<Link>, StoreError> {
    let rows = db
        .query(
            "SELECT serial, sign_serial, iccid, provider, sp_tsm, state, reason, not_after, revoked_at FROM links WHERE serial = $1",
            vec![serial.into()],
        )
        .await?;
    Ok(rows.into_iter().next().map(|r| Link {
        serial: r[0].text(),
        sign_serial: r[1].text(),
        iccid: r[2].text(),
        provider: r[3].text(),
        sp_tsm: r[4].text(),
        state: r[5].text(),
        reason: r[6].opt_text(),
        not_after: r[7].int(),
        revoked_at: match r[8] {
            kagi_db::Val::Int(i) => Some(i),
            _ => None,
        },
    }))
}

/// Every link of signature serial `sign_serial`.
pub async fn links_of(db: &Db, sign_serial: &str) -> Result<Vec<Link>, StoreError> {
    let rows = db
        .query(
            "SELECT serial FROM links WHERE sign_serial = $1 ORDER BY serial",
            vec![sign_serial.into()],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        if let Some(l) = link(db, &r[0].text()).await? {
            out.push(l);
        }
    }
    Ok(out)
}

/// The audit trail, oldest first: (at, actor, event, detail).
pub async fn audit_trail(db: &Db) -> Result<Vec<(i64, String, String, String)>, StoreError> {
    Ok(db
        .query(
            "SELECT at, actor, event, detail FROM audit ORDER BY id",
            vec![],
        )
        .await?
        .into_iter()
        .map(|r| (r[0].int(), r[1].text(), r[2].text(), r[3].text()))
        .collect())
}

/// Records a signed request's message id; `false` when it was seen before (a replay).
pub async fn first_seen(
    db: &Db,
    sender: &str,
    msg_id: &str,
    keep_until: i64,
) -> Result<bool, StoreError> {
    match db
        .commit(vec![Stmt::one(
            "INSERT INTO replay (sender, msg_id, keep_until) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            vec![sender.into(), msg_id.into(), keep_until.into()],
        )])
        .await
    {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Forgets replay entries past their time.
pub async fn purge_replay(db: &Db, now: i64) -> Result<(), StoreError> {
    db.commit(vec![Stmt::any(
        "DELETE FROM replay WHERE keep_until < $1",
        vec![now.into()],
    )])
    .await
}
