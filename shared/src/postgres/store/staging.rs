//! Staging and deltas in PostgreSQL: deltas arrive as packed segments (one row per few thousand
//! changes), merge applies them a segment per statement in one transaction.

use super::delta::{delta, legacy_rows, segments};
use super::packs::{unstage, Coverage};
use super::prepared;
use super::scratch::{Scratch, Table};
use super::staged::{analysed_partition, record_staged_schema};
use super::{now_ms, PgStore};
use crate::domain::{encoding::RowHash, encoding::INVALID_HASH, schema::TableSchema};
use crate::errors::StoreError;
use crate::ports::{
    change_records, staged_changes, Batches, Chunk, ChunkStats, KeyRange, NumberedStep, Records, Run, StagingStore,
    StepCommitted,
};
use crate::postgres::pool::pg_err;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::Transaction;

/// Whether nothing, packed or per key, is staged for a (tenant, data source), by name.
pub(super) fn nothing_staged(store: &PgStore) -> String {
    let sid = format!(
        "(SELECT sid FROM {}.sources WHERE tenant = $1 AND source = $2)",
        store.s
    );
    format!(
        "SELECT NOT EXISTS (SELECT 1 FROM {s}.staging_keys WHERE sid = {sid}) \
         AND NOT EXISTS (SELECT 1 FROM {s}.staging_packs WHERE sid = {sid})",
        s = store.s
    )
}

/// The compact id of a (tenant, data source), created on first use. Not cached: a merge asks
/// once, and a cache would outlive a store schema dropped and created again.
pub(super) async fn sid(
    c: &impl tokio_postgres::GenericClient,
    s: &str,
    tenant: &str,
    source: &str,
) -> Result<i32, StoreError> {
    let err = pg_err("source id");
    let select = format!("SELECT sid FROM {s}.sources WHERE tenant = $1 AND source = $2");
    if let Some(row) = c.query_opt(&select, &[&tenant, &source]).await.map_err(&err)? {
        return Ok(row.get(0));
    }
    // Only when missing: an `INSERT … ON CONFLICT` takes a sequence number even when it inserts
    // nothing, and every merge of every source would use one up. The second `SELECT` is its own
    // statement, so it sees a row another merge committed while this insert waited on it.
    c.execute(
        &format!("INSERT INTO {s}.sources (tenant, source) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
        &[&tenant, &source],
    )
    .await
    .map_err(&err)?;
    Ok(c.query_one(&select, &[&tenant, &source]).await.map_err(&err)?.get(0))
}

pub(super) type Params = Vec<Box<dyn ToSql + Send + Sync>>;

/// One chunk's lock between its attempts (decision 0023), by (run, chunk): a reset takes it
/// alone, an attempt's segment writes together. Two-key advisory locks are a space of their own,
/// apart from the single-key ones of the slots and migrations.
const CHUNK_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext($1), $2)";
/// The segment writes' side of [`CHUNK_LOCK`].
const CHUNK_SHARED_LOCK: &str = "SELECT pg_advisory_xact_lock_shared(hashtext($1), $2)";

/// `AND key >= $n AND key < $m` for the bounds that exist, appending their parameters.
pub(super) fn range_sql(range: &KeyRange, params: &mut Params) -> String {
    let mut sql = String::new();
    if let Some(lo) = &range.lo {
        params.push(Box::new(lo.clone()));
        sql.push_str(&format!(" AND key >= ${}", params.len()));
    }
    if let Some(hi) = &range.hi {
        params.push(Box::new(hi.clone()));
        sql.push_str(&format!(" AND key < ${}", params.len()));
    }
    sql
}

