//! Adapter and stage errors. Every error a handler returns is classified retryable or fatal;
//! each host maps that onto its own mechanism (table-queue retry, SQS visibility, dead letter).

use crate::domain::{config::ConfigError, diff::OrderError, job::EnvelopeError, key::KeyError};
use std::time::Duration;

/// A source database problem.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The database could not be reached or opened (transient until proven otherwise).
    #[error("cannot connect to source `{connection}`: {detail}")]
    Connect {
        /// Connection name (never its URL: it may hold a password).
        connection: String,
        /// What the driver said.
        detail: String,
    },
    /// The table or a configured column does not exist.
    #[error("source `{object}` has no column `{column}` (configured as a key column); it has: {available}")]
    MissingKeyColumn {
        /// Table or query.
        object: String,
        /// Missing column.
        column: String,
        /// Columns it does have.
        available: String,
    },
    /// The table does not exist.
    #[error("source table `{table}` does not exist")]
    NoSuchTable {
        /// Table name.
        table: String,
    },
    /// A column's type cannot be mapped losslessly.
    #[error("column `{column}` has type `{native}`, which has no lossless canonical mapping")]
    UnsupportedType {
        /// Column name.
        column: String,
        /// Native type.
        native: String,
    },
    /// A value does not fit its column's declared type.
    #[error("column `{column}`: {detail}")]
    BadValue {
        /// Column name.
        column: String,
        /// What is wrong (no values of other columns).
        detail: String,
    },
    /// The shape changed while the run was reading it.
    #[error("the source's columns changed during the run ({detail}); the next run will see the new shape")]
    ShapeChanged {
        /// Drift description.
        detail: String,
    },
    /// Any other query failure.
    #[error("source query failed: {detail}")]
    Query {
        /// What the driver said.
        detail: String,
    },
    /// A key cannot be encoded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// This source adapter cannot do what the data source's config asks.
    #[error("this source does not support {what}")]
    Unsupported {
        /// The operation.
        what: String,
    },
}

impl SourceError {
    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, SourceError::Connect { .. } | SourceError::Query { .. })
    }
}

/// A store problem.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed (busy, I/O, constraint).
    #[error("store: {context}: {detail}")]
    Db {
        /// What we were doing.
        context: &'static str,
        /// What the driver said.
        detail: String,
    },
    /// Stored data is not what this build expects.
    #[error("store: corrupt {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A later attempt at the same work took it over (a job delivered twice, or redelivered
    /// while a stalled worker still held it): this attempt's writes are refused, so the two
    /// cannot mix, and it ends without retrying — the later attempt finishes the work.
    #[error("store: {what}: a later attempt took this work over")]
    Superseded {
        /// Which work.
        what: String,
    },
}

impl StoreError {
    /// Attempt `attempt` at chunk `chunk` of run `run_id` lost the chunk to a later attempt.
    pub fn chunk_superseded(run_id: &str, chunk: u32, attempt: i64) -> StoreError {
        StoreError::Superseded {
            what: format!("run `{run_id}`, chunk {chunk}, attempt {attempt}"),
        }
    }
}

impl From<crate::domain::segment::SegmentError> for StoreError {
    fn from(e: crate::domain::segment::SegmentError) -> StoreError {
        StoreError::Corrupt {
            what: "delta segment",
            detail: e.to_string(),
        }
    }
}

/// A delivery failure without an HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Connect failure, timeout, reset.
    #[error("push to {url} failed: {detail}")]
    Transport {
        /// Destination URL (no credentials).
        url: String,
        /// What happened.
        detail: String,
    },
    /// A secret or header could not be prepared.
    #[error("push setup: {0}")]
    Setup(String),
    /// The JSONL dry-run file could not be written.
    #[error("jsonl sink: {0}")]
    Io(#[from] std::io::Error),
    /// The stored body could not be read back (damaged in the store): another attempt reads the
    /// same bytes, so it is not retried.
    #[error(transparent)]
    Body(#[from] StoreError),
}

/// Why a stage handler failed; the class decides retry or dead letter.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// Bad configuration, unknown tenant or data source: fatal.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A secret reference could not be resolved: fatal until fixed.
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    /// Source failure: retryable or fatal by kind.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Store failure: retryable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Duplicate or unordered keys: fatal.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// The job message itself is malformed: fatal.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The job refers to a run or batch that does not exist (for its tenant): fatal.
    #[error("{0}")]
    NotFound(String),
    /// Columns added, dropped or retyped and the data source does not accept drift: fatal.
    #[error("schema drift in tenant `{tenant}`, data source `{source_id}`: {drift}; nothing was applied. Set `accept_drift = true` to re-sync in the new shape")]
    Drift {
        /// Tenant.
        tenant: String,
        /// Data source.
        source_id: String,
        /// What changed.
        drift: String,
    },
    /// Transport failure pushing a batch: retryable.
    #[error(transparent)]
    Push(#[from] PushError),
    /// The destination asked us to come back later (429, 5xx): retryable.
    #[error("destination answered {status} for batch {batch_id}: {excerpt}")]
    PushRetry {
        /// Batch id.
        batch_id: String,
        /// HTTP status.
        status: u16,
        /// Response excerpt.
        excerpt: String,
        /// Server-requested wait.
        retry_after: Option<Duration>,
    },
    /// The destination refused the batch (other 4xx): fatal.
    #[error("destination rejected batch {batch_id} with {status}: {excerpt}")]
    PushRejected {
        /// Batch id.
        batch_id: String,
        /// HTTP status.
        status: u16,
        /// Response excerpt.
        excerpt: String,
    },
}

impl StageError {
    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            StageError::Source(e) => e.retryable(),
            StageError::Store(_) | StageError::Push(PushError::Transport { .. }) | StageError::PushRetry { .. } => true,
            _ => false,
        }
    }

    /// A wait the other side asked for.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            StageError::PushRetry { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
