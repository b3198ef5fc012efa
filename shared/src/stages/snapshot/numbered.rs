//! A chunk of a run numbered at commit (decision 0025): its changes (inserts, as nothing was
//! staged when the run was planned) are held until a few whole batches have gathered, then
//! committed in one store transaction that numbers them from the run's count so far, saves their
//! bodies and stages their keys. No delta segments, no merge and no cut: the pushes of a step
//! are queued as soon as it commits (where the host lends a queue, `stages::early`), those of
//! the chunk's last step when the job ends, after the run's cursor has moved.

use crate::domain::batching::{BatchLimits, Cutter};
use crate::domain::diff::Op;
use crate::domain::encoding::RowHash;
use crate::domain::job::Job;
use crate::errors::{StageError, StoreError};
use crate::ports::{ChunkStats, NumberedStep, Run, StepCommitted, Store};
use crate::protocol::{BatchHeader, BodyBuilder, RECORD_OVERHEAD};
use std::sync::Arc;
use tracing::Instrument;

/// A step commits at the first batch boundary after it holds this many whole batches or
/// [`STEP_BYTES`] of JSON: a job holds at most two steps (one gathering, one committing) and
/// the batch being filled, and each step's gzip holds the run's row lock for a few batches only.
const STEP_BATCHES: usize = 4;
/// See [`STEP_BATCHES`].
const STEP_BYTES: usize = 4 << 20;

/// Changes gathered since the last commit: whole batches, then the batch being filled.
#[derive(Default)]
struct Held {
    /// Every change's row JSON, one after another.
    payloads: String,
    /// Where each change's JSON ends in `payloads`.
    ends: Vec<usize>,
    /// Each change's kind.
    ops: Vec<Op>,
    /// Each change's key and hash, for staging (`None`: a delete).
    staged: Vec<(Vec<u8>, Option<RowHash>)>,
    /// The index of the first change of every batch after the first.
    starts: Vec<usize>,
}

impl Held {
    /// Empty, with room for an eighth more than `last` held (steps differ by their rows' sizes):
    /// a step's buffers grown by doubling from empty copied their bytes again on every growth.
    fn sized_like(last: &Held) -> Held {
        let room = |n: usize| n + n / 8;
        Held {
            payloads: String::with_capacity(room(last.payloads.len())),
            ends: Vec::with_capacity(room(last.ends.len())),
            ops: Vec::with_capacity(room(last.ops.len())),
            staged: Vec::with_capacity(room(last.staged.len())),
            starts: Vec::with_capacity(room(last.starts.len())),
        }
    }
}

/// What a step's bodies are built from, moved into the store's transaction.
struct Bodies {
    run: Run,
    dataset: String,
    ops: Vec<Op>,
    payloads: String,
    ends: Vec<usize>,
    starts: Vec<usize>,
}

impl Bodies {
    /// The step's batches numbered from `base + 1`.
    fn number(self, base: i64) -> Vec<crate::ports::BatchRecord> {
        let schema = self.run.schema.clone().unwrap_or_default();
        let header = BatchHeader {
            tenant: &self.run.tenant,
            dataset: &self.dataset,
            run_id: &self.run.id,
            run_kind: self.run.kind,
            schema: &schema,
        };
        let mut bounds = Vec::with_capacity(self.starts.len() + 2);
        bounds.push(0);
        bounds.extend(&self.starts);
        bounds.push(self.ends.len());
        let mut seq = base as u64;
        let mut out = Vec::with_capacity(bounds.len() - 1);
        for w in bounds.windows(2) {
            let (first, last) = (w[0], w[1]);
            let from = if first == 0 { 0 } else { self.ends[first - 1] };
            let mut body = BodyBuilder::new(&header);
            body.reserve(self.ends[last - 1] - from + (last - first) * RECORD_OVERHEAD + 256);
            let mut at = from;
            for (&end, &op) in self.ends[first..last].iter().zip(&self.ops[first..last]) {
                seq += 1;
                body.push(seq, op, &self.payloads[at..end]);
                at = end;
            }
            out.push(crate::stages::batch::seal(&self.run.id, body));
        }
        out
    }
}

/// Gathers a chunk's changes and commits them in steps of whole batches, one commit in flight
/// while the read goes on.
pub(super) struct StepWriter {
    store: Arc<dyn Store>,
    /// The chunk's job, which the pushes follow.
    job: Job,
    run: Run,
    dataset: String,
    chunk: u32,
    attempt: i64,
    cutter: Cutter,
    held: Held,
    /// The step committing, and whether it is the chunk's last.
    in_flight: Option<(tokio::task::JoinHandle<Result<StepCommitted, StoreError>>, bool)>,
    /// Ids of the batches this attempt's steps saved whose pushes are not queued yet.
    committed: Vec<String>,
    /// Rows of the source this attempt's steps count as read (their inserts and updates).
    read: i64,
}

impl StepWriter {
    pub(super) fn new(
        store: Arc<dyn Store>,
        job: &Job,
        run: &Run,
        dataset: String,
        limits: BatchLimits,
        chunk: u32,
        attempt: i64,
    ) -> StepWriter {
        StepWriter {
            store,
            job: job.clone(),
            run: run.clone(),
            dataset,
            chunk,
            attempt,
            cutter: Cutter::new(limits),
            held: Held::default(),
            in_flight: None,
            committed: Vec::new(),
            read: 0,
        }
    }

