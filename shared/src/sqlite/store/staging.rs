//! Staging state and deltas in SQLite: range streams, chunk deltas, and the set-based merge.

use super::{now_ms, SqliteStore};
use crate::domain::segment::{self, Part};
use crate::domain::{diff::Op, encoding::RowHash, encoding::INVALID_HASH, schema::TableSchema};
use crate::errors::StoreError;
use crate::ports::{
    change_records, Batches, Chunk, ChunkStats, DeltaRow, KeyRange, NumberedStep, Records, Run, StagingStore,
    StepCommitted,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::Value as Sql;
use rusqlite::{params, OptionalExtension};

/// `AND key >= ? AND key < ?` for the bounds that exist, appending their parameters.
fn range_sql(range: &KeyRange, params: &mut Vec<Sql>) -> String {
    let mut sql = String::new();
    if let Some(lo) = &range.lo {
        params.push(Sql::Blob(lo.clone()));
        sql.push_str(&format!(" AND key >= ?{}", params.len()));
    }
    if let Some(hi) = &range.hi {
        params.push(Sql::Blob(hi.clone()));
        sql.push_str(&format!(" AND key < ?{}", params.len()));
    }
    sql
}

fn hash_of(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<RowHash> {
    let b: Vec<u8> = r.get(i)?;
    b.try_into()
        .map_err(|_| rusqlite::Error::InvalidColumnType(i, "hash".into(), rusqlite::types::Type::Blob))
}

#[async_trait]
impl StagingStore for SqliteStore {
    async fn staged_schema(&self, tenant: &str, source: &str) -> Result<Option<TableSchema>, StoreError> {
        let (tenant, source) = (tenant.to_owned(), source.to_owned());
        let json: Option<String> = self
            .db
            .read("staged schema", move |c| {
                c.query_row(
                    "SELECT schema_json FROM staged_schemas WHERE tenant = ?1 AND source = ?2",
                    params![tenant, source],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| StoreError::Corrupt {
                what: "staged schema",
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    fn staging(&self, tenant: &str, source: &str, range: &KeyRange) -> Batches<(Vec<u8>, RowHash), StoreError> {
        let mut p = vec![Sql::Text(tenant.to_owned()), Sql::Text(source.to_owned())];
        let cond = range_sql(range, &mut p);
        let sql = format!("SELECT key, hash FROM staging WHERE tenant = ?1 AND source = ?2{cond} ORDER BY key");
        self.db
            .stream("read staging", sql, p, |r| Ok((r.get(0)?, hash_of(r, 1)?)))
    }

    async fn reset_chunk(&self, run_id: &str, chunk: &Chunk) -> Result<Option<i64>, StoreError> {
        let mut p = vec![Sql::Text(run_id.to_owned())];
        let cond = range_sql(&chunk.range, &mut p);
        let (run_id, no) = (run_id.to_owned(), chunk.no);
        self.db
            .write("reset chunk", move |tx| {
                let attempt: Option<i64> = tx
                    .query_row(
                        "UPDATE chunks SET attempt = attempt + 1 WHERE run_id = ?1 AND chunk_no = ?2 AND done = 0 \
                         AND EXISTS (SELECT 1 FROM runs WHERE id = ?1 AND state = 'snapshotting') RETURNING attempt",
                        params![run_id, no],
                        |r| r.get(0),
                    )
                    .optional()?;
                if attempt.is_none() {
                    return Ok(None);
                }
                // Rows from a build before segments (an attempt interrupted by the upgrade) go too.
                tx.execute(
                    &format!("DELETE FROM deltas WHERE run_id = ?1{cond}"),
                    rusqlite::params_from_iter(p),
                )?;
                tx.execute(
                    "DELETE FROM delta_segments WHERE run_id = ?1 AND chunk_no = ?2",
                    params![run_id, no],
                )?;
                Ok(attempt)
            })
            .await
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
        let id = run_id.to_owned();
        let written = self
            .db
            .write("write delta", move |tx| {
                tx.execute(
                    "INSERT INTO delta_segments (run_id, chunk_no, seg_no, rows, body) \
                     SELECT ?1, ?2, ?3, ?4, ?5 FROM chunks WHERE run_id = ?1 AND chunk_no = ?2 AND attempt = ?6",
                    params![id, chunk, seg, rows, body.as_slice(), attempt],
                )
            })
            .await?;
        if written == 0 {
            return Err(StoreError::chunk_superseded(run_id, chunk, attempt));
        }
        Ok(())
    }

    async fn commit_step(&self, run: &Run, step: NumberedStep) -> Result<StepCommitted, StoreError> {
        super::numbered::commit_step(self, run, step).await
    }

    async fn finish_chunk(&self, run_id: &str, chunk: u32, attempt: i64, s: ChunkStats) -> Result<bool, StoreError> {
        let id = run_id.to_owned();
        self.db
            .write("finish chunk", move |tx| {
                let held: Option<(bool, bool)> = tx
                    .query_row(
                        "SELECT attempt = ?3, done FROM chunks WHERE run_id = ?1 AND chunk_no = ?2",
                        params![id, chunk, attempt],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let Some((true, done)) = held else {
                    return Ok(None);
                };
                let first = !done
                    && tx.execute(
                        "UPDATE chunks SET done = 1 WHERE run_id = ?1 AND chunk_no = ?2",
                        params![id, chunk],
                    )? == 1;
                if first {
                    tx.execute(
                        "UPDATE runs SET chunks_done = chunks_done + 1, rows_read = rows_read + ?2, \
                                                  inserts = inserts + ?3, updates = updates + ?4, deletes = deletes + ?5, updated_at = ?6, \
                         bytes_read = bytes_read + ?7 WHERE id = ?1",
                        params![id, s.rows_read, s.inserts, s.updates, s.deletes, now_ms(), s.bytes_read],
                    )?;
                }
                let all: bool = tx.query_row(
                    "SELECT chunks_done >= chunks_total FROM runs WHERE id = ?1",
                    [&id],
                    |r| r.get(0),
                )?;
                if all {
                    tx.execute(
                        "UPDATE runs SET state = 'snapshotted', updated_at = ?2 WHERE id = ?1 AND state = 'snapshotting'",
                        params![id, now_ms()],
                    )?;
                }
                Ok(Some(all))
            })
            .await?
            .ok_or_else(|| StoreError::chunk_superseded(run_id, chunk, attempt))
    }

    async fn merge(&self, run: &Run) -> Result<bool, StoreError> {
        let run = run.clone();
        self.db
            .write("merge", move |tx| {
                let n = tx.execute(
                    "UPDATE runs SET state = 'merged', updated_at = ?2 WHERE id = ?1 AND state = 'snapshotted'",
                    params![run.id, now_ms()],
                )?;
                if n == 0 {
                    return Ok(false);
                }
                // A run in flight across the upgrade to segments may have rows of both kinds.
                tx.execute(
                    "INSERT INTO staging (tenant, source, key, hash) \
                     SELECT ?1, ?2, key, hash FROM deltas WHERE run_id = ?3 AND op IN (1, 2) \
                     ON CONFLICT (tenant, source, key) DO UPDATE SET hash = excluded.hash",
                    params![run.tenant, run.source, run.id],
                )?;
                tx.execute(
                    "DELETE FROM staging WHERE tenant = ?1 AND source = ?2 AND key IN \
                     (SELECT key FROM deltas WHERE run_id = ?3 AND op = 3)",
                    params![run.tenant, run.source, run.id],
                )?;
                merge_segments(tx, &run)?;
                record_staged_schema(tx, &run)?;
                Ok(true)
            })
            .await
    }

    async fn invalidate_staging(&self, tenant: &str, source: &str, keys: Vec<Vec<u8>>) -> Result<u64, StoreError> {
        let (tenant, source) = (tenant.to_owned(), source.to_owned());
        self.db
            .write("invalidate staging", move |tx| {
                let mut up = tx.prepare_cached(
                    "INSERT INTO staging (tenant, source, key, hash) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (tenant, source, key) DO UPDATE SET hash = excluded.hash",
                )?;
                for k in &keys {
                    up.execute(params![tenant, source, k, INVALID_HASH.to_vec()])?;
                }
                Ok(keys.len() as u64)
            })
            .await
    }

    async fn staged_hashes(
        &self,
        tenant: &str,
        source: &str,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, RowHash)>, StoreError> {
        let (tenant, source) = (tenant.to_owned(), source.to_owned());
        self.db
            .read("staged hashes", move |c| {
                let mut stmt =
                    c.prepare_cached("SELECT key, hash FROM staging WHERE tenant = ?1 AND source = ?2 AND key = ?3")?;
                let mut out = Vec::new();
                for k in keys {
                    let mut rows = stmt.query(params![tenant, source, k])?;
                    if let Some(r) = rows.next()? {
                        out.push((r.get(0)?, hash_of(r, 1)?));
                    }
                }
                Ok(out)
            })
            .await
    }

    async fn cursor(&self, tenant: &str, source: &str) -> Result<(Option<String>, Option<DateTime<Utc>>), StoreError> {
        let (tenant, source) = (tenant.to_owned(), source.to_owned());
        let row: Option<(Option<String>, Option<i64>)> = self
            .db
            .read("cursor", move |c| {
                c.query_row(
                    "SELECT cursor_json, last_full_at FROM cursors WHERE tenant = ?1 AND source = ?2",
                    params![tenant, source],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
            })
            .await?;
        Ok(row.map_or((None, None), |(c, at)| (c, at.map(super::from_ms))))
    }

    async fn set_cursor(&self, tenant: &str, source: &str, cursor: Option<&str>, full: bool) -> Result<(), StoreError> {
        let (tenant, source, cursor) = (tenant.to_owned(), source.to_owned(), cursor.map(str::to_owned));
        self.db
            .write("set cursor", move |tx| {
                let full_at = full.then(now_ms);
                tx.execute(
                    "INSERT INTO cursors (tenant, source, cursor_json, last_full_at) VALUES (?1, ?2, ?3, ?4) \
                     ON CONFLICT (tenant, source) DO UPDATE SET cursor_json = excluded.cursor_json, \
                     last_full_at = COALESCE(excluded.last_full_at, cursors.last_full_at)",
                    params![tenant, source, cursor, full_at],
                )?;
                Ok(())
            })
            .await
    }

    fn changes(&self, run_id: &str) -> Batches<Records, StoreError> {
        let legacy = self.db.stream(
            "read changes",
            "SELECT op, payload, key FROM deltas WHERE run_id = ?1 ORDER BY key".to_owned(),
            vec![Sql::Text(run_id.to_owned())],
            |r| {
                let op = Op::from_code(r.get(0)?).ok_or_else(|| {
                    rusqlite::Error::InvalidColumnType(0, "op".into(), rusqlite::types::Type::Integer)
                })?;
                Ok(DeltaRow {
                    op,
                    payload: r.get(1)?,
                    key: r.get(2)?,
                    hash: None,
                })
            },
        );
        let segments = self.db.stream_each(
            "read delta segments",
            "SELECT body FROM delta_segments WHERE run_id = ?1 ORDER BY chunk_no, seg_no".to_owned(),
            vec![Sql::Text(run_id.to_owned())],
            |r| {
                Records::decode(&r.get::<_, Vec<u8>>(0)?)
                    .map(|records| vec![records])
                    .map_err(blob_err)
            },
        );
        change_records(legacy, segments)
    }
}

fn blob_err(e: segment::SegmentError) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
}

fn decode_segment(body: &[u8], part: Part) -> rusqlite::Result<Vec<DeltaRow>> {
    segment::decode(body, part).map_err(blob_err)
}

/// Records the shape the run staged, for the next run's drift check.
pub(super) fn record_staged_schema(tx: &rusqlite::Transaction<'_>, run: &Run) -> rusqlite::Result<()> {
    if let Some(schema) = &run.schema {
        let schema = serde_json::to_string(schema).expect("schemas serialise");
        tx.execute(
            "INSERT INTO staged_schemas (tenant, source, schema_json, run_id) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT (tenant, source) DO UPDATE SET schema_json = excluded.schema_json, run_id = excluded.run_id",
            params![run.tenant, run.source, schema, run.id],
        )?;
    }
    Ok(())
}

/// Applies the run's delta segments to staging, one segment in memory at a time.
fn merge_segments(tx: &rusqlite::Transaction<'_>, run: &Run) -> rusqlite::Result<()> {
    let mut read = tx.prepare("SELECT body FROM delta_segments WHERE run_id = ?1 ORDER BY chunk_no, seg_no")?;
    let mut upsert = tx.prepare(
        "INSERT INTO staging (tenant, source, key, hash) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (tenant, source, key) DO UPDATE SET hash = excluded.hash",
    )?;
    let mut delete = tx.prepare("DELETE FROM staging WHERE tenant = ?1 AND source = ?2 AND key = ?3")?;
    let mut segments = read.query([&run.id])?;
    while let Some(seg) = segments.next()? {
        // `decode` has checked every insert and update carries its hash.
        for r in decode_segment(&seg.get::<_, Vec<u8>>(0)?, Part::Keys)? {
            match r.hash.filter(|_| r.op != Op::Delete) {
                Some(h) => upsert.execute(params![run.tenant, run.source, r.key, h.to_vec()])?,
                None => delete.execute(params![run.tenant, run.source, r.key])?,
            };
        }
    }
    Ok(())
}
