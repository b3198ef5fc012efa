//! Batches and the delivery ledger in SQLite.

use super::{now_ms, SqliteStore};
use crate::domain::packing::{unpack_body, Body};
use crate::errors::StoreError;
use crate::ports::{Attempt, BatchRecord, BatchStore, Run};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Transaction};

/// Inserts batches as stored (`Body::stored`), ignoring ones already saved.
pub(super) fn insert_batches(tx: &Transaction, batches: &[BatchRecord]) -> rusqlite::Result<()> {
    let mut ins = tx.prepare_cached(
        "INSERT INTO batches (id, run_id, seq_first, seq_last, rows, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
         ON CONFLICT (id) DO NOTHING",
    )?;
    for b in batches {
        let body = b.body.stored();
        ins.execute(params![b.id, b.run_id, b.seq_first, b.seq_last, b.rows, body.as_ref()])?;
    }
    Ok(())
}

fn insert_attempt(tx: &Transaction, run_id: &str, a: &Attempt) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO deliveries (run_id, batch_id, attempt, at, duration_ms, status, detail, request_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            run_id,
            a.batch_id,
            a.attempt,
            now_ms(),
            a.duration.as_millis() as i64,
            a.status,
            a.detail,
            a.request_id
        ],
    )?;
    Ok(())
}

/// Marks the run done and drops its scratch rows (deltas, batch bodies); the ledger stays.
pub(super) fn finish_run(tx: &Transaction, run_id: &str) -> rusqlite::Result<bool> {
    let n = tx.execute(
        "UPDATE runs SET state = 'done', finished_at = ?2, updated_at = ?2 WHERE id = ?1 AND state <> 'done'",
        params![run_id, now_ms()],
    )?;
    tx.execute("DELETE FROM deltas WHERE run_id = ?1", [run_id])?;
    tx.execute("DELETE FROM delta_segments WHERE run_id = ?1", [run_id])?;
    tx.execute(
        "UPDATE batches SET body = NULL WHERE run_id = ?1 AND body IS NOT NULL",
        [run_id],
    )?;
    tx.execute("DELETE FROM chunks WHERE run_id = ?1", [run_id])?;
    Ok(n == 1)
}

#[async_trait]
impl BatchStore for SqliteStore {
    async fn save_batches(&self, batches: Vec<BatchRecord>) -> Result<(), StoreError> {
        self.db
            .write("save batches", move |tx| insert_batches(tx, &batches))
            .await
    }

    async fn finish_batching(&self, run: &Run, total: i64, bytes: i64) -> Result<(), StoreError> {
        let run_id = run.id.clone();
        self.db
            .write("finish batching", move |tx| {
                let n = tx.execute(
                    "UPDATE runs SET state = 'batched', batches_total = ?2, bytes = ?3, updated_at = ?4 \
                     WHERE id = ?1 AND state = 'merged'",
                    params![run_id, total, bytes, now_ms()],
                )?;
                if n == 1 && total == 0 {
                    finish_run(tx, &run_id)?;
                }
                Ok(())
            })
            .await
    }

    async fn pending_batches(&self, run_id: &str) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let run_id = run_id.to_owned();
        self.db
            .read("pending batches", move |c| {
                let mut stmt = c.prepare(
                    "SELECT id, seq_first, seq_last FROM batches WHERE run_id = ?1 AND delivered_at IS NULL ORDER BY seq_first",
                )?;
                let rows = stmt.query_map([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .await
    }

    async fn split_batch(&self, run: &Run, attempt: &Attempt, children: Vec<BatchRecord>) -> Result<(), StoreError> {
        let (run_id, attempt) = (run.id.clone(), attempt.clone());
        self.db
            .write("split batch", move |tx| {
                insert_attempt(tx, &run_id, &attempt)?;
                let first = tx.execute(
                    "UPDATE batches SET delivered_at = ?2, body = NULL WHERE id = ?1 AND delivered_at IS NULL",
                    params![attempt.batch_id, now_ms()],
                )? == 1;
                if !first {
                    return Ok(());
                }
                insert_batches(tx, &children)?;
                tx.execute(
                    "UPDATE runs SET batches_total = batches_total + ?2, batches_delivered = batches_delivered + 1, \
                     updated_at = ?3 WHERE id = ?1",
                    params![run_id, children.len() as i64, now_ms()],
                )?;
                Ok(())
            })
            .await
    }

    async fn batch(&self, run_id: &str, batch_id: &str) -> Result<Option<BatchRecord>, StoreError> {
        let (run_id, batch_id) = (run_id.to_owned(), batch_id.to_owned());
        let batch = self
            .db
            .read("load batch", move |c| {
                c.query_row(
                    "SELECT id, run_id, seq_first, seq_last, rows, body, delivered_at IS NOT NULL FROM batches \
                     WHERE id = ?1 AND run_id = ?2",
                    params![batch_id, run_id],
                    |r| {
                        Ok(BatchRecord {
                            id: r.get(0)?,
                            run_id: r.get(1)?,
                            seq_first: r.get(2)?,
                            seq_last: r.get(3)?,
                            rows: r.get(4)?,
                            // As stored, until unpacked below (outside the read).
                            body: Body::Json(r.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default().into()),
                            delivered: r.get(6)?,
                        })
                    },
                )
                .optional()
            })
            .await?;
        batch
            .map(|b| {
                let (Body::Json(stored) | Body::Gzip(stored)) = b.body;
                Ok(BatchRecord {
                    body: unpack_body(stored.into_vec())?,
                    ..b
                })
            })
            .transpose()
    }

    async fn record_attempt(&self, run_id: &str, attempt: &Attempt) -> Result<(), StoreError> {
        let (run_id, attempt) = (run_id.to_owned(), attempt.clone());
        self.db
            .write("record attempt", move |tx| insert_attempt(tx, &run_id, &attempt))
            .await
    }

    async fn mark_delivered(&self, run: &Run, attempt: &Attempt) -> Result<bool, StoreError> {
        let (run_id, attempt) = (run.id.clone(), attempt.clone());
        self.db
            .write("mark delivered", move |tx| {
                insert_attempt(tx, &run_id, &attempt)?;
                let first = tx.execute(
                    "UPDATE batches SET delivered_at = ?2 WHERE id = ?1 AND delivered_at IS NULL",
                    params![attempt.batch_id, now_ms()],
                )? == 1;
                if !first {
                    return Ok(false);
                }
                tx.execute(
                    "UPDATE runs SET batches_delivered = batches_delivered + 1, updated_at = ?2 WHERE id = ?1",
                    params![run_id, now_ms()],
                )?;
                let last: bool = tx.query_row(
                    "SELECT state = 'batched' AND batches_delivered >= batches_total FROM runs WHERE id = ?1",
                    [&run_id],
                    |r| r.get(0),
                )?;
                if last {
                    return finish_run(tx, &run_id);
                }
                Ok(false)
            })
            .await
    }
}
