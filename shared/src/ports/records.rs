//! The records the store ports hold: runs and their chunks, batches, delivery attempts, dead
//! letters — and the instants they carry.

use super::KeyRange;
use crate::domain::{config::DiffMode, schema::TableSchema};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

/// Now, as every store keeps instants: milliseconds since the epoch in one integer column type.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A stored instant (milliseconds since the epoch) read back; out of range reads as the epoch.
pub fn from_ms(ms: i64) -> DateTime<Utc> {
    use chrono::TimeZone;
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Run kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// First sync of a data source: staging is empty, every row is an insert.
    Initial,
    /// A periodic sync: only what changed.
    Interval,
}

impl RunKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Initial => "initial",
            RunKind::Interval => "interval",
        }
    }
}

/// Progress states of a run; `blocked` is shown on top while a dead letter holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Opened; chunks not planned yet.
    Planning,
    /// Chunks being diffed.
    Snapshotting,
    /// Every chunk's delta written.
    Snapshotted,
    /// Delta committed to staging; change records numbered.
    Merged,
    /// Batches cut; being pushed.
    Batched,
    /// Every batch delivered.
    Done,
    /// Given up by an operator (a dropped dead letter); it no longer holds its data source.
    Abandoned,
}

impl RunState {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Planning => "planning",
            RunState::Snapshotting => "snapshotting",
            RunState::Snapshotted => "snapshotted",
            RunState::Merged => "merged",
            RunState::Batched => "batched",
            RunState::Done => "done",
            RunState::Abandoned => "abandoned",
        }
    }
    /// From a stored name.
    pub fn parse(s: &str) -> Option<RunState> {
        [
            RunState::Planning,
            RunState::Snapshotting,
            RunState::Snapshotted,
            RunState::Merged,
            RunState::Batched,
            RunState::Done,
            RunState::Abandoned,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// A run of one data source, with its counters.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Run id.
    pub id: String,
    /// Tenant id.
    pub tenant: String,
    /// Data source id.
    pub source: String,
    /// Initial or interval.
    pub kind: RunKind,
    /// Progress state.
    pub state: RunState,
    /// Open dead letters holding the run (then it shows as `blocked`).
    pub dead_letters: i64,
    /// Config version the run started with.
    pub config_version: i64,
    /// Opened at.
    pub created_at: DateTime<Utc>,
    /// Finished at, when done.
    pub finished_at: Option<DateTime<Utc>>,
    /// Chunks planned.
    pub chunks_total: i64,
    /// Chunks whose delta is written.
    pub chunks_done: i64,
    /// Source rows read.
    pub rows_read: i64,
    /// Inserts found.
    pub inserts: i64,
    /// Updates found.
    pub updates: i64,
    /// Deletes found.
    pub deletes: i64,
    /// Batches cut.
    pub batches_total: i64,
    /// Batches delivered.
    pub batches_delivered: i64,
    /// Bytes of change records pushed.
    pub bytes: i64,
    /// The shape read (set when planned).
    pub schema: Option<TableSchema>,
    /// Every row re-sent (accepted drift).
    pub force_all: bool,
    /// Last error seen by any job of the run.
    pub last_error: Option<String>,
    /// Bytes read from the source (canonical size of the values, keys and hashes that crossed).
    pub bytes_read: i64,
    /// How the run finds changes (set when planned).
    pub mode: Option<RunMode>,
}

impl Run {
    /// State as shown to operators: `blocked` while a dead letter holds the run.
    pub fn display_state(&self) -> &'static str {
        if self.dead_letters > 0 {
            "blocked"
        } else {
            self.state.as_str()
        }
    }
    /// Changes found.
    pub fn changes(&self) -> i64 {
        self.inserts + self.updates + self.deletes
    }
}

/// Instants before which history may go.
#[derive(Debug, Clone, Copy)]
pub struct PruneCutoffs {
    /// Finished runs (not a data source's latest) with their batches and ledger.
    pub runs: DateTime<Utc>,
    /// Delivery attempts.
    pub ledger: DateTime<Utc>,
    /// Delivered batch bodies.
    pub bodies: DateTime<Utc>,
    /// Resolved dead letters.
    pub dead_letters: DateTime<Utc>,
}

/// What planning decided for a run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The shape read.
    pub schema: TableSchema,
    /// Re-send every row (accepted drift, changed diff mode).
    pub force_all: bool,
    /// Config version the run now follows.
    pub config_version: i64,
    /// How changes are found.
    pub mode: RunMode,
}

