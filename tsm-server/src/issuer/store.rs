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
        // Issue requests by idempotency key ([`claim_issue`]): `pending` while one request
        // works on it, then `done` with the answer every request with that key gets.
        "CREATE TABLE IF NOT EXISTS issues (
        sp_tsm TEXT NOT NULL, request_id TEXT NOT NULL, request_hash BYTES NOT NULL,
        state TEXT NOT NULL, answer BYTES, at BIGINT NOT NULL,
        PRIMARY KEY (sp_tsm, request_id))",
        // The on-card mode's challenges: a nonce is `open` until one Certify spends it
        // (`used`), by one conditional update; no secret is kept (the challenge key is
        // derived again from the issuer's challenge secret and the nonce).
        "CREATE TABLE IF NOT EXISTS challenges (
        nonce TEXT PRIMARY KEY, sp_tsm TEXT NOT NULL, iccid TEXT NOT NULL,
        instance TEXT NOT NULL, request_id TEXT NOT NULL, state TEXT NOT NULL,
        expires_at BIGINT NOT NULL)",
        // The phone certificate each SIM holds for each provider: an issuance writes its row
        // first, so two issuances for one SIM are ordered and the later one supersedes the
        // earlier ([`supersede_batch`]).
        "CREATE TABLE IF NOT EXISTS sims (
        iccid TEXT NOT NULL, provider TEXT NOT NULL, serial TEXT NOT NULL, at BIGINT NOT NULL,
        PRIMARY KEY (iccid, provider))",
        "CREATE INDEX IF NOT EXISTS audit_event ON audit (event, detail)",
        // Refused signed messages, counted per sender, code and minute (`crate::refusals`).
        crate::refusals::DDL_TABLE,
        crate::refusals::DDL_INDEX,
        // The refused application checks per SP-TSM and window (`budget`).
        super::budget::DDL,
    ],
    migrations: &[],
};

/// How long a `pending` claim of an issue request holds before another request with the same
/// key may take it over (its worker died).
pub const ISSUE_LEASE_MS: i64 = 60_000;

/// How long a finished issue request's answer is kept for requests with the same key (the
/// sealed credential in it is needed no longer than the SP-TSM's operation). A later request
/// for the same SIM is a new issuance that supersedes the earlier certificate
/// ([`supersede_batch`]), so none is left valid beside the one the SIM holds.
pub const ISSUE_ANSWER_KEEP_MS: i64 = 3_600_000;

/// An issue request as recorded under its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRecord {
    /// SHA-256 of the request.
    pub request_hash: Vec<u8>,
    /// `pending` or `done`.
    pub state: String,
    /// The answer (canonical encoding), once `done`.
    pub answer: Option<Vec<u8>>,
}

