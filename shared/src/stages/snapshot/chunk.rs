//! One chunk job: diff the chunk's key range and hand its changes on — as delta segments whose
//! last chunk queues the merge, or, for a run numbered at commit, as batches whose pushes it
//! queues itself (decision 0025).

use super::numbered::StepWriter;
use super::{full, merge_job, remote, tracked, watermark, DeltaWriter, SegmentWriter};
use crate::ctx::Ctx;
use crate::domain::batching::BatchLimits;
use crate::domain::config::DiffMode;
use crate::domain::job::Job;
use crate::errors::{StageError, StoreError};
use crate::ports::{ChunkStats, KeyRange, Run, RunState};
use crate::stages::batch::{push_jobs, pushes};
use tracing::Instrument;

/// What a superseded attempt at a chunk does: nothing more. The later attempt writes the
/// chunk's delta and, if last, queues the merge; retrying would only supersede it in turn.
fn superseded(run: &Run, chunk_no: u32, what: &str) -> Vec<Job> {
    tracing::warn!(run = %run.id, chunk = chunk_no, "{what}: a later attempt took the chunk over; this one stops");
    Vec::new()
}

/// Whether the run's chunks number their own batches (decision 0025).
fn numbered(run: &Run) -> bool {
    run.mode.as_ref().is_some_and(|m| m.numbered)
}

/// What a chunk job of a run numbered at commit does when its chunk is done already: a worker
/// may have died between the commit and the hand-off of its pushes, and this delivery is the
/// only one that can queue them. A push of a batch delivered or queued already does no harm.
async fn hand_off(ctx: &Ctx, job: &Job, run: &Run) -> Result<Vec<Job>, StageError> {
    if run.state == RunState::Batched {
        crate::stages::merge::move_cursor(ctx, run).await?;
    }
    pushes(ctx, job, run).await
}

