//! Batch: numbers the run's change records in key order and cuts them into batches with
//! deterministic ids, building each request body once. One push job per batch.

use super::cursor::Cursor;
use super::run_task;
use crate::ctx::Ctx;
use crate::domain::batching::{batch_id, BatchLimits, Cutter};
use crate::domain::job::{Job, Task};
use crate::domain::packing::Body;
use crate::errors::{StageError, StoreError};
use crate::ports::{BatchRecord, Run, RunState};
use crate::protocol::{BatchHeader, BodyBuilder, RECORD_OVERHEAD};
use tracing::Instrument;

/// Batches saved per store call (bodies are large; keep memory to a few batches).
const SAVE_EVERY: usize = 4;

/// Cuts batches once, then emits a push job for every batch not yet delivered. A run reaches
/// this stage merged when its merge job did not cut it too: another merge job of the host was
/// cutting, the cut failed, a crash came between the two, or `Ctx::cut_beside_merge` is off.
pub(super) async fn batch(ctx: &Ctx, job: &Job, run: &Run) -> Result<Vec<Job>, StageError> {
    match run.state {
        RunState::Merged => {
            if ctx.store.rewind_lost_delta(run).await? {
                return super::snapshot::chunk_jobs(ctx, job, run).await;
            }
            let cut = cut(ctx, run).await?;
            ctx.store.finish_batching(run, cut.batches, cut.bytes).await?;
        }
        RunState::Batched => {}
        _ => return Ok(Vec::new()),
    }
    pushes(ctx, job, run).await
}

/// A push job for every batch of the run not yet delivered.
pub(super) async fn pushes(ctx: &Ctx, job: &Job, run: &Run) -> Result<Vec<Job>, StageError> {
    let pending = ctx.store.pending_batches(&run.id).await?;
    Ok(push_jobs(
        job,
        run,
        pending.into_iter().map(|(batch_id, _, _)| batch_id),
    ))
}

/// A push job for each of these batches of the run.
pub(super) fn push_jobs(job: &Job, run: &Run, batch_ids: impl IntoIterator<Item = String>) -> Vec<Job> {
    batch_ids
        .into_iter()
        .map(|batch_id| {
            job.next(run_task(run, |tenant, source, run_id| Task::Push {
                tenant,
                source,
                run_id,
                batch_id,
            }))
        })
        .collect()
}

/// What a cut saved: the figures `finish_batching` records.
pub(super) struct Cut {
    /// Batches.
    pub(super) batches: i64,
    /// Their bodies' bytes as stored.
    pub(super) bytes: i64,
}

/// A batch of run `run_id` from its finished body: its id follows from its sequence range, and
/// its body is compressed once, here (the push sends it as it is: `packing::Body`).
pub(super) fn seal(run_id: &str, b: BodyBuilder) -> BatchRecord {
    let (first, last) = b.range();
    let id = batch_id(run_id, first, last);
    let rows = b.rows() as i64;
    BatchRecord {
        body: Body::gzip_of(&b.finish(&id)),
        id,
        run_id: run_id.to_owned(),
        seq_first: first as i64,
        seq_last: last as i64,
        rows,
        delivered: false,
    }
}

/// Numbers the run's delta and saves its batches. It leaves the run's state alone: the batches
/// become the run's once its delta is in staging too (`finish_batching`), so the cut can run
/// beside the merge, and a cut repeated after a crash saves the same batches again (ids and
/// bodies follow from the delta alone; a batch already stored is kept).
pub(super) async fn cut(ctx: &Ctx, run: &Run) -> Result<Cut, StageError> {
    let span = tracing::info_span!("batch.cut", otel.name = "batch.cut", changes = run.changes());
    cut_delta(ctx, run).instrument(span).await
}

async fn cut_delta(ctx: &Ctx, run: &Run) -> Result<Cut, StageError> {
    let config = ctx.config(run.config_version).await?;
    let (_, dest) = ctx.destination(&config, &run.tenant, run.config_version)?;
    let ds = config.source(&run.tenant, &run.source, run.config_version)?;
    let schema = run
        .schema
        .as_ref()
        .ok_or_else(|| StageError::NotFound(format!("run `{}` has no schema", run.id)))?;
    let header = BatchHeader {
        tenant: &run.tenant,
        dataset: ds.dataset_name(&run.source),
        run_id: &run.id,
        run_kind: run.kind,
        schema,
    };
    let mut cutter = Cutter::new(BatchLimits {
        max_rows: dest.batch_max_rows,
        max_bytes: dest.batch_max_bytes,
    });
    let mut changes = Cursor::new(ctx.store.changes(&run.id));
    let (mut seq, mut total, mut bytes) = (0u64, 0i64, 0i64);
    let mut body: Option<BodyBuilder> = None;
    let mut last_len = 0usize;
    let mut ready: Vec<BatchRecord> = Vec::new();
    let close = |b: BodyBuilder| seal(&run.id, b);
    while let Some(records) = changes.next().await? {
        for record in records.iter() {
            let (op, payload) = record.map_err(StoreError::from)?;
            seq += 1;
            if cutter.starts_new_batch(payload.len() + RECORD_OVERHEAD) {
                if let Some(b) = body.take() {
                    last_len = b.bytes();
                    ready.push(close(b));
                }
            }
            body.get_or_insert_with(|| {
                let mut b = BodyBuilder::new(&header);
                // The closing fields (batch id, range) fit in the margin.
                b.reserve(last_len + 256);
                b
            })
            .push(seq, op, payload);
            if ready.len() >= SAVE_EVERY {
                total += ready.len() as i64;
                bytes += ready.iter().map(|b| b.body.len() as i64).sum::<i64>();
                ctx.store.save_batches(std::mem::take(&mut ready)).await?;
            }
        }
    }
    // A delta shorter than the chunks counted was lost under the read (decision 0018): nothing is
    // marked cut, and the retry finds out what to read again.
    if seq as i64 != run.changes() {
        return Err(StoreError::Corrupt {
            what: "run delta",
            detail: format!("{seq} changes read, {} counted by the snapshot", run.changes()),
        }
        .into());
    }
    if let Some(b) = body.take() {
        ready.push(close(b));
    }
    total += ready.len() as i64;
    bytes += ready.iter().map(|b| b.body.len() as i64).sum::<i64>();
    ctx.store.save_batches(ready).await?;
    Ok(Cut { batches: total, bytes })
}
