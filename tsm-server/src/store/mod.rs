//! The TSM's state: its tables ([`SCHEMA`]) in [`kagi_db`] (SQLite or PostgreSQL), and the
//! typed records the server reads and writes ([`ops`]; cards, credentials and the audit
//! trail in a module of their own, re-exported there).

mod cards;
pub mod keygen;
pub mod mail;
pub mod ops;
pub use ops::legacy;
pub mod sealed;
pub mod withdraw;

use kagi_db::Schema;
pub use kagi_db::{Backend, Db, Expect, Stmt, StoreError, Val};

/// The TSM's tables.
pub const SCHEMA: Schema = Schema {
    name: "tsm",
    version: 1,
    ddl: &[
        "CREATE TABLE IF NOT EXISTS ops (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, party TEXT NOT NULL, state TEXT NOT NULL,
        iccid TEXT NOT NULL, idem_key TEXT, request_hash BYTES, parent TEXT,
        created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL, updated_at BIGINT NOT NULL,
        version BIGINT NOT NULL, data BYTES NOT NULL)",
        "CREATE UNIQUE INDEX IF NOT EXISTS ops_idem ON ops (party, idem_key)",
        "CREATE INDEX IF NOT EXISTS ops_card ON ops (iccid, state)",
        // One live operation per card and party: two requests racing past the service's
        // check cannot both commit (a partial unique index; SQLite and PostgreSQL).
        "CREATE UNIQUE INDEX IF NOT EXISTS ops_live ON ops (iccid, party)
        WHERE state IN ('awaiting-device', 'device-bound', 'running', 'interrupted')",
        "CREATE TABLE IF NOT EXISTS replay (
        sender TEXT NOT NULL, msg_id TEXT NOT NULL, keep_until BIGINT NOT NULL,
        PRIMARY KEY (sender, msg_id))",
        "CREATE TABLE IF NOT EXISTS tickets (hash BYTES PRIMARY KEY, op_id TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY, op_id TEXT NOT NULL, seq BIGINT NOT NULL,
        reply BYTES NOT NULL, updated_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS cards (
        iccid TEXT PRIMARY KEY, cin TEXT NOT NULL, sd_aid BYTES NOT NULL,
        free_memory BIGINT NOT NULL, state TEXT NOT NULL, replaced_by TEXT,
        mno TEXT NOT NULL, updated_at BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS credentials (
        op_id TEXT PRIMARY KEY, iccid TEXT NOT NULL, party TEXT NOT NULL, state TEXT NOT NULL,
        reason TEXT, serial TEXT NOT NULL, not_after BIGINT NOT NULL,
        my_number_serial TEXT NOT NULL, instance BYTES NOT NULL,
        deletion_pending BIGINT NOT NULL, updated_at BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS credentials_card ON credentials (iccid)",
        "CREATE TABLE IF NOT EXISTS audit (
        id SERIAL_PK, op_id TEXT NOT NULL, at BIGINT NOT NULL, actor TEXT NOT NULL,
        event TEXT NOT NULL, detail TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS audit_op ON audit (op_id, id)",
        // Refused signed messages, counted per sender, code and minute (`crate::refusals`).
        crate::refusals::DDL_TABLE,
        crate::refusals::DDL_INDEX,
        // The sealed parts of a running operation's request (`sealed`): deleted when it ends.
        "CREATE TABLE IF NOT EXISTS sealed (op_id TEXT PRIMARY KEY, data BYTES NOT NULL)",
        // An SP-TSM's record of the MNO-TSM operation preparing an operation's SIM, with the
        // initial keys as sealed to it (`sealed::put_mno_prepared`): until the sweep after
        // the operation ends.
        "CREATE TABLE IF NOT EXISTS mno_prepared (
        op_id TEXT PRIMARY KEY, mno_op TEXT NOT NULL, sealed_keys BYTES NOT NULL,
        updated_at BIGINT NOT NULL)",
        // The SIMs' key agreement certificates, as their operators registered them.
        "CREATE TABLE IF NOT EXISTS card_certs (
        iccid TEXT PRIMARY KEY, cert BYTES NOT NULL, updated_at BIGINT NOT NULL)",
        // An SP-TSM's access-code mails (`mail`, seed 004 ⑪): queued with the operation,
        // the address blanked once sent or once the operation is over.
        "CREATE TABLE IF NOT EXISTS code_mail (
        op_id TEXT PRIMARY KEY, recipient TEXT NOT NULL, tries BIGINT NOT NULL,
        next_at BIGINT NOT NULL, sent_at BIGINT, message_id TEXT, last_error TEXT)",
        // The phone certificates the JPKI issuer made for this SP-TSM, until delivered or
        // withdrawn (`withdraw`).
        "CREATE TABLE IF NOT EXISTS withdrawals (
        serial TEXT PRIMARY KEY, op_id TEXT NOT NULL, reason TEXT NOT NULL, state TEXT NOT NULL,
        tries BIGINT NOT NULL, next_at BIGINT NOT NULL, last_error TEXT,
        updated_at BIGINT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS withdrawals_state ON withdrawals (state, next_at)",
        // An MNO-TSM's notices of lost and changed SIMs to the SP-TSMs on them
        // (`service::sim_notice`), until each acknowledges.
        "CREATE TABLE IF NOT EXISTS sim_notices (
        sp_tsm TEXT NOT NULL, iccid TEXT NOT NULL, kind TEXT NOT NULL, new_iccid TEXT NOT NULL,
        state TEXT NOT NULL, tries BIGINT NOT NULL, next_at BIGINT NOT NULL, last_error TEXT,
        updated_at BIGINT NOT NULL, PRIMARY KEY (sp_tsm, iccid, kind))",
        // An SP-TSM's deletions of a provider's domain on a transferred-from SIM, for the
        // MNO-TSM serving it (`service::domain_delete`), until each acknowledges.
        "CREATE TABLE IF NOT EXISTS domain_deletions (
        mno_tsm TEXT NOT NULL, iccid TEXT NOT NULL, provider TEXT NOT NULL, sd_aid BYTES NOT NULL,
        state TEXT NOT NULL, tries BIGINT NOT NULL, next_at BIGINT NOT NULL, last_error TEXT,
        updated_at BIGINT NOT NULL, PRIMARY KEY (mno_tsm, iccid, provider))",
        // The on-card mode's pending challenge of an operation (`keygen`).
        "CREATE TABLE IF NOT EXISTS keygen_challenges (
        op_id TEXT PRIMARY KEY, challenge BYTES NOT NULL, expires_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL)",
    ],
    migrations: &[],
};

/// The TSM's database.
#[derive(Clone)]
pub struct Store(Db);

impl Store {
    /// Opens (creating and migrating) the TSM's database.
    pub async fn open(backend: &Backend) -> Result<Store, StoreError> {
        Ok(Store(Db::open(backend, &SCHEMA).await?))
    }
}

impl std::ops::Deref for Store {
    type Target = Db;
    fn deref(&self) -> &Db {
        &self.0
    }
}
