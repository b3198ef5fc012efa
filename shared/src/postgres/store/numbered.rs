//! A step of a chunk of a run numbered at commit (decision 0025), in one transaction: the run's
//! count so far under its row lock, the step's batches numbered from it, its keys staged.

use super::batches::{finish_run, insert_batches};
use super::packs;
use super::prepared;
use super::staged::{analysed_partition, record_staged_schema};
use super::staging::sid;
use super::{now_ms, PgStore};
use crate::errors::StoreError;
use crate::ports::{NumberedStep, Run, StepCommitted};
use crate::postgres::pool::pg_err;

pub(super) async fn commit_step(store: &PgStore, run: &Run, step: NumberedStep) -> Result<StepCommitted, StoreError> {
    let (s, err) = (&store.s, pg_err("commit chunk step"));
    let superseded = || StoreError::chunk_superseded(&run.id, step.chunk, step.attempt);
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(&err)?;
    // The chunk's row first, as a reset takes it: a superseded attempt stops here.
    let held: bool = prepared::query_opt(
        &tx,
        &format!("SELECT attempt = $3 AND NOT done FROM {s}.chunks WHERE run_id = $1 AND chunk_no = $2 FOR UPDATE"),
        &[&run.id, &(step.chunk as i32), &step.attempt],
    )
    .await
    .map_err(&err)?
    .is_some_and(|r| r.get(0));
    if !held {
        return Err(superseded());
    }
    let id = sid(&*tx, s, &run.tenant, &run.source).await?;
    // Borrowed from the step, not copied: a copy of every hash was an allocation per row.
    let (mut keep, mut gone) = (Vec::<(&[u8], &[u8])>::new(), Vec::<&[u8]>::new());
    for (key, hash) in &step.staged {
        match hash {
            Some(h) => keep.push((key, h)),
            None => gone.push(key),
        }
    }
    // Staged before the run's row is locked: nothing here depends on the numbering.
    let mut staged = packs::stage(&tx, s, id, &mut keep).await?;
    if !gone.is_empty() {
        // Probing the primary key, whatever the statistics of a staging just filled say.
        tx.batch_execute("SET LOCAL enable_bitmapscan = off; SET LOCAL enable_seqscan = off")
            .await
            .map_err(&err)?;
        let covered = packs::Coverage::of(&tx, s, id).await?;
        staged += packs::unstage(&tx, s, id, &covered, &gone).await?;
    }
    let done = step.last.is_some();
    prepared::execute(
        &tx,
        &format!("UPDATE {s}.chunks SET resume_key = $3, done = $4 WHERE run_id = $1 AND chunk_no = $2"),
        &[&run.id, &(step.chunk as i32), &step.resume, &done],
    )
    .await
    .map_err(&err)?;
    // The run's row last, held only while the batches are numbered, compressed and saved: its
    // lock makes the count and the batches numbered from it this step's alone, and every other
    // step of the run and every delivery of its batches waits for it.
    let Some(base) = prepared::query_opt(
        &tx,
        &format!(
            "SELECT inserts + updates + deletes FROM {s}.runs WHERE id = $1 AND state = 'snapshotting' FOR UPDATE"
        ),
        &[&run.id],
    )
    .await
    .map_err(&err)?
    .map(|r| r.get::<_, i64>(0)) else {
        return Err(superseded());
    };
    let batches = (step.bodies)(base)?;
    insert_batches(&tx, s, &batches).await?;
    let read = step.last.unwrap_or_default();
    let bytes: i64 = batches.iter().map(|b| b.body.len() as i64).sum();
    let row = prepared::query_one(
        &tx,
        &format!(
            "UPDATE {s}.runs SET inserts = inserts + $2, updates = updates + $9, deletes = deletes + $10, \
             batches_total = batches_total + $3, bytes = bytes + $4, chunks_done = chunks_done + $5, \
             rows_read = rows_read + $2 + $9 + $6, bytes_read = bytes_read + $7, updated_at = $8 \
             WHERE id = $1 RETURNING chunks_done >= chunks_total, inserts + updates + deletes"
        ),
        &[
            &run.id,
            &step.ops[0],
            &(batches.len() as i64),
            &bytes,
            &(done as i64),
            &read.rows_read,
            &read.bytes_read,
            &now_ms(),
            &step.ops[1],
            &step.ops[2],
        ],
    )
    .await
    .map_err(&err)?;
    let (all_done, changes): (bool, i64) = (row.get(0), row.get(1));
    let mut part = None;
    if all_done {
        let delivered: bool = prepared::query_one(
            &tx,
            &format!(
                "UPDATE {s}.runs SET state = 'batched', updated_at = $2 WHERE id = $1 \
                 RETURNING batches_delivered >= batches_total"
            ),
            &[&run.id, &now_ms()],
        )
        .await
        .map_err(&err)?
        .get(0);
        record_staged_schema(&tx, s, run).await?;
        part = analysed_partition(&tx, s, id, changes as u64).await?;
        if delivered {
            finish_run(&tx, s, &run.id).await?;
        }
    }
    tx.commit().await.map_err(&err)?;
    store.count(3 + batches.len() as u64 + staged);
    if let Some(part) = part {
        c.batch_execute(&format!("ANALYZE {part}")).await.map_err(&err)?;
    }
    Ok(StepCommitted {
        batches: batches.into_iter().map(|b| b.id).collect(),
        all_done,
    })
}
