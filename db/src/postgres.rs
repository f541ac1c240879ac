//! PostgreSQL through a connection pool (`deadpool-postgres`, no TLS: local or private
//! networks; put a TLS-terminating proxy in front otherwise). Several TSM instances share one
//! database; the compare-and-swap statements of [`crate::Db::commit`] keep them apart.

use crate::{BASE_DDL, Expect, Schema, Stmt, StoreError, Val};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

/// An open PostgreSQL database.
#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
}

/// The error with its causes (tokio-postgres says only "db error" at the top; the server's
/// message is the source).
fn db(e: impl std::error::Error) -> StoreError {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    StoreError::Db(text)
}

impl ToSql for Val {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Val::Int(i) => i.to_sql(ty, out),
            Val::Text(t) => t.to_sql(ty, out),
            Val::Blob(b) => b.to_sql(ty, out),
            Val::Null => Ok(IsNull::Yes),
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// PostgreSQL's column words, as PostgreSQL has them.
fn pg_types(s: &str) -> String {
    s.replace("BYTES", "BYTEA")
        .replace("SERIAL_PK", "BIGSERIAL PRIMARY KEY")
}

async fn upgrade_locked(
    c: &mut deadpool_postgres::Object,
    schema: &Schema,
) -> Result<(), StoreError> {
    c.batch_execute(&BASE_DDL.join(";\n")).await.map_err(db)?;
    let tx = c.transaction().await.map_err(db)?;
    let found: Option<i64> = tx
        .query_opt(
            "SELECT version FROM schema_versions WHERE component = $1",
            &[&schema.name],
        )
        .await
        .map_err(db)?
        .map(|r| r.get(0));
    let statements = schema.upgrade(found, pg_types)?;
    tx.batch_execute(&statements.join(";\n"))
        .await
        .map_err(db)?;
    tx.execute(
        "INSERT INTO schema_versions (component, version) VALUES ($1, $2)
         ON CONFLICT (component) DO UPDATE SET version = excluded.version",
        &[&schema.name, &schema.version],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

impl Postgres {
    /// Connects (the pool holds up to 16 connections).
    pub async fn open(url: &str) -> Result<Postgres, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(db)?;
        let mgr = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr).max_size(16).build().map_err(db)?;
        // Fail now, with the reason, if the server cannot be reached.
        drop(pool.get().await.map_err(db)?);
        Ok(Postgres { pool })
    }

    /// Brings the database to `schema` under an advisory lock (several instances may start
    /// together: one migrates, the others wait and find it done) and in one transaction: read
    /// the version, run the steps from it (or create the tables), record the version, create
    /// what is missing.
    pub(super) async fn upgrade(&self, schema: &Schema) -> Result<(), StoreError> {
        let mut c = self.pool.get().await.map_err(db)?;
        c.batch_execute("SELECT pg_advisory_lock(4242)")
            .await
            .map_err(db)?;
        let r = upgrade_locked(&mut c, schema).await;
        c.batch_execute("SELECT pg_advisory_unlock(4242)")
            .await
            .map_err(db)?;
        r
    }

    pub(super) async fn query(
        &self,
        sql: &'static str,
        params: Vec<Val>,
    ) -> Result<Vec<Vec<Val>>, StoreError> {
        let c = self.pool.get().await.map_err(db)?;
        let st = c.prepare_cached(sql).await.map_err(db)?;
        let p: Vec<&(dyn ToSql + Sync)> = params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let rows = c.query(&st, &p).await.map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let mut row = Vec::with_capacity(r.len());
            for (k, col) in r.columns().iter().enumerate() {
                let v = match *col.type_() {
                    Type::INT8 | Type::INT4 => r
                        .try_get::<_, Option<i64>>(k)
                        .map_err(db)?
                        .map_or(Val::Null, Val::Int),
                    Type::BYTEA => r
                        .try_get::<_, Option<Vec<u8>>>(k)
                        .map_err(db)?
                        .map_or(Val::Null, Val::Blob),
                    _ => r
                        .try_get::<_, Option<String>>(k)
                        .map_err(db)?
                        .map_or(Val::Null, Val::Text),
                };
                row.push(v);
            }
            out.push(row);
        }
        Ok(out)
    }

    pub(super) async fn commit(&self, batch: Vec<Stmt>) -> Result<Vec<u64>, StoreError> {
        let mut c = self.pool.get().await.map_err(db)?;
        let tx = c.transaction().await.map_err(db)?;
        let mut prepared = Vec::with_capacity(batch.len());
        for s in &batch {
            prepared.push(tx.prepare_cached(s.sql).await.map_err(db)?);
        }
        // The statements go out pipelined (one round trip for the batch, not one each);
        // PostgreSQL runs them in order.
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = batch
            .iter()
            .map(|s| s.params.iter().map(|v| v as &(dyn ToSql + Sync)).collect())
            .collect();
        // The transaction writes to the WAL even when its statements change nothing (an
        // idempotent retry whose row is already there): a transactional logical message (no
        // table, any user may emit it) gives it a transaction id and a WAL record, so its
        // COMMIT waits for the synchronous standby like any write. PostgreSQL acknowledges a
        // commit that wrote no WAL at once; a retry that found its row on a primary the
        // standby never heard from would be acknowledged and the row lost at the failover.
        let xid = tx
            .prepare_cached("SELECT pg_logical_emit_message(true, 'kagi', '')")
            .await
            .map_err(db)?;
        let runs = prepared
            .iter()
            .zip(&params)
            .map(|(st, p)| tx.execute(st, p.as_slice()));
        let (_, counts) = futures_util::future::try_join(
            tx.execute(&xid, &[]),
            futures_util::future::try_join_all(runs),
        )
        .await
        .map_err(db)?;
        for (i, (s, n)) in batch.iter().zip(&counts).enumerate() {
            if s.expect == Expect::One && *n != 1 {
                // Dropping the transaction rolls it back.
                return Err(StoreError::Conflict(i));
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(counts)
    }
}
