//! Snapshot: plan a run's key-range chunks (and how it finds changes), then diff each chunk —
//! the ordinary diff (`full`), push-down hashing (`remote`), a watermark read (`watermark`) or a
//! change-table read (`tracked`) —
//! writing only the chunk's delta. The last chunk to finish emits the merge job.

mod full;
mod plan;
mod remote;
mod tracked;
mod watermark;

pub(super) use plan::plan;

use super::run_task;
use crate::ctx::Ctx;
use crate::domain::config::DiffMode;
use crate::domain::diff::Op;
use crate::domain::encoding::RowHash;
use crate::domain::job::{Job, Task};
use crate::domain::json::write_value;
use crate::domain::segment::Encoder;
use crate::domain::value::Value;
use crate::errors::{StageError, StoreError};
use crate::ports::{DeltaRow, Run, RunState};
use tracing::Instrument;

/// Delta rows written per store call.
pub(super) const DELTA_FLUSH: usize = 2_000;

/// Collects a chunk's delta rows and writes them as packed segments, one write in flight while
/// the diff goes on: reading, hashing and encoding overlap with the store's write, and memory
/// stays at two segments.
pub(super) struct DeltaWriter {
    store: std::sync::Arc<dyn crate::ports::Store>,
    run_id: String,
    chunk_no: u32,
    attempt: i64,
    segment: Encoder,
    segments: u32,
    in_flight: Option<tokio::task::JoinHandle<Result<(), crate::errors::StoreError>>>,
}

impl DeltaWriter {
    /// A writer for attempt `attempt` at chunk `chunk_no` (`StagingStore::reset_chunk`).
    pub(super) fn new(ctx: &Ctx, run_id: &str, chunk_no: u32, attempt: i64) -> DeltaWriter {
        DeltaWriter {
            store: ctx.store.clone(),
            run_id: run_id.to_owned(),
            chunk_no,
            attempt,
            segment: Encoder::with_capacity(DELTA_FLUSH * 256),
            segments: 0,
            in_flight: None,
        }
    }

    /// Adds a row; starts a bulk write once a flush's worth has gathered.
    pub(super) async fn push(&mut self, row: DeltaRow) -> Result<(), StageError> {
        self.push_parts(row.op, &row.key, row.hash.as_ref(), &row.payload).await
    }