#[async_trait]
impl StagingStore for PgStore {
    async fn staged_schema(&self, tenant: &str, source: &str) -> Result<Option<TableSchema>, StoreError> {
        let sql = format!(
            "SELECT schema_json FROM {}.staged_schemas WHERE tenant = $1 AND source = $2",
            self.s
        );
        let row = prepared::query_opt(&self.client().await?, &sql, &[&tenant, &source])
            .await
            .map_err(pg_err("staged schema"))?;
        row.map(|r| {
            serde_json::from_str(r.get(0)).map_err(|e| StoreError::Corrupt {
                what: "staged schema",
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    fn staging(&self, tenant: &str, source: &str, range: &KeyRange) -> Batches<(Vec<u8>, RowHash), StoreError> {
        super::packs::read(self, tenant, source, range)
    }

    async fn reset_chunk(&self, run_id: &str, chunk: &Chunk) -> Result<Option<i64>, StoreError> {
        let (s, err) = (&self.s, pg_err("reset chunk"));
        let mut p: Params = vec![Box::new(run_id.to_owned())];
        let cond = range_sql(&chunk.range, &mut p);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(&err)?;
        // Held until the deletes commit: an earlier attempt's segment write waits for it, then
        // finds its attempt gone (`write_segment`).
        tx.execute(CHUNK_LOCK, &[&run_id, &(chunk.no as i32)])
            .await
            .map_err(&err)?;
        let Some(attempt) = tx
            .query_opt(
                &format!(
                    "UPDATE {s}.chunks c SET attempt = c.attempt + 1 FROM {s}.runs r \
                     WHERE c.run_id = $1 AND c.chunk_no = $2 AND NOT c.done AND r.id = c.run_id \
                     AND r.state = 'snapshotting' RETURNING c.attempt"
                ),
                &[&run_id, &(chunk.no as i32)],
            )
            .await
            .map_err(&err)?
            .map(|r| r.get::<_, i64>(0))
        else {
            return Ok(None);
        };
        // Rows from a build before segments (an attempt interrupted by the upgrade) go too.
        let sql = format!("DELETE FROM {s}.deltas WHERE run_id = $1{cond}");
        let n = tx
            .execute_raw(&sql, p.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)))
            .await
            .map_err(&err)?;
        let mut m = 0;
        let at = Scratch::of(&tx, s, run_id).await?;
        for sql in at.each(s, Table::Segments, |t| {
            format!("DELETE FROM {t} WHERE run_id = $1 AND chunk_no = $2")
        }) {
            m += tx.execute(&sql, &[&run_id, &(chunk.no as i32)]).await.map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        self.count(1 + n + m);
        Ok(Some(attempt))
    }

    async fn write_segment(
        &self,
        run_id: &str,
        chunk: u32,
        attempt: i64,
        seg: u32,
        rows: i64,
        body: crate::domain::buffers::Buffer,
    ) -> Result<(), StoreError> {
        let err = pg_err("write delta");
        let mut c = self.client().await?;
        let table = Scratch::of(&c, &self.s, run_id)
            .await?
            .insert_into(&self.s, Table::Segments);
        let tx = c.transaction().await.map_err(&err)?;
        // Shared by the attempt's writes, exclusive for a reset: the insert, a statement of its
        // own after the lock, sees the latest attempt number, and a reset after it deletes what
        // it wrote. An advisory lock writes no WAL, unlike a row lock on the (logged) chunk, so
        // an initial run's write into its unlogged segments still commits without a WAL flush
        // (a row lock cost ~1 s per 1,000,000-row initial snapshot: 500 flushes).
        prepared::execute(&tx, CHUNK_SHARED_LOCK, &[&run_id, &(chunk as i32)])
            .await
            .map_err(&err)?;
        let sql = format!(
            "INSERT INTO {table} (run_id, chunk_no, seg_no, rows, body) \
             SELECT $1, $2, $3::INTEGER, $4::INTEGER, $5::BYTEA FROM {}.chunks \
             WHERE run_id = $1 AND chunk_no = $2 AND attempt = $6",
            self.s
        );
        let n = prepared::execute(
            &tx,
            &sql,
            &[
                &run_id,
                &(chunk as i32),
                &(seg as i32),
                &(rows as i32),
                &body.as_slice(),
                &attempt,
            ],
        )
        .await
        .map_err(&err)?;
        tx.commit().await.map_err(&err)?;
        if n == 0 {
            return Err(StoreError::chunk_superseded(run_id, chunk, attempt));
        }
        self.count(1);
        Ok(())
    }

    async fn commit_step(&self, run: &Run, step: NumberedStep) -> Result<StepCommitted, StoreError> {
        super::numbered::commit_step(self, run, step).await
    }

    async fn finish_chunk(&self, run_id: &str, chunk: u32, attempt: i64, st: ChunkStats) -> Result<bool, StoreError> {
        let (s, err) = (&self.s, pg_err("finish chunk"));
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(&err)?;
        let (held, done): (bool, bool) = tx
            .query_opt(
                &format!("SELECT attempt = $3, done FROM {s}.chunks WHERE run_id = $1 AND chunk_no = $2 FOR UPDATE"),
                &[&run_id, &(chunk as i32), &attempt],
            )
            .await
            .map_err(&err)?
            .map(|r| (r.get(0), r.get(1)))
            .unwrap_or((false, false));
        if !held {
            return Err(StoreError::chunk_superseded(run_id, chunk, attempt));
        }
        let first = !done
            && tx
                .execute(
                    &format!("UPDATE {s}.chunks SET done = TRUE WHERE run_id = $1 AND chunk_no = $2"),
                    &[&run_id, &(chunk as i32)],
                )
                .await
                .map_err(&err)?
                == 1;
        if first {
            tx.execute(
                &format!(
                    "UPDATE {s}.runs SET chunks_done = chunks_done + 1, rows_read = rows_read + $2, inserts = inserts + $3, \
                                          updates = updates + $4, deletes = deletes + $5, updated_at = $6, bytes_read = bytes_read + $7 WHERE id = $1"
                ),
                &[&run_id, &st.rows_read, &st.inserts, &st.updates, &st.deletes, &now_ms(), &st.bytes_read],
            )
            .await
            .map_err(&err)?;
        }
        let all: bool = tx
            .query_one(
                &format!("SELECT chunks_done >= chunks_total FROM {s}.runs WHERE id = $1"),
                &[&run_id],
            )
            .await
            .map_err(&err)?
            .get(0);
        if all {
            tx.execute(
                &format!("UPDATE {s}.runs SET state = 'snapshotted', updated_at = $2 WHERE id = $1 AND state = 'snapshotting'"),
                &[&run_id, &now_ms()],
            )
            .await
            .map_err(&err)?;
        }
        tx.commit().await.map_err(&err)?;
        self.count(2);
        Ok(all)
    }

    async fn merge(&self, run: &Run) -> Result<bool, StoreError> {
        let (s, err) = (&self.s, pg_err("merge"));
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(&err)?;
        let n = tx
            .execute(
                &format!(
                    "UPDATE {s}.runs SET state = 'merged', updated_at = $2 WHERE id = $1 AND state = 'snapshotted'"
                ),
                &[&run.id, &now_ms()],
            )
            .await
            .map_err(&err)?;
        if n == 0 {
            return Ok(false);
        }
        let (id, upserted, deleted) = merge_delta(self, &tx, run).await?;
        record_staged_schema(&tx, s, run).await?;
        let part = analysed_partition(&tx, s, id, upserted + deleted).await?;
        tx.commit().await.map_err(&err)?;
        self.count(2 + upserted + deleted);
        if let Some(part) = part {
            c.batch_execute(&format!("ANALYZE {part}")).await.map_err(&err)?;
        }
        Ok(true)
    }

    async fn rewind_lost_delta(&self, run: &Run) -> Result<bool, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err("rewind lost delta"))?;
        super::scratch::rewind_if_lost(tx, &self.s, run).await
    }

    async fn invalidate_staging(&self, tenant: &str, source: &str, keys: Vec<Vec<u8>>) -> Result<u64, StoreError> {
        let sql = format!(
            "INSERT INTO {}.staging_keys (sid, key, hash) SELECT $1, k, $3 FROM UNNEST($2::BYTEA[]) AS k \
             ON CONFLICT (sid, key) DO UPDATE SET hash = EXCLUDED.hash",
            self.s
        );
        let c = self.client().await?;
        let id = sid(&**c, &self.s, tenant, source).await?;
        let n = c
            .execute(&sql, &[&id, &keys, &INVALID_HASH.to_vec()])
            .await
            .map_err(pg_err("invalidate staging"))?;
        self.count(n);
        Ok(n)
    }

    async fn staged_hashes(
        &self,
        tenant: &str,
        source: &str,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, RowHash)>, StoreError> {
        super::packs::staged_hashes(self, tenant, source, keys).await
    }

    async fn cursor(&self, tenant: &str, source: &str) -> Result<(Option<String>, Option<DateTime<Utc>>), StoreError> {
        let sql = format!(
            "SELECT cursor_json, last_full_at FROM {}.cursors WHERE tenant = $1 AND source = $2",
            self.s
        );
        let row = prepared::query_opt(&self.client().await?, &sql, &[&tenant, &source])
            .await
            .map_err(pg_err("cursor"))?;
        Ok(row.map_or((None, None), |r| {
            (r.get(0), r.get::<_, Option<i64>>(1).map(super::from_ms))
        }))
    }

    async fn set_cursor(&self, tenant: &str, source: &str, cursor: Option<&str>, full: bool) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {s}.cursors (tenant, source, cursor_json, last_full_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, source) DO UPDATE SET cursor_json = EXCLUDED.cursor_json, \
             last_full_at = COALESCE(EXCLUDED.last_full_at, {s}.cursors.last_full_at)",
            s = self.s
        );
        let full_at = full.then(now_ms);
        prepared::execute(&self.client().await?, &sql, &[&tenant, &source, &cursor, &full_at])
            .await
            .map_err(pg_err("set cursor"))?;
        self.count(1);
        Ok(())
    }

