//! Staging and deltas in SQL Server: deltas arrive as packed segments (one row per few thousand
//! changes, each a parameter of its own statement whatever its size); merge applies them through
//! `#delta` in one transaction (merge.rs).

use super::merge::drop_delta;
use super::runs::upsert;
use super::session::{self, bytes, flag, hash, opt_int, opt_text, p, placeholders, text, Params, MAX_LIST};
use super::{now_ms, MssqlStore};
use crate::domain::segment::{self, Part};
use crate::domain::{encoding::RowHash, encoding::INVALID_HASH, schema::TableSchema};
use crate::errors::StoreError;
use crate::ports::{
    change_records, staged_changes, Batches, Chunk, ChunkStats, KeyRange, NumberedStep, Records, Run, StagingStore,
    StepCommitted,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Staging rows of one (tenant, data source), by name: reads need no source id of their own.
const STAGED: &str =
    "FROM {s}.staging st JOIN {s}.sources so ON so.sid = st.sid WHERE so.tenant = @P1 AND so.source = @P2";

/// ` AND st.k >= @Pn AND st.k < @Pm` for the bounds that exist, appending their parameters.
fn range_sql(range: &KeyRange, params: &mut Params) -> String {
    let mut sql = String::new();
    if let Some(lo) = &range.lo {
        params.push(p(lo.clone()));
        sql.push_str(&format!(" AND st.k >= @P{}", params.len()));
    }
    if let Some(hi) = &range.hi {
        params.push(p(hi.clone()));
        sql.push_str(&format!(" AND st.k < @P{}", params.len()));
    }
    sql
}

/// A channel already holding `items`.
pub(super) fn ready<T: Send + 'static>(items: Vec<T>) -> Batches<T, StoreError> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    if !items.is_empty() {
        let _ = tx.try_send(Ok(items));
    }
    rx
}

