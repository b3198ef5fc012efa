//! Store ports: config versions, runs and chunks, staging and deltas, batches and the delivery
//! ledger, dead letters (their records: `records.rs`).

use super::records::*;
use super::{Batches, KeyRange, SourceClock, StageTiming};
use crate::domain::{encoding::RowHash, job::Job, schema::TableSchema};
use crate::errors::StoreError;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;

/// Config versions.
#[async_trait]
pub trait ConfigStore: Send + Sync {
    /// Stores a new version unless identical to the latest; returns (version, was_new).
    async fn apply_config(&self, toml: &str, origin: &str) -> Result<(i64, bool), StoreError>;
    /// The latest version and its TOML.
    async fn latest_config(&self) -> Result<Option<(i64, String)>, StoreError>;
    /// The latest version alone: every push asks, and a configuration of many tenants is large.
    async fn latest_config_version(&self) -> Result<Option<i64>, StoreError>;
    /// A given version's TOML.
    async fn config_version(&self, version: i64) -> Result<Option<String>, StoreError>;
}

/// Runs and their chunks.
#[async_trait]
pub trait RunStore: Send + Sync {
    /// Opens a run unless one is active for the data source (then `None`).
    async fn open_run(
        &self,
        tenant: &str,
        source: &str,
        kind: RunKind,
        config_version: i64,
    ) -> Result<Option<Run>, StoreError>;
    /// A run by id, scoped to its tenant.
    async fn run(&self, tenant: &str, run_id: &str) -> Result<Option<Run>, StoreError>;
    /// Runs, newest first, optionally for one tenant.
    async fn runs(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<Run>, StoreError>;
    /// When the latest run of each data source of a tenant started, and whether one is active.
    async fn source_clocks(&self, tenant: &str) -> Result<Vec<(String, DateTime<Utc>, bool)>, StoreError>;
    /// `planning → snapshotting`: records shape, chunks and config version; false if already planned.
    async fn plan_run(&self, run: &Run, plan: &Plan, chunks: &[KeyRange]) -> Result<bool, StoreError>;
    /// The run's chunks.
    async fn chunks(&self, run_id: &str) -> Result<Vec<Chunk>, StoreError>;
    /// Records an error against a run (shown in status): a deferral to now, which changes no
    /// due time the run already has.
    async fn note_error(&self, run_id: &str, error: &str) -> Result<(), StoreError> {
        self.defer_run(run_id, error, Utc::now()).await
    }
    /// Records why the run's next job waits (shown in status) and until when — a retry's backoff,
    /// a destination's `Retry-After`, a sync window. The run counts as worked on until the latest
    /// such time of any of its jobs (a short retry of one push does not cut a long wait of
    /// another short), so the scheduler does not revive a run that only waits where it cannot see
    /// the job (SQS, Azure: decision 0023).
    async fn defer_run(&self, run_id: &str, reason: &str, until: DateTime<Utc>) -> Result<(), StoreError>;
    /// Records the latest verification of a data source (`in_sync` unknown while scheduled).
    async fn record_verification(
        &self,
        tenant: &str,
        source: &str,
        report_json: &str,
        in_sync: Option<bool>,
    ) -> Result<(), StoreError>;
    /// When each data source of a tenant was last verified (or scheduled for it).
    async fn last_verifications(&self, tenant: &str) -> Result<Vec<(String, DateTime<Utc>)>, StoreError>;
    /// Gives a run up (`abandoned`), dropping its scratch rows; its data source is free again.
    async fn abandon_run(&self, run_id: &str, reason: &str) -> Result<(), StoreError>;
    /// Marks a run as still worked on: a long job's heartbeat, so the run is not taken for stalled.
    async fn touch_run(&self, run_id: &str) -> Result<(), StoreError>;
    /// Active runs (not done or abandoned) with no sign of work since `since`: no progress or
    /// heartbeat recorded on the run, no job of it ended, and none deferred to a later time.
    async fn quiet_runs(&self, since: DateTime<Utc>) -> Result<Vec<Run>, StoreError>;
    /// Whether the store's own table queue holds a job of the run (queued, delayed or leased).
    /// With another queue (SQS, Azure) it holds none and the answer is false.
    async fn queued_for_run(&self, run_id: &str) -> Result<bool, StoreError>;
    /// Adds one job attempt to its run's timing for `stage` (`failed`: it ended in an error).
    async fn record_stage(
        &self,
        run_id: &str,
        stage: &str,
        started_at: DateTime<Utc>,
        busy: std::time::Duration,
        failed: bool,
    ) -> Result<(), StoreError>;
    /// The stage timings of the given runs, in pipeline order per run.
    async fn stage_timings(&self, run_ids: &[String]) -> Result<Vec<StageTiming>, StoreError>;
}

/// Staging state and deltas.
#[async_trait]
pub trait StagingStore: Send + Sync {
    /// The data source's shape as of its last merged run.
    async fn staged_schema(&self, tenant: &str, source: &str) -> Result<Option<TableSchema>, StoreError>;
    /// Staging's (key, hash) in `range`, ascending.
    fn staging(&self, tenant: &str, source: &str, range: &KeyRange) -> Batches<(Vec<u8>, RowHash), StoreError>;
    /// Starts a new attempt at the chunk: removes whatever an earlier attempt wrote and returns
    /// the new attempt's number, which fences every earlier one (`StoreError::Superseded`). None
    /// when the chunk is done already or its run has moved past snapshotting.
    async fn reset_chunk(&self, run_id: &str, chunk: &Chunk) -> Result<Option<i64>, StoreError>;
    /// Stores segment `seg` of one chunk's delta: `rows` rows packed by `domain::segment`;
    /// `StoreError::Superseded` once a later attempt has reset the chunk.
    async fn write_segment(
        &self,
        run_id: &str,
        chunk: u32,
        attempt: i64,
        seg: u32,
        rows: i64,
        body: crate::domain::buffers::Buffer,
    ) -> Result<(), StoreError>;
    /// Marks the chunk done (once) and adds its counts; returns true when every chunk is done.
    /// `StoreError::Superseded` once a later attempt has reset the chunk.
    async fn finish_chunk(&self, run_id: &str, chunk: u32, attempt: i64, stats: ChunkStats)
        -> Result<bool, StoreError>;
    /// Commits one step of a chunk of a run numbered at commit (decision 0025), in one
    /// transaction: under the run's row lock, takes the run's count of changes so far as the
    /// step's base, saves the batches `step.bodies` builds from it, stages the step's keys and
    /// hashes, moves the chunk's resume key (or marks it done) and adds the counts. The last
    /// chunk to finish moves the run to `batched` (`done` if every batch is delivered already)
    /// and records its staged schema. `StoreError::Superseded` once a later attempt has reset
    /// the chunk or the run has left `snapshotting`.
    async fn commit_step(&self, run: &Run, step: NumberedStep) -> Result<StepCommitted, StoreError>;
    /// `snapshotted → merged` in one transaction with the staging update; false if already merged.
    async fn merge(&self, run: &Run) -> Result<bool, StoreError>;
    /// When the store lost a run's delta before its batches were cut — a server crash or
    /// failover empties a table kept out of the WAL (decision 0018) — puts the run back to
    /// reading every chunk, with staging as the plan found it; true if it did. A store that
    /// logs every write loses nothing this way.
    async fn rewind_lost_delta(&self, _run: &Run) -> Result<bool, StoreError> {
        Ok(false)
    }
    /// Makes staging forget what it knows of these keys (a hash no row has), so the next run
    /// re-sends each key's current state: an upsert if the source has it, a delete if not.
    async fn invalidate_staging(&self, tenant: &str, source: &str, keys: Vec<Vec<u8>>) -> Result<u64, StoreError>;
    /// Staging's hashes of these keys (absent keys are not returned).
    async fn staged_hashes(
        &self,
        tenant: &str,
        source: &str,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<(Vec<u8>, RowHash)>, StoreError>;
    /// A watermark data source's cursor (protocol JSON) and when its last full diff ran.
    async fn cursor(&self, tenant: &str, source: &str) -> Result<(Option<String>, Option<DateTime<Utc>>), StoreError>;
    /// Stores the cursor after a merged watermark run (`full`: it was a full diff).
    async fn set_cursor(&self, tenant: &str, source: &str, cursor: Option<&str>, full: bool) -> Result<(), StoreError>;
    /// The run's change records in sequence order — segment by segment in chunk order, each
    /// in the order it was written, so every read numbers them the same.
    fn changes(&self, run_id: &str) -> Batches<Records, StoreError>;
}

/// Batches and the delivery ledger.
#[async_trait]
pub trait BatchStore: Send + Sync {
    /// Saves batches (ignoring ones already saved).
    async fn save_batches(&self, batches: Vec<BatchRecord>) -> Result<(), StoreError>;
    /// `merged → batched` with the batch count and bytes; `total == 0` finishes the run.
    async fn finish_batching(&self, run: &Run, total: i64, bytes: i64) -> Result<(), StoreError>;
    /// The run's batches not yet delivered: (id, first sequence number, last sequence number).
    async fn pending_batches(&self, run_id: &str) -> Result<Vec<(String, i64, i64)>, StoreError>;
    /// Replaces a batch the destination found too large (413) by `children` covering the same
    /// sequence range, in one transaction: the parent counts as delivered, the children as new.
    async fn split_batch(&self, run: &Run, attempt: &Attempt, children: Vec<BatchRecord>) -> Result<(), StoreError>;
    /// A batch.
    async fn batch(&self, run_id: &str, batch_id: &str) -> Result<Option<BatchRecord>, StoreError>;
    /// Records an attempt in the ledger.
    async fn record_attempt(&self, run_id: &str, attempt: &Attempt) -> Result<(), StoreError>;
    /// Records a delivered attempt and marks the batch delivered (once); finishes the run after
    /// the last batch. Returns true if this call finished the run.
    async fn mark_delivered(&self, run: &Run, attempt: &Attempt) -> Result<bool, StoreError>;
}

/// The one dead-letter model, whatever the queue.
#[async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Records a dead letter (once per message id).
    async fn dead_letter(
        &self,
        job: Option<&Job>,
        raw: &str,
        stage: &str,
        error: &str,
        attempts: u32,
    ) -> Result<i64, StoreError>;
    /// Dead letters, newest first, optionally only open ones.
    async fn dead_letters(&self, open_only: bool) -> Result<Vec<DeadLetter>, StoreError>;
    /// One dead letter.
    async fn dead_letter_by_id(&self, id: i64) -> Result<Option<DeadLetter>, StoreError>;
    /// Resolves an open dead letter (`retried` or `dropped`), recording who; false if it was not open.
    async fn resolve_dead_letter(&self, id: i64, state: &str, by: &str) -> Result<bool, StoreError>;
}

/// Operator state: pauses and the audit log.
#[async_trait]
pub trait OperatorStore: Send + Sync {
    /// Pauses (or resumes) a data source, or with `source = None` a whole tenant.
    async fn set_paused(&self, tenant: &str, source: Option<&str>, paused: bool, by: &str) -> Result<(), StoreError>;
    /// The tenant's pauses: `None` means the whole tenant.
    async fn pauses(&self, tenant: &str) -> Result<Vec<Option<String>>, StoreError>;
    /// Records an operator action.
    async fn audit(&self, actor: &str, action: &str, subject: &str, detail: &str) -> Result<(), StoreError>;
    /// When `action` was last recorded in the audit log.
    async fn last_audit(&self, action: &str) -> Result<Option<DateTime<Utc>>, StoreError>;
    /// Prunes history older than the cutoffs, in small transactions. Returns the rows removed.
    async fn prune(&self, cutoffs: &PruneCutoffs) -> Result<u64, StoreError>;
    /// Removes every row of a tenant — queued jobs, staging, scratch rows, cursors, pauses and,
    /// unless `keep_history`, its runs, ledger and dead letters. Returns the rows removed.
    async fn purge_tenant(&self, tenant: &str, keep_history: bool) -> Result<u64, StoreError>;
    /// Every data source with runs on record and when it last synced successfully.
    async fn sync_clocks(&self) -> Result<Vec<SourceClock>, StoreError>;
}

/// Slots limiting concurrent queries per source server, shared by every process on the store.
#[async_trait]
pub trait SlotStore: Send + Sync {
    /// Takes (or renews) `holder`'s slot on `server` if fewer than `limit` live slots are held.
    async fn acquire_slot(&self, server: &str, holder: &str, limit: u32, lease: Duration) -> Result<bool, StoreError>;
    /// Gives the slot back.
    async fn release_slot(&self, server: &str, holder: &str) -> Result<(), StoreError>;
}

/// Every store port together: what a host hands to the stages.
pub trait Store:
    ConfigStore + RunStore + StagingStore + BatchStore + DeadLetterStore + SlotStore + OperatorStore
{
    /// Rows this process has written to the store (for the "no changes ⇒ almost no writes" check).
    fn rows_written(&self) -> u64;
}