    fn changes(&self, run_id: &str) -> Batches<Records, StoreError> {
        let records = segments(self, run_id, |body| Records::decode(body).map(|r| vec![r]));
        change_records(legacy_rows(self, run_id), records)
    }
}

/// Applies the run's delta to staging inside the merge transaction, a segment's keys per
/// statement; returns the source's id and the keys (upserted, deleted).
async fn merge_delta(store: &PgStore, tx: &Transaction<'_>, run: &Run) -> Result<(i32, u64, u64), StoreError> {
    let (s, err) = (&store.s, pg_err("merge"));
    // The deletes' key lists must probe the primary key, whatever statistics say: with staging
    // believed empty the planner otherwise filters every staged key of the source instead.
    tx.batch_execute("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off")
        .await
        .map_err(&err)?;
    let id = sid(tx, s, &run.tenant, &run.source).await?;
    let empty: bool = tx
        .query_one(
            &format!(
                "SELECT NOT EXISTS (SELECT 1 FROM {s}.staging_keys WHERE sid = $1) \
                 AND NOT EXISTS (SELECT 1 FROM {s}.staging_packs WHERE sid = $1)"
            ),
            &[&id],
        )
        .await
        .map_err(&err)?
        .get(0);
    if empty {
        let (copied, deleted) = copy_into_empty(store, tx, id, &run.id).await?;
        return Ok((id, copied, deleted));
    }
    let upsert = tx
        .prepare(&format!(
            "INSERT INTO {s}.staging_keys (sid, key, hash) \
             SELECT $1, k, h FROM UNNEST($2::BYTEA[], $3::BYTEA[]) AS u(k, h) \
             ON CONFLICT (sid, key) DO UPDATE SET hash = EXCLUDED.hash"
        ))
        .await
        .map_err(&err)?;
    let packs = Coverage::of(tx, s, id).await?;
    let (mut upserted, mut deleted) = (0, 0);
    let mut changes = staged_changes(delta(store, &run.id));
    while let Some(batch) = changes.recv().await {
        let (mut keys, mut hashes, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        for (key, hash) in batch? {
            match hash {
                Some(h) => {
                    hashes.push(h.to_vec());
                    keys.push(key);
                }
                None => gone.push(key),
            }
        }
        if !keys.is_empty() {
            upserted += tx.execute(&upsert, &[&id, &keys, &hashes]).await.map_err(&err)?;
        }
        if !gone.is_empty() {
            deleted += unstage(tx, s, id, &packs, &gone).await?;
        }
    }
    let compacted = super::packs::compact_if_due(tx, s, id, upserted + deleted).await?;
    Ok((id, upserted + compacted, deleted))
}

/// Into a source with nothing staged (an initial sync) every change is a new key: the delta goes
/// in as one binary `COPY`, with no statement per segment and no conflict to check (a key
/// arriving twice still fails the primary key, and the merge with it).
async fn copy_into_empty(
    store: &PgStore,
    tx: &Transaction<'_>,
    sid: i32,
    run_id: &str,
) -> Result<(u64, u64), StoreError> {
    use tokio_postgres::binary_copy::BinaryCopyInWriter;
    use tokio_postgres::types::Type;
    let err = pg_err("merge");
    let sink = tx
        .copy_in(&format!(
            "COPY {}.staging_keys (sid, key, hash) FROM STDIN BINARY",
            store.s
        ))
        .await
        .map_err(&err)?;
    let writer = BinaryCopyInWriter::new(sink, &[Type::INT4, Type::BYTEA, Type::BYTEA]);
    futures_util::pin_mut!(writer);
    let mut copied = 0;
    let mut changes = staged_changes(delta(store, run_id));
    while let Some(batch) = changes.recv().await {
        // A delete has nothing to remove from an empty staging.
        for (key, hash) in batch? {
            if let Some(h) = hash {
                let row: [&(dyn ToSql + Sync); 3] = [&sid, &key, &h.as_slice()];
                writer.as_mut().write(&row).await.map_err(&err)?;
                copied += 1;
            }
        }
    }
    writer.finish().await.map_err(&err)?;
    Ok((copied, 0))
}