/// One chunk of a run.
#[derive(Debug, Clone)]
pub struct Chunk {
    /// Chunk number.
    pub no: u32,
    /// Its key range.
    pub range: KeyRange,
    /// Whether its delta is complete.
    pub done: bool,
    /// A chunk of a run numbered at commit (decision 0025): the first key its committed steps
    /// have not covered, where a later attempt starts reading.
    pub resume: Option<Vec<u8>>,
}

pub use crate::domain::segment::{DeltaRow, Records};

/// How one run finds changes: the data source's mode, and for watermark runs whether this is a
/// full diff and the cursor range.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RunMode {
    /// The data source's diff mode when the run was planned.
    pub mode: DiffMode,
    /// A full diff (every row compared; finds deletes) rather than a watermark read.
    #[serde(default)]
    pub full: bool,
    /// Watermark runs: read rows whose cursor column is at least this (protocol JSON of the value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Watermark runs: the cursor to store once the run is merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// The run's chunks number and cut their own batches as they commit (decision 0025): set
    /// at plan time when nothing is staged for the data source, so a run planned by an older
    /// build keeps the merge and cut across an upgrade.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub numbered: bool,
}

/// Counts one chunk contributes to its run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChunkStats {
    /// Rows read from the source.
    pub rows_read: i64,
    /// Inserts.
    pub inserts: i64,
    /// Updates.
    pub updates: i64,
    /// Deletes.
    pub deletes: i64,
    /// Bytes read from the source.
    pub bytes_read: i64,
}

/// Builds a step's batches once the store knows the run's count of changes so far: their
/// sequence numbers start after it (decision 0025).
pub type NumberBodies = Box<dyn FnOnce(i64) -> Result<Vec<BatchRecord>, crate::errors::StoreError> + Send>;

/// What one step of a chunk of a run numbered at commit hands the store, for one transaction.
pub struct NumberedStep {
    /// Chunk number.
    pub chunk: u32,
    /// The attempt committing (`StagingStore::reset_chunk`): a later one fences it out.
    pub attempt: i64,
    /// The step's inserts, updates and deletes. Nothing was staged when the run was planned, so
    /// all are inserts unless a repair invalidated staged keys of the data source meanwhile.
    pub ops: [i64; 3],
    /// Their keys, with their hashes to stage (`None`: a delete, unstaged).
    pub staged: Vec<(Vec<u8>, Option<crate::domain::encoding::RowHash>)>,
    /// The first key not in this or an earlier step; `None` on the chunk's last step.
    pub resume: Option<Vec<u8>>,
    /// On the chunk's last step (which marks it done): the attempt's bytes read, and its rows
    /// read beyond its inserts and updates (none, as nothing was staged). Each step counts
    /// those as rows read, so a run's progress moves step by step and a resumed chunk's rows
    /// count once.
    pub last: Option<ChunkStats>,
    /// Numbers and compresses the step's batches from the run's count so far.
    pub bodies: NumberBodies,
}

/// What a committed step saved.
#[derive(Debug, Default)]
pub struct StepCommitted {
    /// Ids of the batches it saved, to push.
    pub batches: Vec<String>,
    /// Whether it was the run's last chunk to finish (the run is `batched` now, or `done`).
    pub all_done: bool,
}

/// A batch cut from a run's change records, its request body built once.
#[derive(Debug, Clone)]
pub struct BatchRecord {
    /// Deterministic id (run + sequence range).
    pub id: String,
    /// Run id.
    pub run_id: String,
    /// First sequence number.
    pub seq_first: i64,
    /// Last sequence number.
    pub seq_last: i64,
    /// Records in the batch.
    pub rows: i64,
    /// Request body.
    pub body: crate::domain::packing::Body,
    /// Delivered already.
    pub delivered: bool,
}

/// One delivery attempt, for the ledger.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// Batch id.
    pub batch_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// HTTP status, if a response came.
    pub status: Option<u16>,
    /// Error or response excerpt.
    pub detail: String,
    /// Request id from the response, if any.
    pub request_id: Option<String>,
    /// Time the attempt took.
    pub duration: Duration,
}

/// A job that could not be completed, kept until an operator retries or drops it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Id for `signals dlq`.
    pub id: i64,
    /// Tenant, when the job has one.
    pub tenant: Option<String>,
    /// Data source, when the job has one.
    pub source: Option<String>,
    /// Run, when the job has one.
    pub run_id: Option<String>,
    /// Stage.
    pub stage: String,
    /// The job message (or the raw text of one that could not be decoded).
    pub message: String,
    /// The final error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// `open`, `retried` or `dropped`.
    pub state: String,
    /// Who retried or dropped it.
    pub resolved_by: Option<String>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
}
