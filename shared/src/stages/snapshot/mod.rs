//! Snapshot: plan a run's key-range chunks (and how it finds changes), then diff each chunk —
//! the ordinary diff (`full`), push-down hashing (`remote`), a watermark read (`watermark`) or a
//! change-table read (`tracked`) —
//! writing only the chunk's delta. The last chunk to finish emits the merge job.

mod chunk;
mod full;
mod numbered;
mod plan;
mod remote;
mod tracked;
mod watermark;

pub(super) use chunk::chunk;
pub(super) use plan::plan;

use super::run_task;
use crate::ctx::Ctx;
use crate::domain::diff::Op;
use crate::domain::encoding::RowHash;
use crate::domain::job::{Job, Task};
use crate::domain::json::write_value;
use crate::domain::segment::Encoder;
use crate::domain::value::Value;
use crate::errors::StageError;
use crate::ports::{DeltaRow, Run};
use tracing::Instrument;

/// Delta rows written per store call.
pub(super) const DELTA_FLUSH: usize = 2_000;

/// Where a chunk's diff puts its changes: packed delta segments for the merge and cut, or, for
/// a run numbered at commit, steps of whole batches (decision 0025).
enum DeltaWriter {
    /// Delta segments.
    Segments(SegmentWriter),
    /// Steps numbered and cut at commit (boxed: it carries the run it numbers).
    Numbered(Box<numbered::StepWriter>),
}

impl DeltaWriter {
    /// Adds a row.
    pub(super) async fn push(&mut self, row: DeltaRow) -> Result<(), StageError> {
        self.push_parts(row.op, &row.key, row.hash.as_ref(), &row.payload).await
    }

    /// Adds a row from borrowed parts: the ordinary diff writes every row's JSON into one
    /// reused buffer, which is copied here.
    pub(super) async fn push_parts(
        &mut self,
        op: Op,
        key: &[u8],
        hash: Option<&RowHash>,
        payload: &str,
    ) -> Result<(), StageError> {
        match self {
            DeltaWriter::Segments(w) => w.push_parts(op, key, hash, payload).await,
            DeltaWriter::Numbered(w) => w.push(op, key, hash, payload).await,
        }
    }

    /// Adds rows gathered elsewhere (the push-down and watermark diffs collect them in steps).
    pub(super) async fn extend(&mut self, rows: &mut Vec<DeltaRow>) -> Result<(), StageError> {
        for r in rows.drain(..) {
            self.push(r).await?;
        }
        Ok(())
    }
}

/// Collects a chunk's delta rows and writes them as packed segments, one write in flight while
/// the diff goes on: reading, hashing and encoding overlap with the store's write, and memory
/// stays at two segments.
struct SegmentWriter {
    store: std::sync::Arc<dyn crate::ports::Store>,
    run_id: String,
    chunk_no: u32,
    attempt: i64,
    segment: Encoder,
    segments: u32,
    in_flight: Option<tokio::task::JoinHandle<Result<(), crate::errors::StoreError>>>,
}

impl SegmentWriter {
    /// A writer for attempt `attempt` at chunk `chunk_no` (`StagingStore::reset_chunk`).
    fn new(ctx: &Ctx, run_id: &str, chunk_no: u32, attempt: i64) -> SegmentWriter {
        SegmentWriter {
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
    async fn push_parts(
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
    async fn finish(mut self) -> Result<(), StageError> {
        self.flush().await?;
        self.wait().await
    }
}

impl Drop for SegmentWriter {
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
