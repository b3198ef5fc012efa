//! A step of a chunk of a run numbered at commit (decision 0025), in one transaction: SQLite's
//! one writer serialises the steps, so the run's count read here is the step's alone.

use super::batches::{finish_run, insert_batches};
use super::{now_ms, SqliteStore};
use crate::errors::StoreError;
use crate::ports::{NumberedStep, Run, StepCommitted};
use rusqlite::{params, OptionalExtension, Transaction};

pub(super) async fn commit_step(
    store: &SqliteStore,
    run: &Run,
    step: NumberedStep,
) -> Result<StepCommitted, StoreError> {
    let run = run.clone();
    store
        .db
        .write("commit chunk step", move |tx| commit(tx, &run, step))
        .await?
}

/// Everything refused returns before the first write, so the transaction commits nothing then.
fn commit(tx: &Transaction, run: &Run, step: NumberedStep) -> rusqlite::Result<Result<StepCommitted, StoreError>> {
    let held: Option<bool> = tx
        .query_row(
            "SELECT attempt = ?3 AND NOT done FROM chunks WHERE run_id = ?1 AND chunk_no = ?2",
            params![run.id, step.chunk, step.attempt],
            |r| r.get(0),
        )
        .optional()?;
    let base: Option<i64> = tx
        .query_row(
            "SELECT inserts + updates + deletes FROM runs WHERE id = ?1 AND state = 'snapshotting'",
            [&run.id],
            |r| r.get(0),
        )
        .optional()?;
    let (Some(true), Some(base)) = (held, base) else {
        return Ok(Err(StoreError::chunk_superseded(&run.id, step.chunk, step.attempt)));
    };
    let batches = match (step.bodies)(base) {
        Ok(b) => b,
        Err(e) => return Ok(Err(e)),
    };
    insert_batches(tx, &batches)?;
    let mut stage = tx.prepare_cached(
        "INSERT INTO staging (tenant, source, key, hash) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (tenant, source, key) DO UPDATE SET hash = excluded.hash",
    )?;
    let mut unstage = tx.prepare_cached("DELETE FROM staging WHERE tenant = ?1 AND source = ?2 AND key = ?3")?;
    for (key, hash) in &step.staged {
        match hash {
            Some(h) => stage.execute(params![run.tenant, run.source, key, h.as_slice()])?,
            None => unstage.execute(params![run.tenant, run.source, key])?,
        };
    }
    let done = step.last.is_some();
    tx.execute(
        "UPDATE chunks SET resume_key = ?3, done = ?4 WHERE run_id = ?1 AND chunk_no = ?2",
        params![run.id, step.chunk, step.resume, done],
    )?;
    let read = step.last.unwrap_or_default();
    let bytes: i64 = batches.iter().map(|b| b.body.len() as i64).sum();
    let all_done: bool = tx.query_row(
        "UPDATE runs SET inserts = inserts + ?2, updates = updates + ?9, deletes = deletes + ?10, \
         batches_total = batches_total + ?3, bytes = bytes + ?4, chunks_done = chunks_done + ?5, \
         rows_read = rows_read + ?2 + ?9 + ?6, bytes_read = bytes_read + ?7, updated_at = ?8 \
         WHERE id = ?1 RETURNING chunks_done >= chunks_total",
        params![
            run.id,
            step.ops[0],
            batches.len() as i64,
            bytes,
            done as i64,
            read.rows_read,
            read.bytes_read,
            now_ms(),
            step.ops[1],
            step.ops[2]
        ],
        |r| r.get(0),
    )?;
    if all_done {
        let delivered: bool = tx.query_row(
            "UPDATE runs SET state = 'batched', updated_at = ?2 WHERE id = ?1 RETURNING batches_delivered >= batches_total",
            params![run.id, now_ms()],
            |r| r.get(0),
        )?;
        super::staging::record_staged_schema(tx, run)?;
        if delivered {
            finish_run(tx, &run.id)?;
        }
    }
    Ok(Ok(StepCommitted {
        batches: batches.into_iter().map(|b| b.id).collect(),
        all_done,
    }))
}