/// Diffs one chunk and hands its changes on.
pub(in crate::stages) async fn chunk(ctx: &Ctx, job: &Job, run: &Run, chunk_no: u32) -> Result<Vec<Job>, StageError> {
    match run.state {
        RunState::Snapshotting => {}
        RunState::Snapshotted => return Ok(vec![merge_job(job, run)]),
        RunState::Batched if numbered(run) => return hand_off(ctx, job, run).await,
        _ => return Ok(Vec::new()), // a late duplicate: the run has moved on
    }
    let find = |chunks: Vec<crate::ports::Chunk>| {
        chunks
            .into_iter()
            .find(|c| c.no == chunk_no)
            .ok_or_else(|| StageError::NotFound(format!("run `{}` has no chunk {chunk_no}", run.id)))
    };
    let chunk = find(ctx.store.chunks(&run.id).await?)?;
    if chunk.done {
        return if numbered(run) {
            hand_off(ctx, job, run).await
        } else {
            Ok(Vec::new())
        };
    }
    let schema = run
        .schema
        .clone()
        .ok_or_else(|| StageError::NotFound(format!("run `{}` was not planned", run.id)))?;
    let config = ctx.config(run.config_version).await?;
    let (src, spec, ds) = ctx.source_for(&config, &run.tenant, &run.source, run.config_version)?;

    // A chunk replaces only its own delta: clear what an interrupted attempt left. The new
    // attempt's number fences an earlier attempt still running (a job delivered twice, or
    // redelivered while a stalled worker held it): its writes are refused from now on.
    let Some(attempt) = ctx.store.reset_chunk(&run.id, &chunk).await? else {
        return Ok(Vec::new()); // done meanwhile by another delivery of this job
    };
    let (mut delta, range, resumed) = if numbered(run) {
        // Read only now that this attempt holds the chunk: no earlier attempt commits after it.
        let resume = find(ctx.store.chunks(&run.id).await?)?.resume;
        let (_, dest) = ctx.destination(&config, &run.tenant, run.config_version)?;
        let limits = BatchLimits {
            max_rows: dest.batch_max_rows,
            max_bytes: dest.batch_max_bytes,
        };
        let dataset = ds.dataset_name(&run.source).to_owned();
        let writer = StepWriter::new(ctx.store.clone(), job, run, dataset, limits, chunk_no, attempt);
        let range = KeyRange {
            lo: resume.clone().or(chunk.range.lo),
            hi: chunk.range.hi,
        };
        (DeltaWriter::Numbered(Box::new(writer)), range, resume.is_some())
    } else {
        let writer = SegmentWriter::new(ctx, &run.id, chunk_no, attempt);
        (DeltaWriter::Segments(writer), chunk.range, false)
    };
    let mode = run.mode.clone().unwrap_or_default();
    let read_span = tracing::info_span!("source.read", otel.name = "source.read", chunk = chunk_no,
        mode = ?mode.mode, rows_read = tracing::field::Empty, bytes_read = tracing::field::Empty,
        inserts = tracing::field::Empty, updates = tracing::field::Empty, deletes = tracing::field::Empty);
    let out = &mut delta;
    let stats = async {
        Ok::<_, StageError>(match mode.mode {
            DiffMode::RemoteHash => remote::diff_chunk(ctx, run, &schema, src.as_ref(), &spec, &range, out).await?,
            DiffMode::Watermark if !mode.full => {
                let column = ds.watermark_column.clone().unwrap_or_default();
                watermark::diff_since(
                    ctx,
                    run,
                    &schema,
                    src.as_ref(),
                    &spec,
                    &column,
                    mode.from.as_deref(),
                    out,
                )
                .await?
            }
            DiffMode::ChangeTracking if !mode.full => {
                let since =
                    mode.from.as_deref().and_then(|v| v.parse().ok()).ok_or_else(|| {
                        StageError::NotFound(format!("run `{}` has no change-tracking version", run.id))
                    })?;
                tracked::diff_changes(ctx, run, &schema, src.read_changes(&spec, &schema, since), out).await?
            }
            _ => {
                let rows = src.read(&spec, &schema, &range);
                full::diff_chunk(ctx, run, &schema, rows, &range, out).await?
            }
        })
    }
    .instrument(read_span.clone())
    .await;
    let stats = match stats {
        Err(StageError::Store(StoreError::Superseded { what })) => return Ok(superseded(run, chunk_no, &what)),
        Err(e) => {
            if let DeltaWriter::Numbered(w) = delta {
                w.settle().await;
            }
            return Err(e);
        }
        Ok(stats) => stats,
    };
    for (field, n) in [
        ("rows_read", stats.rows_read),
        ("bytes_read", stats.bytes_read),
        ("inserts", stats.inserts),
        ("updates", stats.updates),
        ("deletes", stats.deletes),
    ] {
        read_span.record(field, n);
    }
    let next = match hand_on(ctx, job, run, chunk_no, attempt, delta, stats, resumed).await {
        Err(StageError::Store(StoreError::Superseded { what })) => return Ok(superseded(run, chunk_no, &what)),
        other => other?,
    };
    crate::metrics::add("signals_rows_read_total", &[], stats.rows_read as f64);
    crate::metrics::add("signals_source_bytes_read_total", &[], stats.bytes_read as f64);
    for (op, n) in [
        ("insert", stats.inserts),
        ("update", stats.updates),
        ("delete", stats.deletes),
    ] {
        crate::metrics::add("signals_changes_total", &[("op", op)], n as f64);
    }
    crate::crash::point("after_chunk_delta");
    Ok(next)
}

/// Finishes the chunk's writes and returns the jobs that follow: the merge after the run's
/// last chunk of segments; the pushes of the batches a numbered chunk saved — all the run's
/// undelivered ones if an earlier attempt had committed steps of it, whose pushes may not
/// have been queued.
#[allow(clippy::too_many_arguments)]
async fn hand_on(
    ctx: &Ctx,
    job: &Job,
    run: &Run,
    chunk_no: u32,
    attempt: i64,
    delta: DeltaWriter,
    stats: ChunkStats,
    resumed: bool,
) -> Result<Vec<Job>, StageError> {
    match delta {
        DeltaWriter::Segments(w) => {
            w.finish().await?;
            let all_done = ctx.store.finish_chunk(&run.id, chunk_no, attempt, stats).await?;
            Ok(if all_done {
                vec![merge_job(job, run)]
            } else {
                Vec::new()
            })
        }
        DeltaWriter::Numbered(w) => {
            let (saved, all_done) = w.finish(stats).await?;
            if all_done {
                crate::stages::merge::move_cursor(ctx, run).await?;
            }
            if resumed {
                pushes(ctx, job, run).await
            } else {
                Ok(push_jobs(job, run, saved))
            }
        }
    }
}