/// Claims the issue request `request_id` of `sp_tsm` for this worker — one atomic
/// conditional insert: a new key, or a `pending` claim of the same request whose lease ran
/// out. `false`: another request holds or finished it (read it with [`issue_record`]).
pub async fn claim_issue(
    db: &Db,
    sp_tsm: &str,
    request_id: &str,
    request_hash: &[u8],
    now: i64,
) -> Result<bool, StoreError> {
    match db
        .commit(vec![Stmt::one(
            "INSERT INTO issues (sp_tsm, request_id, request_hash, state, answer, at)
             VALUES ($1, $2, $3, 'pending', NULL, $4)
             ON CONFLICT (sp_tsm, request_id) DO UPDATE SET at = excluded.at
             WHERE issues.state = 'pending' AND issues.at < $5
             AND issues.request_hash = excluded.request_hash",
            vec![
                sp_tsm.into(),
                request_id.into(),
                request_hash.into(),
                now.into(),
                (now - ISSUE_LEASE_MS).into(),
            ],
        )])
        .await
    {
        Ok(()) => Ok(true),
        Err(StoreError::Conflict(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Statement finishing a claimed issue request with its answer (in the transaction that
/// commits what the answer says, for an issuance).
pub fn finish_issue(sp_tsm: &str, request_id: &str, answer: Vec<u8>, now: i64) -> Stmt {
    Stmt::one(
        "UPDATE issues SET state = 'done', answer = $3, at = $4
         WHERE sp_tsm = $1 AND request_id = $2 AND state = 'pending'",
        vec![sp_tsm.into(), request_id.into(), answer.into(), now.into()],
    )
}

/// Statement giving up a claim without an answer to keep (a refusal the next request with
/// the key decides again).
pub fn release_issue(sp_tsm: &str, request_id: &str) -> Stmt {
    Stmt::any(
        "DELETE FROM issues WHERE sp_tsm = $1 AND request_id = $2 AND state = 'pending'",
        vec![sp_tsm.into(), request_id.into()],
    )
}

/// The issue request `request_id` of `sp_tsm`, if recorded.
pub async fn issue_record(
    db: &Db,
    sp_tsm: &str,
    request_id: &str,
) -> Result<Option<IssueRecord>, StoreError> {
    let rows = db
        .query(
            "SELECT request_hash, state, answer FROM issues WHERE sp_tsm = $1 AND request_id = $2",
            vec![sp_tsm.into(), request_id.into()],
        )
        .await?;
    Ok(rows.into_iter().next().map(|r| IssueRecord {
        request_hash: r[0].blob(),
        state: r[1].text(),
        answer: match &r[2] {
            kagi_db::Val::Blob(b) => Some(b.clone()),
            _ => None,
        },
    }))
}

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
    /// `active`, `held` (suspended) or `revoked`.
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

/// The statements that make `link` the one phone certificate of its SIM and provider, run
/// last in the transaction of an issuance for a key made on the SIM (the applet's new key
/// replaced its earlier one): the SIM's row is written first (a second issuance for the same
/// SIM waits for this one to commit, then sees its link), then every other active or held
/// certificate of that SIM and provider is revoked (`superseded`, audited one by one) — one
/// whose key the SIM no longer holds: made again after a lost answer the issuer no longer
/// remembers, or replaced by a new download.
pub fn supersede_batch(link: &Link, at: i64) -> Vec<Stmt> {
    vec![
        Stmt::any(
            "INSERT INTO sims (iccid, provider, serial, at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (iccid, provider) DO UPDATE SET serial = excluded.serial, at = excluded.at",
            vec![
                link.iccid.clone().into(),
                link.provider.clone().into(),
                link.serial.clone().into(),
                at.into(),
            ],
        ),
        Stmt::any(
            "INSERT INTO audit (at, actor, event, detail)
             SELECT $1, CAST($2 AS TEXT), 'revoked',
             'phone ' || serial || ' sign ' || sign_serial || ': superseded by ' || CAST($5 AS TEXT)
             || ' on the same SIM'
             FROM links WHERE iccid = $3 AND provider = $4 AND serial <> $5
             AND state IN ('active', 'held')",
            vec![
                at.into(),
                link.sp_tsm.clone().into(),
                link.iccid.clone().into(),
                link.provider.clone().into(),
                link.serial.clone().into(),
            ],
        ),
        Stmt::any(
            "UPDATE links SET state = 'revoked', reason = 'superseded', revoked_at = $1
             WHERE iccid = $2 AND provider = $3 AND serial <> $4 AND state IN ('active', 'held')",
            vec![
                at.into(),
                link.iccid.clone().into(),
                link.provider.clone().into(),
                link.serial.clone().into(),
            ],
        ),
    ]
}

/// How long after a revoked or held phone certificate expires it stays on the CRL: one CRL
/// validity period, so that it appears on at least one CRL issued after its notAfter (RFC
/// 5280 §5, "Revoked Certificates"), then it is dropped.
pub const CRL_KEEP_EXPIRED_S: i64 = 24 * 3600;

/// Records (once each, audited `crl-dropped`) the revoked or held phone certificates that
/// expired more than [`CRL_KEEP_EXPIRED_S`] before `now_s`, so the CRL that leaves them off
/// carries a higher number than the last one listing them.
pub fn note_crl_drops(now_s: i64, now_ms: i64) -> Stmt {
    Stmt::any(
        "INSERT INTO audit (at, actor, event, detail)
         SELECT $1, 'issuer', 'crl-dropped', l.serial FROM links l
         WHERE l.state IN ('revoked', 'held') AND l.not_after < $2
         AND NOT EXISTS (SELECT 1 FROM audit a WHERE a.event = 'crl-dropped' AND a.detail = l.serial)",
        vec![now_ms.into(), (now_s - CRL_KEEP_EXPIRED_S).into()],
    )
}

/// The revocation of signature serial `sign_serial` and of every active phone certificate
/// linked to it, in one transaction; audited only by the revocation that marked the serial
/// revoked (two syncs racing over the same CRL entry leave one `sign-revoked` entry).
pub fn revoke_batch(sign_serial: &str, actor: &str, at: i64) -> Vec<Stmt> {
    vec![
        Stmt::any(
            "INSERT INTO sign_certs (serial, revoked, updated_at) VALUES ($1, 1, $2)
             ON CONFLICT (serial) DO UPDATE SET revoked = 1, updated_at = excluded.updated_at
             WHERE sign_certs.revoked = 0",
            vec![sign_serial.into(), at.into()],
        ),
        Stmt::any(
            "UPDATE links SET state = 'revoked', reason = 'sign-revoked', revoked_at = $2
             WHERE sign_serial = $1 AND state IN ('active', 'held')",
            vec![sign_serial.into(), at.into()],
        ),
        Stmt::any(
            "INSERT INTO audit (at, actor, event, detail)
             SELECT $1, CAST($2 AS TEXT), 'sign-revoked', $3
             WHERE EXISTS (SELECT 1 FROM sign_certs WHERE serial = $3 AND revoked = 1 AND updated_at = $1)",
            vec![at.into(), actor.into(), sign_serial.into()],
        ),
    ]
}

/// The compensation for phone certificate `serial` that SP-TSM `sp_tsm` could not deliver —
/// or its revocation at that SP-TSM's request (`reason`: `withdrawn`, or `sim-lost`,
/// `sim-changed`, `holder-request`): revoked for `reason` if it is that SP-TSM's and still
/// active (or held), with an audit entry (`withdrawn`, else `revoked`; only when this revoked
/// it). `detail` is the audit entry's text (name the signature serial: `phone X sign Y: why`).
pub fn withdraw_batch(
    serial: &str,
    sp_tsm: &str,
    reason: &str,
    detail: &str,
    at: i64,
) -> Vec<Stmt> {
    let event = if reason == "withdrawn" {
        "withdrawn"
    } else {
        "revoked"
    };
    vec![
        Stmt::any(
            "UPDATE links SET state = 'revoked', reason = $4, revoked_at = $3
             WHERE serial = $1 AND sp_tsm = $2 AND state IN ('active', 'held')",
            vec![serial.into(), sp_tsm.into(), at.into(), reason.into()],
        ),
        Stmt::any(
            "INSERT INTO audit (at, actor, event, detail)
             SELECT $1, $2, CAST($5 AS TEXT), CAST($3 AS TEXT)
             WHERE EXISTS (SELECT 1 FROM links WHERE serial = $4 AND sp_tsm = $2
             AND state = 'revoked' AND reason = $6 AND revoked_at = $1)",
            vec![
                at.into(),
                sp_tsm.into(),
                detail.into(),
                serial.into(),
                event.into(),
                reason.into(),
            ],
        ),
    ]
}

/// An audit event.
pub fn audit(at: i64, actor: &str, event: &str, detail: &str) -> Stmt {
    Stmt::any(
        "INSERT INTO audit (at, actor, event, detail) VALUES ($1, $2, $3, $4)",
        vec![at.into(), actor.into(), event.into(), detail.into()],
    )
}

/// What an issue's commit would find for signature serial `sign_serial` and the application
/// nonce `nonce_hex` ([`issue_batch`]): (the serial recorded as revoked, the nonce used).
/// Read in one statement; a check only — the issue's transaction decides again.
pub async fn application_standing(
    db: &Db,
    sign_serial: &str,
    nonce_hex: &str,
) -> Result<(bool, bool), StoreError> {
    let rows = db
        .query(
            "SELECT CAST((SELECT COUNT(*) FROM sign_certs WHERE serial = $1 AND revoked = 1) AS BIGINT),
             CAST((SELECT COUNT(*) FROM applications WHERE sign_serial = $1 AND nonce = $2) AS BIGINT)",
            vec![sign_serial.into(), nonce_hex.into()],
        )
        .await?;
    Ok(rows
        .first()
        .map_or((false, false), |r| (r[0].int() > 0, r[1].int() > 0)))
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

/// One entry of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// When (Unix milliseconds).
    pub at: i64,
    /// Who (an SP-TSM's party, `sign-ca`, …).
    pub actor: String,
    /// What: `issued`, `sign-revoked`, `withdrawn`.
    pub event: String,
    /// Details (`phone SERIAL sign SERIAL …`; a `sign-revoked` entry: the signature serial).
    pub detail: String,
}

impl AuditEntry {
    /// The signature-certificate serial the entry is about: the word after `sign`, or the
    /// whole detail of a `sign-revoked` entry.
    pub fn sign_serial(&self) -> Option<&str> {
        if self.event == "sign-revoked" {
            return Some(self.detail.as_str());
        }
        self.word_after("sign")
    }

    /// The phone certificate's serial the entry is about (the word after `phone`).
    pub fn phone_serial(&self) -> Option<&str> {
        self.word_after("phone")
    }

    fn word_after(&self, key: &str) -> Option<&str> {
        let mut words = self.detail.split(' ');
        words.find(|w| *w == key)?;
        words.next().map(|w| w.trim_end_matches(':'))
    }
}

/// The audit trail from `since` (Unix milliseconds) on, oldest first.
pub async fn audit_since(db: &Db, since: i64) -> Result<Vec<AuditEntry>, StoreError> {
    Ok(db
        .query(
            "SELECT at, actor, event, detail FROM audit WHERE at >= $1 ORDER BY id",
            vec![since.into()],
        )
        .await?
        .into_iter()
        .map(|r| AuditEntry {
            at: r[0].int(),
            actor: r[1].text(),
            event: r[2].text(),
            detail: r[3].text(),
        })
        .collect())
}

/// Forgets replay entries past their time, and finished issue answers older than
/// [`ISSUE_ANSWER_KEEP_MS`].
pub async fn purge_replay(db: &Db, now: i64) -> Result<(), StoreError> {
    db.commit(vec![
        Stmt::any("DELETE FROM replay WHERE keep_until < $1", vec![now.into()]),
        Stmt::any(
            "DELETE FROM issues WHERE state = 'done' AND at < $1",
            vec![(now - ISSUE_ANSWER_KEEP_MS).into()],
        ),
        // Spent and expired challenges are kept a day (a replay is told as one), then go.
        Stmt::any(
            "DELETE FROM challenges WHERE expires_at < $1",
            vec![(now - 86_400_000).into()],
        ),
        super::budget::purge(now),
        crate::refusals::purge(now),
    ])
    .await
}

/// One row of [`crl_rows`]: the CRL number, and a revoked or held phone certificate
/// (serial, state, reason, when in Unix milliseconds) — none when nothing is revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlRow {
    /// The newest id of an audit entry that can change the CRL (the CRL number): every entry
    /// but issuances, PIN resets and application checks, which leave the list as it is.
    pub number: i64,
    /// A revoked or held phone certificate.
    pub entry: Option<(String, String, String, i64)>,
}

/// The revoked and held phone certificates with the newest audit id, in one statement (one
/// snapshot of the database): what the issuer's CRL lists ([`super::crl`]) at `now_s` (Unix
/// seconds) — without those expired longer than [`CRL_KEEP_EXPIRED_S`].
pub async fn crl_rows(db: &Db, now_s: i64) -> Result<Vec<CrlRow>, StoreError> {
    Ok(db
        .query(
            "SELECT CAST((SELECT COALESCE(MAX(id), 0) FROM audit WHERE event NOT IN
             ('issued', 'pin-reset', 'application-checked', 'application-refused')) AS BIGINT),
             l.serial, l.state,
             COALESCE(l.reason, ''), COALESCE(l.revoked_at, l.issued_at)
             FROM (SELECT 1 AS one) d LEFT JOIN links l ON l.state IN ('revoked', 'held')
             AND l.not_after >= $1
             ORDER BY l.serial",
            vec![(now_s - CRL_KEEP_EXPIRED_S).into()],
        )
        .await?
        .into_iter()
        .map(|r| CrlRow {
            number: r[0].int(),
            entry: r[1]
                .opt_text()
                .map(|serial| (serial, r[2].text(), r[3].text(), r[4].int())),
        })
        .collect())
}
