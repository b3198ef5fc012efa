//! The set-based merge: a run's delta is bulk-loaded into a session `#delta` table (keys and
//! hashes only), then applied to staging by three joined statements — update, insert, delete —
//! in one transaction with the run's state change. No `MERGE` statement (its concurrency bugs,
//! and servers that speak TDS without it) and no global `##temp` table.

use super::schema::MAX_KEY_BYTES;
use super::session::{int, p, Session};
use super::MssqlStore;
use crate::domain::encoding::RowHash;
use crate::errors::StoreError;
use crate::ports::{Batches, StagedChange};
use tiberius::{ColumnData, TokenRow};

const CREATE_DELTA: &str = "IF OBJECT_ID(N'tempdb..#delta') IS NOT NULL DROP TABLE #delta; \
    CREATE TABLE #delta (k VARBINARY(896) NOT NULL PRIMARY KEY, hash BINARY(16) NULL)";

/// Staging's statements against `#delta`; `@P1` is the source id.
const APPLY: [&str; 3] = [
    "UPDATE st SET st.hash = d.hash FROM {s}.staging st JOIN #delta d ON st.k = d.k \
     WHERE st.sid = @P1 AND d.hash IS NOT NULL",
    "INSERT INTO {s}.staging (sid, k, hash) SELECT @P1, d.k, d.hash FROM #delta d \
     WHERE d.hash IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {s}.staging st WHERE st.sid = @P1 AND st.k = d.k)",
    "DELETE st FROM {s}.staging st JOIN #delta d ON st.k = d.k WHERE st.sid = @P1 AND d.hash IS NULL",
];

/// A `#delta` row, refusing a key the clustered staging index cannot hold.
pub fn delta_row(key: Vec<u8>, hash: Option<RowHash>) -> Result<TokenRow<'static>, StoreError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(StoreError::Db {
            context: "merge",
            detail: format!(
                "a key of {} bytes (encoded) is longer than the {MAX_KEY_BYTES} bytes a SQL Server store can stage; \
                 keep this data source's key columns shorter or use a PostgreSQL or SQLite store",
                key.len()
            ),
        });
    }
    let mut row = TokenRow::with_capacity(2);
    row.push(ColumnData::Binary(Some(key.into())));
    row.push(ColumnData::Binary(hash.map(|h| h.to_vec().into())));
    Ok(row)
}

impl MssqlStore {
    /// The compact id of a (tenant, data source) pair, created on first use.
    pub(super) async fn sid(&self, x: &mut Session, tenant: &str, source: &str) -> Result<i32, StoreError> {
        let name = (tenant.to_owned(), source.to_owned());
        if let Some(id) = self.sids.lock().unwrap_or_else(|e| e.into_inner()).get(&name) {
            return Ok(*id);
        }
        let sql = self.q("BEGIN TRANSACTION; \
             IF NOT EXISTS (SELECT 1 FROM {s}.sources WITH (UPDLOCK, HOLDLOCK) WHERE tenant = @P1 AND source = @P2) \
               INSERT INTO {s}.sources (tenant, source) VALUES (@P1, @P2); \
             COMMIT TRANSACTION; \
             SELECT sid FROM {s}.sources WHERE tenant = @P1 AND source = @P2");
        let row = x.row(&sql, vec![p(name.0.clone()), p(name.1.clone())]).await?;
        let id = row
            .map(|r| int(&r, 0))
            .transpose()?
            .ok_or_else(|| StoreError::Corrupt {
                what: "source id",
                detail: format!("none recorded for `{tenant}`/`{source}`"),
            })? as i32;
        self.sids.lock().unwrap_or_else(|e| e.into_inner()).insert(name, id);
        Ok(id)
    }

    /// Creates `#delta` on the session and bulk-loads `changes` into it; returns the rows loaded.
    pub(super) async fn load_delta(
        &self,
        x: &mut Session,
        mut changes: Batches<StagedChange, StoreError>,
    ) -> Result<u64, StoreError> {
        x.batch(CREATE_DELTA).await?;
        let err = crate::mssql::errors::store_error(x.context());
        let mut load = x
            .conn()
            .bulk_insert_columns("#delta", &["k", "hash"])
            .await
            .map_err(&err)?;
        while let Some(batch) = changes.recv().await {
            for (key, hash) in batch? {
                load.send(delta_row(key, hash)?).await.map_err(&err)?;
            }
        }
        Ok(load.finalize().await.map_err(&err)?.total())
    }

    /// Applies `#delta` to the source's staging (inside the caller's transaction) and drops it;
    /// returns (keys upserted, keys deleted).
    pub(super) async fn apply_delta(&self, x: &mut Session, sid: i32) -> Result<(u64, u64), StoreError> {
        let mut n = [0u64; 3];
        for (i, sql) in APPLY.iter().enumerate() {
            n[i] = x.exec(&self.q(sql), vec![p(sid)]).await?;
        }
        Ok((n[0] + n[1], n[2]))
    }
}

/// Drops the session's `#delta` (the connection goes back to the pool without it).
pub async fn drop_delta(x: &mut Session) -> Result<(), StoreError> {
    x.batch("IF OBJECT_ID(N'tempdb..#delta') IS NOT NULL DROP TABLE #delta")
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_merge_is_plain_joined_statements_on_the_source_id() {
        for sql in APPLY.iter().chain([&CREATE_DELTA]) {
            assert!(!sql.to_uppercase().contains("MERGE "), "{sql}");
            assert!(!sql.contains("##"), "no global temp tables: {sql}");
        }
        for sql in APPLY {
            assert!(sql.contains("sid = @P1"), "every statement stays in its source: {sql}");
        }
    }

    #[test]
    fn keys_longer_than_a_clustered_index_holds_are_refused_by_name() {
        assert!(delta_row(vec![7; MAX_KEY_BYTES], Some([1; 16])).is_ok());
        assert!(delta_row(vec![7; 3], None).is_ok());
        let err = delta_row(vec![7; MAX_KEY_BYTES + 1], None).unwrap_err().to_string();
        assert!(err.contains("897 bytes") && err.contains("896"), "{err}");
    }
}