    /// Adds a row from borrowed parts: the ordinary diff writes every row's JSON into one
    /// reused buffer, which is copied into the segment here.
    pub(super) async fn push_parts(
        &mut self,
        op: Op,
        key: &[u8],
        hash: Option<&RowHash>,
        payload: &str,
    ) -> Result<(), StageError> {
        self.segment.push(op, key, hash, payload);
        if self.segment.rows() >= DELTA_FLUSH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Adds rows gathered elsewhere (the push-down and watermark diffs collect them in steps).
    pub(super) async fn extend(&mut self, rows: &mut Vec<DeltaRow>) -> Result<(), StageError> {
        for r in rows.drain(..) {
            self.push(r).await?;
        }
        Ok(())
    }

    async fn wait(&mut self) -> Result<(), StageError> {
        if let Some(h) = self.in_flight.take() {
            h.await.map_err(|e| crate::errors::StoreError::Db {
                context: "write delta",
                detail: format!("the write task ended: {e}"),
            })??;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), StageError> {
        self.wait().await?;
        if self.segment.rows() == 0 {
            return Ok(());
        }
        // The next segment starts with room for one like this one: no regrowth copies.
        let next = Encoder::with_capacity(self.segment.bytes());
        let segment = std::mem::replace(&mut self.segment, next);
        let rows = segment.rows() as i64;
        let span = tracing::info_span!("store.bulk_write", otel.name = "store.bulk_write", rows);
        let (store, run_id, chunk_no, attempt, seg) = (
            self.store.clone(),
            self.run_id.clone(),
            self.chunk_no,
            self.attempt,
            self.segments,
        );
        self.segments += 1;
        self.in_flight = Some(tokio::spawn(
            async move {
                // Packing runs here too, beside the diff rather than in its way.
                let body = segment.finish();
                store.write_segment(&run_id, chunk_no, attempt, seg, rows, body).await
            }
            .instrument(span),
        ));
        Ok(())
    }

    /// Writes what is left and waits until every row is in the store.
    pub(super) async fn finish(mut self) -> Result<(), StageError> {
        self.flush().await?;
        self.wait().await
    }
}

impl Drop for DeltaWriter {
    /// A diff that failed part way must not leave a write running behind the next attempt's
    /// reset of the chunk.
    fn drop(&mut self) {
        if let Some(h) = self.in_flight.take() {
            h.abort();
        }
    }
}

pub(super) async fn chunk_jobs(ctx: &Ctx, job: &Job, run: &Run) -> Result<Vec<Job>, StageError> {
    Ok(ctx
        .store
        .chunks(&run.id)
        .await?
        .into_iter()
        .filter(|c| !c.done)
        .map(|c| {
            job.next(run_task(run, |tenant, source, run_id| Task::Chunk {
                tenant,
                source,
                run_id,
                chunk: c.no,
            }))
        })
        .collect())
}

pub(super) fn merge_job(job: &Job, run: &Run) -> Job {
    job.next(run_task(run, |tenant, source, run_id| Task::Merge {
        tenant,
        source,
        run_id,
    }))
}

/// The delta row for a key staging has and the source no longer does: its payload is the key
/// as an object of its columns.
pub(super) fn delete_marker(
    key: Vec<u8>,
    key_names: &[&str],
) -> Result<crate::ports::DeltaRow, crate::errors::SourceError> {
    let values = crate::domain::key::decode_key(&key)?;
    let mut payload = String::new();
    crate::domain::json::write_object(&mut payload, key_names.iter().copied(), &values);
    Ok(crate::ports::DeltaRow {
        key,
        op: crate::domain::diff::Op::Delete,
        hash: None,
        payload,
    })
}

/// A key as JSON, for error messages.
pub(super) fn render_key(values: &[&Value]) -> String {
    let mut s = String::from("[");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write_value(&mut s, v);
    }
    s.push(']');
    s
}

/// What a superseded attempt at a chunk does: nothing more. The later attempt writes the
/// chunk's delta and, if last, queues the merge; retrying would only supersede it in turn.
fn superseded(run: &Run, chunk_no: u32, what: &str) -> Vec<Job> {
    tracing::warn!(run = %run.id, chunk = chunk_no, "{what}: a later attempt took the chunk over; this one stops");
    Vec::new()
}

/// Diffs one chunk and writes its delta; the last chunk to finish emits the merge job.
pub(super) async fn chunk(ctx: &Ctx, job: &Job, run: &Run, chunk_no: u32) -> Result<Vec<Job>, StageError> {
    match run.state {
        RunState::Snapshotting => {}
        RunState::Snapshotted => return Ok(vec![merge_job(job, run)]),
        _ => return Ok(Vec::new()), // a late duplicate: the run has moved on
    }
    let chunk = ctx
        .store
        .chunks(&run.id)
        .await?
        .into_iter()
        .find(|c| c.no == chunk_no)
        .ok_or_else(|| StageError::NotFound(format!("run `{}` has no chunk {chunk_no}", run.id)))?;
    if chunk.done {
        return Ok(Vec::new());
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
    let delta = DeltaWriter::new(ctx, &run.id, chunk_no, attempt);
    let mode = run.mode.clone().unwrap_or_default();
    let read_span = tracing::info_span!("source.read", otel.name = "source.read", chunk = chunk_no,
        mode = ?mode.mode, rows_read = tracing::field::Empty, bytes_read = tracing::field::Empty,
        inserts = tracing::field::Empty, updates = tracing::field::Empty, deletes = tracing::field::Empty);
    let stats = async {
        Ok::<_, StageError>(match mode.mode {
            DiffMode::RemoteHash => {
                remote::diff_chunk(ctx, run, &schema, src.as_ref(), &spec, &chunk.range, delta).await?
            }
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
                    delta,
                )
                .await?
            }
            DiffMode::ChangeTracking if !mode.full => {
                let since =
                    mode.from.as_deref().and_then(|v| v.parse().ok()).ok_or_else(|| {
                        StageError::NotFound(format!("run `{}` has no change-tracking version", run.id))
                    })?;
                tracked::diff_changes(ctx, run, &schema, src.read_changes(&spec, &schema, since), delta).await?
            }
            _ => {
                let rows = src.read(&spec, &schema, &chunk.range);
                full::diff_chunk(ctx, run, &schema, rows, &chunk.range, delta).await?
            }
        })
    }
    .instrument(read_span.clone())
    .await;
    let stats = match stats {
        Err(StageError::Store(StoreError::Superseded { what })) => return Ok(superseded(run, chunk_no, &what)),
        other => other?,
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
    let all_done = match ctx.store.finish_chunk(&run.id, chunk_no, attempt, stats).await {
        Err(StoreError::Superseded { what }) => return Ok(superseded(run, chunk_no, &what)),
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
    Ok(if all_done {
        vec![merge_job(job, run)]
    } else {
        Vec::new()
    })
}