    /// Adds a change; commits the whole batches held before it once a step's worth has gathered
    /// and this change starts a new batch (its key is then where a later attempt reads on from).
    /// Every change of such a run is an insert unless a repair invalidated staged keys of the
    /// data source while it ran; those are numbered and staged like any other change.
    pub(super) async fn push(
        &mut self,
        op: Op,
        key: &[u8],
        hash: Option<&RowHash>,
        payload: &str,
    ) -> Result<(), StageError> {
        if self.cutter.starts_new_batch(payload.len() + RECORD_OVERHEAD) && !self.held.ends.is_empty() {
            if self.held.starts.len() + 1 >= STEP_BATCHES || self.held.payloads.len() >= STEP_BYTES {
                self.commit(Some(key.to_vec()), None).await?;
            } else {
                self.held.starts.push(self.held.ends.len());
            }
        }
        self.held.payloads.push_str(payload);
        self.held.ends.push(self.held.payloads.len());
        self.held.ops.push(op);
        // A delete's marker carries no hash: its key leaves staging.
        self.held
            .staged
            .push((key.to_vec(), hash.copied().filter(|_| op != Op::Delete)));
        Ok(())
    }

    /// Commits what is held, waiting for the step before to commit first: steps of one chunk
    /// commit in order, so a resume key never passes a change not yet committed.
    async fn commit(&mut self, resume: Option<Vec<u8>>, last: Option<ChunkStats>) -> Result<(), StageError> {
        self.wait().await?;
        let held = std::mem::take(&mut self.held);
        if last.is_none() {
            self.held = Held::sized_like(&held);
        }
        let mut ops = [0i64; 3];
        for op in &held.ops {
            ops[op_index(*op)] += 1;
        }
        self.read += ops[0] + ops[1];
        let bodies = Bodies {
            run: self.run.clone(),
            dataset: self.dataset.clone(),
            ops: held.ops,
            payloads: held.payloads,
            ends: held.ends,
            starts: held.starts,
        };
        let step = NumberedStep {
            chunk: self.chunk,
            attempt: self.attempt,
            ops,
            staged: held.staged,
            resume,
            last,
            bodies: Box::new(move |base| {
                Ok(if bodies.ends.is_empty() {
                    Vec::new()
                } else {
                    bodies.number(base)
                })
            }),
        };
        let (store, run) = (self.store.clone(), self.run.clone());
        let changes: i64 = ops.iter().sum();
        let span = tracing::info_span!("store.commit_step", otel.name = "store.commit_step", changes);
        let handle = tokio::spawn(async move { store.commit_step(&run, step).await }.instrument(span));
        self.in_flight = Some((handle, last.is_some()));
        Ok(())
    }

    async fn wait(&mut self) -> Result<Option<StepCommitted>, StageError> {
        let Some((h, last)) = self.in_flight.take() else {
            return Ok(None);
        };
        let step = h.await.map_err(|e| StoreError::Db {
            context: "commit chunk step",
            detail: format!("the commit task ended: {e}"),
        })??;
        crate::crash::point("after_step_commit");
        // Pushed while the chunk reads on: the batches are committed, so their pushes are
        // harmless whatever becomes of this attempt. The last step's wait for the job's end.
        let queued = !last && {
            let jobs = crate::stages::batch::push_jobs(&self.job, &self.run, step.batches.iter().cloned());
            crate::stages::early::queue_now(jobs).await.is_empty()
        };
        if !queued {
            self.committed.extend(step.batches.iter().cloned());
        }
        Ok(Some(step))
    }

    /// Lets a step already committing finish when the diff fails part way: what it commits is
    /// the chunk's progress (its batches and resume key), kept for the next attempt rather than
    /// read again. Its own failure is left to that attempt (it is fenced like any other).
    pub(super) async fn settle(mut self) {
        if let Err(e) = self.wait().await {
            tracing::warn!(run = %self.run.id, chunk = self.chunk, error = %e, "a step's commit failed after its chunk's read did");
        }
    }

    /// Commits the rest as the chunk's last step, with the attempt's read figures; returns the
    /// ids of the batches this attempt saved whose pushes are not queued yet, and whether the
    /// chunk was the run's last.
    pub(super) async fn finish(mut self, stats: ChunkStats) -> Result<(Vec<String>, bool), StageError> {
        // The steps count their inserts and updates as rows read; the last adds what else was.
        let held = self.held.ops.iter().filter(|op| **op != Op::Delete).count() as i64;
        let beyond = stats.rows_read - self.read - held;
        let last = ChunkStats {
            rows_read: beyond,
            bytes_read: stats.bytes_read,
            ..ChunkStats::default()
        };
        self.commit(None, Some(last)).await?;
        let last = self.wait().await?.unwrap_or_default();
        Ok((std::mem::take(&mut self.committed), last.all_done))
    }
}

/// Where an op's count goes in `NumberedStep::ops`.
fn op_index(op: Op) -> usize {
    match op {
        Op::Insert => 0,
        Op::Update => 1,
        Op::Delete => 2,
    }
}

impl Drop for StepWriter {
    /// A diff that failed part way must not leave a commit running behind the next attempt.
    fn drop(&mut self) {
        if let Some((h, _)) = self.in_flight.take() {
            h.abort();
        }
    }
}