impl MssqlStore {
    /// Records the shape the run staged, for the next run's drift check.
    pub(super) async fn record_staged_schema(&self, x: &mut session::Session, run: &Run) -> Result<(), StoreError> {
        if let Some(schema) = &run.schema {
            let schema = serde_json::to_string(schema).expect("schemas serialise");
            x.exec(
                &self.q(&upsert(
                    "UPDATE {s}.staged_schemas WITH (UPDLOCK, SERIALIZABLE) SET schema_json = @P3, run_id = @P4 \
                         WHERE tenant = @P1 AND source = @P2",
                    "INSERT INTO {s}.staged_schemas (tenant, source, schema_json, run_id) VALUES (@P1, @P2, @P3, @P4)",
                )),
                vec![
                    p(run.tenant.clone()),
                    p(run.source.clone()),
                    p(schema),
                    p(run.id.clone()),
                ],
            )
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl StagingStore for MssqlStore {
    async fn staged_schema(&self, tenant: &str, source: &str) -> Result<Option<TableSchema>, StoreError> {
        let sql = self.q("SELECT schema_json FROM {s}.staged_schemas WHERE tenant = @P1 AND source = @P2");
        let mut x = self.session("staged schema").await?;
        let row = x.row(&sql, vec![p(tenant.to_owned()), p(source.to_owned())]).await?;
        x.done();
        row.map(|r| {
            serde_json::from_str(&text(&r, 0)?).map_err(|e| StoreError::Corrupt {
                what: "staged schema",
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    fn staging(&self, tenant: &str, source: &str, range: &KeyRange) -> Batches<(Vec<u8>, RowHash), StoreError> {
        let mut params = vec![p(tenant.to_owned()), p(source.to_owned())];
        let cond = range_sql(range, &mut params);
        let sql = self.q(&format!("SELECT st.k, st.hash {STAGED}{cond} ORDER BY st.k"));
        session::stream(&self.pool, "read staging", sql, params, 2_000, |r| {
            Ok(std::iter::once((bytes(r, 0)?, hash(r, 1)?)))
        })
    }

    async fn reset_chunk(&self, run_id: &str, chunk: &Chunk) -> Result<Option<i64>, StoreError> {
        let mut x = self.session("reset chunk").await?;
        x.begin().await?;
        // The chunk's row stays locked until the delete commits: an earlier attempt's segment
        // write waits for it, then finds its attempt gone (`write_segment`).
        let attempt = x
            .row(
                &self.q("UPDATE {s}.chunks SET attempt = attempt + 1 OUTPUT inserted.attempt \
                     WHERE run_id = @P1 AND chunk_no = @P2 AND done = 0 \
                     AND EXISTS (SELECT 1 FROM {s}.runs WHERE id = @P1 AND state = N'snapshotting')"),
                vec![p(run_id.to_owned()), p(chunk.no as i32)],
            )
            .await?
            .map(|r| session::int(&r, 0))
            .transpose()?;
        let Some(attempt) = attempt else {
            x.rollback().await?;
            return Ok(None);
        };
        let n = x
            .exec(
                &self.q("DELETE FROM {s}.delta_segments WHERE run_id = @P1 AND chunk_no = @P2"),
                vec![p(run_id.to_owned()), p(chunk.no as i32)],
            )
            .await?;
        x.commit().await?;
        self.count(1 + n);
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
        // One parameter, any size: the RPC path streams (max) values, unlike bulk loads. The
        // update lock waits for a later attempt's reset in progress, then reads its number: the
        // row goes in only while this attempt holds the chunk, and a reset after it deletes it.
        let sql = self.q("INSERT INTO {s}.delta_segments (run_id, chunk_no, seg_no, rows, body) \
             SELECT @P1, @P2, @P3, @P4, @P5 FROM {s}.chunks WITH (UPDLOCK, ROWLOCK) \
             WHERE run_id = @P1 AND chunk_no = @P2 AND attempt = @P6");
        let mut x = self.session("write delta").await?;
        let n = x
            .exec(
                &sql,
                vec![
                    p(run_id.to_owned()),
                    p(chunk as i32),
                    p(seg as i32),
                    p(rows as i32),
                    p(body.into_vec()),
                    p(attempt),
                ],
            )
            .await?;
        x.done();
        if n == 0 {
            return Err(StoreError::chunk_superseded(run_id, chunk, attempt));
        }
        self.count(1);
        Ok(())
    }

    async fn commit_step(&self, run: &Run, step: NumberedStep) -> Result<StepCommitted, StoreError> {
        self.commit_numbered_step(run, step).await
    }

    async fn finish_chunk(&self, run_id: &str, chunk: u32, attempt: i64, st: ChunkStats) -> Result<bool, StoreError> {
        let mut x = self.session("finish chunk").await?;
        x.begin().await?;
        let held = x
            .row(
                &self.q(
                    "SELECT CASE WHEN attempt = @P3 THEN 1 ELSE 0 END, done FROM {s}.chunks WITH (UPDLOCK, ROWLOCK) \
                     WHERE run_id = @P1 AND chunk_no = @P2",
                ),
                vec![p(run_id.to_owned()), p(chunk as i32), p(attempt)],
            )
            .await?
            .map(|r| Ok::<_, StoreError>((flag(&r, 0)?, flag(&r, 1)?)))
            .transpose()?;
        let Some((true, done)) = held else {
            x.rollback().await?;
            return Err(StoreError::chunk_superseded(run_id, chunk, attempt));
        };
        let first = !done
            && x.exec(
                &self.q("UPDATE {s}.chunks SET done = 1 WHERE run_id = @P1 AND chunk_no = @P2"),
                vec![p(run_id.to_owned()), p(chunk as i32)],
            )
            .await?
                == 1;
        if first {
            x.exec(
                &self.q(
                    "UPDATE {s}.runs SET chunks_done = chunks_done + 1, rows_read = rows_read + @P2, inserts = inserts + @P3, \
                     updates = updates + @P4, deletes = deletes + @P5, updated_at = @P6, bytes_read = bytes_read + @P7 WHERE id = @P1",
                ),
                vec![
                    p(run_id.to_owned()),
                    p(st.rows_read),
                    p(st.inserts),
                    p(st.updates),
                    p(st.deletes),
                    p(now_ms()),
                    p(st.bytes_read),
                ],
            )
            .await?;
        }
        // The run's row lock (taken by the update above, or here) orders concurrent last chunks.
        let all = x
            .row(
                &self.q(
                    "SELECT CASE WHEN chunks_done >= chunks_total THEN 1 ELSE 0 END FROM {s}.runs WITH (UPDLOCK) WHERE id = @P1",
                ),
                vec![p(run_id.to_owned())],
            )
            .await?
            .map(|r| flag(&r, 0))
            .transpose()?
            .unwrap_or(false);
        if all {
            x.exec(
                &self.q("UPDATE {s}.runs SET state = 'snapshotted', updated_at = @P2 WHERE id = @P1 AND state = 'snapshotting'"),
                vec![p(run_id.to_owned()), p(now_ms())],
            )
            .await?;
        }
        x.commit().await?;
        self.count(2);
        Ok(all)
    }

    async fn merge(&self, run: &Run) -> Result<bool, StoreError> {
        let mut x = self.session("merge").await?;
        let state = x
            .row(
                &self.q("SELECT state FROM {s}.runs WHERE id = @P1"),
                vec![p(run.id.clone())],
            )
            .await?
            .map(|r| text(&r, 0))
            .transpose()?;
        if state.as_deref() != Some("snapshotted") {
            x.done();
            return Ok(false);
        }
        let sid = self.sid(&mut x, &run.tenant, &run.source).await?;
        // Loaded before the transaction opens: it holds staging's locks only while applying.
        let keys = segments(self, &run.id, |body| segment::decode(body, Part::Keys));
        self.load_delta(&mut x, staged_changes(keys)).await?;
        x.begin().await?;
        let n = x
            .exec(
                &self.q(
                    "UPDATE {s}.runs SET state = 'merged', updated_at = @P2 WHERE id = @P1 AND state = 'snapshotted'",
                ),
                vec![p(run.id.clone()), p(now_ms())],
            )
            .await?;
        if n == 0 {
            // Another worker merged it meanwhile.
            x.rollback_keep().await?;
            drop_delta(&mut x).await?;
            x.done();
            return Ok(false);
        }
        let (upserted, deleted) = self.apply_delta(&mut x, sid).await?;
        self.record_staged_schema(&mut x, run).await?;
        x.commit_keep().await?;
        drop_delta(&mut x).await?;
        x.done();
        self.count(2 + upserted + deleted);
        Ok(true)
    }

    async fn invalidate_staging(&self, tenant: &str, source: &str, keys: Vec<Vec<u8>>) -> Result<u64, StoreError> {
        let mut x = self.session("invalidate staging").await?;
        let sid = self.sid(&mut x, tenant, source).await?;
        let changes = keys.into_iter().map(|k| (k, Some(INVALID_HASH))).collect();
        self.load_delta(&mut x, ready(changes)).await?;
        x.begin().await?;
        let (n, _) = self.apply_delta(&mut x, sid).await?;
        x.commit_keep().await?;
        drop_delta(&mut x).await?;
        x.done();
        self.count(n);
        Ok(n)
    }

    async fn staged_hashes(
        &self,
        tenant: &str,
        source: &str,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, RowHash)>, StoreError> {
        let mut out = Vec::new();
        let mut x = self.session("staged hashes").await?;
        for keys in keys.chunks(MAX_LIST) {
            let sql = self.q(&format!(
                "SELECT st.k, st.hash {STAGED} AND st.k IN ({})",
                placeholders(3, keys.len())
            ));
            let mut params = vec![p(tenant.to_owned()), p(source.to_owned())];
            params.extend(keys.iter().map(|k| p(k.clone())));
            for r in x.rows(&sql, params).await? {
                out.push((bytes(&r, 0)?, hash(&r, 1)?));
            }
        }
        x.done();
        Ok(out)
    }

    async fn cursor(&self, tenant: &str, source: &str) -> Result<(Option<String>, Option<DateTime<Utc>>), StoreError> {
        let sql = self.q("SELECT cursor_json, last_full_at FROM {s}.cursors WHERE tenant = @P1 AND source = @P2");
        let mut x = self.session("cursor").await?;
        let row = x.row(&sql, vec![p(tenant.to_owned()), p(source.to_owned())]).await?;
        x.done();
        match row {
            Some(r) => Ok((opt_text(&r, 0)?, opt_int(&r, 1)?.map(super::from_ms))),
            None => Ok((None, None)),
        }
    }

    async fn set_cursor(&self, tenant: &str, source: &str, cursor: Option<&str>, full: bool) -> Result<(), StoreError> {
        let sql = self.q(&upsert(
            "UPDATE {s}.cursors WITH (UPDLOCK, SERIALIZABLE) SET cursor_json = @P3, \
             last_full_at = COALESCE(@P4, last_full_at) WHERE tenant = @P1 AND source = @P2",
            "INSERT INTO {s}.cursors (tenant, source, cursor_json, last_full_at) VALUES (@P1, @P2, @P3, @P4)",
        ));
        let mut x = self.session("set cursor").await?;
        x.exec(
            &sql,
            vec![
                p(tenant.to_owned()),
                p(source.to_owned()),
                p(cursor.map(str::to_owned)),
                p(full.then(now_ms)),
            ],
        )
        .await?;
        x.done();
        self.count(1);
        Ok(())
    }

    fn changes(&self, run_id: &str) -> Batches<Records, StoreError> {
        // This store began with segments: there are no per-row deltas from an older build.
        let records = segments(self, run_id, |body| Records::decode(body).map(|r| vec![r]));
        change_records(ready(Vec::new()), records)
    }
}

/// The run's delta segments, decoded one at a time (`decode`), in chunk and segment order.
fn segments<T: Send + 'static>(
    store: &MssqlStore,
    run_id: &str,
    decode: fn(&[u8]) -> Result<Vec<T>, segment::SegmentError>,
) -> Batches<T, StoreError> {
    let sql = store.q("SELECT body FROM {s}.delta_segments WHERE run_id = @P1 ORDER BY chunk_no, seg_no");
    session::stream(
        &store.pool,
        "read delta segments",
        sql,
        vec![p(run_id.to_owned())],
        1,
        move |r| Ok(decode(&bytes(r, 0)?)?),
    )
}
