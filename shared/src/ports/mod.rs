//! Ports: the narrow traits stages use. Adapters (SQLite, PostgreSQL; SQL Server, SQS, Azure
//! later) implement them; stages and hosts know nothing else.

use crate::domain::{
    encoding::RowHash,
    job::{Job, Stage},
    schema::TableSchema,
    value::Value,
};
use crate::errors::{PushError, SourceError, StoreError};
use async_trait::async_trait;
use serde::Serialize;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;

/// A stream of batches of items; an error ends the stream. Bounded channels keep memory flat.
pub type Batches<T, E> = Receiver<Result<Vec<T>, E>>;

/// A run's change records from its delta: rows a build before segments wrote (a run in flight
/// across the upgrade), then its segments — each stream drained in turn, so the order, and
/// with it the records' numbering, is the same on every read.
pub fn change_records<E: Send + 'static>(
    mut legacy: Batches<DeltaRow, E>,
    mut segments: Batches<Records, E>,
) -> Batches<Records, E> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        while let Some(batch) = legacy.recv().await {
            if tx.send(batch.map(|rows| vec![Records::from_rows(rows)])).await.is_err() {
                return;
            }
        }
        while let Some(batch) = segments.recv().await {
            if tx.send(batch).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// A key's change to staging: its new hash, or `None` when the key leaves.
pub type StagedChange = (Vec<u8>, Option<RowHash>);

/// What staging takes from a run's delta rows, batch by batch in order. A damaged row (an
/// insert or update without a hash) ends the stream with an error instead of passing as a delete.
pub fn staged_changes(mut delta: Batches<DeltaRow, StoreError>) -> Batches<StagedChange, StoreError> {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        while let Some(batch) = delta.recv().await {
            let mapped = batch.and_then(|rows| {
                rows.into_iter()
                    .map(|r| {
                        let staged = r.staged_hash().map_err(|e| StoreError::Corrupt {
                            what: "delta row",
                            detail: e.to_string(),
                        })?;
                        let staged = staged.copied();
                        Ok((r.key, staged))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()
            });
            let failed = mapped.is_err();
            if tx.send(mapped).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// What to read: a table or a query, and its key columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceSpec {
    /// Table name (`schema.table` allowed).
    pub table: Option<String>,
    /// Query whose result is read like a table.
    pub query: Option<String>,
    /// Key columns in order.
    pub key: Vec<String>,
    /// Columns to leave out of every query (they never leave the source).
    pub exclude: Vec<String>,
}

impl SourceSpec {
    /// The shape a source describes: its columns minus the excluded ones (they never leave the
    /// source: no query selects what the shape lacks), with every key column present.
    pub fn shape(&self, mut columns: Vec<crate::domain::schema::Column>) -> Result<TableSchema, SourceError> {
        columns.retain(|c| !self.exclude.contains(&c.name));
        if let Some(k) = self.key.iter().find(|k| !columns.iter().any(|c| &c.name == *k)) {
            return Err(SourceError::MissingKeyColumn {
                object: self.table.clone().unwrap_or_else(|| "query".into()),
                column: k.clone(),
                available: columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
        Ok(TableSchema {
            columns,
            key: self.key.clone(),
            excluded: self.exclude.clone(),
            ..Default::default()
        })
    }
}

/// A key range `[lo, hi)` in encoded key bytes; `None` is unbounded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KeyRange {
    /// Inclusive lower bound.
    pub lo: Option<Vec<u8>>,
    /// Exclusive upper bound.
    pub hi: Option<Vec<u8>>,
}

impl KeyRange {
    /// The ranges that ascending `bounds` cut the key space into: every key in exactly one.
    pub fn cut_at(bounds: Vec<Vec<u8>>) -> Vec<KeyRange> {
        let mut ranges = Vec::with_capacity(bounds.len() + 1);
        let mut lo = None;
        for b in bounds {
            ranges.push(KeyRange {
                lo: lo.take(),
                hi: Some(b.clone()),
            });
            lo = Some(b);
        }
        ranges.push(KeyRange { lo, hi: None });
        ranges
    }
}

/// Reads a data source in key order, in key-range chunks, with bounded memory.
#[async_trait]
pub trait SnapshotSource: Send + Sync {
    /// The source's columns mapped onto canonical types; fails if a key column is missing.
    async fn describe(&self, spec: &SourceSpec) -> Result<TableSchema, SourceError>;
    /// Chunk boundaries (encoded keys, ascending) so each chunk holds about `chunk_rows` rows.
    async fn split(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        chunk_rows: u64,
    ) -> Result<Vec<Vec<u8>>, SourceError>;
    /// Streams the rows of `range` in ascending key order, values in schema column order.
    fn read(&self, spec: &SourceSpec, schema: &TableSchema, range: &KeyRange) -> Batches<Vec<Value>, SourceError>;

    /// Push-down hashing: streams (key values, the source's own row hash) of `range` in key order,
    /// so only keys and hashes cross the link.
    fn read_hashes(
        &self,
        _spec: &SourceSpec,
        _schema: &TableSchema,
        _range: &KeyRange,
    ) -> Batches<(Vec<Value>, RowHash), SourceError> {
        unsupported("push-down hashing (diff = \"remote_hash\")")
    }

    /// Whether [`SnapshotSource::read_with_hashes`] is offered.
    fn reads_with_hashes(&self) -> bool {
        false
    }

    /// Push-down hashing of a range staging holds nothing of (an initial run): every row of
    /// `range` in key order with the same hash [`SnapshotSource::read_hashes`] gives it. Every
    /// row is a change there, and hashes first then rows by key would read each row twice.
    fn read_with_hashes(
        &self,
        _spec: &SourceSpec,
        _schema: &TableSchema,
        _range: &KeyRange,
    ) -> Batches<(Vec<Value>, RowHash), SourceError> {
        unsupported("reading rows with the source's own hashes")
    }

    /// The rows with these keys (in any order; keys the source no longer has are absent).
    async fn read_keys(
        &self,
        _spec: &SourceSpec,
        _schema: &TableSchema,
        _keys: &[Vec<Value>],
    ) -> Result<Vec<Vec<Value>>, SourceError> {
        Err(SourceError::Unsupported {
            what: "reading rows by key".into(),
        })
    }

    /// Watermark mode: streams the rows whose `column` is at least `from`, in key order.
    fn read_since(
        &self,
        _spec: &SourceSpec,
        _schema: &TableSchema,
        _column: &str,
        _from: &Value,
    ) -> Batches<Vec<Value>, SourceError> {
        unsupported("watermark reads (diff = \"watermark\")")
    }

    /// Change tracking: the database's current version and the table's oldest version still
    /// valid (`None`: change tracking is off for the table).
    async fn change_versions(&self, _spec: &SourceSpec) -> Result<(i64, Option<i64>), SourceError> {
        Err(SourceError::Unsupported {
            what: "change tracking (diff = \"change_tracking\", SQL Server only)".into(),
        })
    }

    /// Change tracking: every key changed since `version`, with its row if the source still has
    /// it (in any order).
    fn read_changes(
        &self,
        _spec: &SourceSpec,
        _schema: &TableSchema,
        _version: i64,
    ) -> Batches<TrackedChange, SourceError> {
        unsupported("change tracking (diff = \"change_tracking\", SQL Server only)")
    }

    /// The largest value of `column` (the next watermark), `None` for an empty table.
    async fn max_of(
        &self,
        _spec: &SourceSpec,
        _schema: &TableSchema,
        _column: &str,
    ) -> Result<Option<Value>, SourceError> {
        Err(SourceError::Unsupported {
            what: "watermark reads (diff = \"watermark\")".into(),
        })
    }
}

/// A key change tracking lists.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackedChange {
    /// The source has the row now (inserted or updated): its values in schema column order.
    Row(Vec<Value>),
    /// The source no longer has it: the key's values in key order.
    Gone(Vec<Value>),
}

/// A stream that fails at once: the adapter does not offer the operation.
pub fn unsupported<T: Send + 'static>(what: &str) -> Batches<T, SourceError> {
    failed(SourceError::Unsupported { what: what.to_owned() })
}

/// A stream that fails at once with `e`.
pub fn failed<T: Send + 'static>(e: SourceError) -> Batches<T, SourceError> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let _ = tx.try_send(Err(e));
    rx
}

/// A message claimed from a queue.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Queue-specific handle (row id, receipt handle…).
    pub handle: String,
    /// The raw message body.
    pub body: String,
    /// Deliveries so far, this one included.
    pub attempts: u32,
}

/// A queue of job messages with leases (visibility timeouts).
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Enqueues jobs, visible after `delay`.
    async fn enqueue(&self, jobs: &[Job], delay: Duration) -> Result<(), StoreError>;
    /// Claims up to `max` visible messages of the given stages (all when empty) for `lease`.
    async fn claim(&self, max: usize, lease: Duration, stages: &[Stage]) -> Result<Vec<Claimed>, StoreError>;
    /// Like `claim`, but only interval and timer work (priority ≥ `PRIORITY_INTERVAL`): what a
    /// runner's reserved slot takes, so a deep onboarding of long jobs cannot hold every slot.
    /// Queues without priorities claim as usual.
    async fn claim_urgent(&self, max: usize, lease: Duration, stages: &[Stage]) -> Result<Vec<Claimed>, StoreError> {
        self.claim(max, lease, stages).await
    }
    /// Extends a lease while work goes on.
    async fn extend(&self, claimed: &Claimed, lease: Duration) -> Result<(), StoreError>;
    /// Removes a finished message.
    async fn ack(&self, claimed: &Claimed) -> Result<(), StoreError>;
    /// Makes a message visible again after `delay`, noting the error.
    async fn retry_later(&self, claimed: &Claimed, delay: Duration, error: &str) -> Result<(), StoreError>;
    /// (messages of the given stages — all when empty — in the queue, age of the oldest visible one).
    async fn depth(&self, stages: &[Stage]) -> Result<(u64, Option<Duration>), StoreError>;
    /// Moves a message no stage can decode out of the way (a poison queue), if this queue has
    /// such a place; `false` means the host records it as a dead letter in the store instead.
    async fn quarantine(&self, _claimed: &Claimed, _error: &str) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// What the destination said to one delivery attempt.
#[derive(Debug, Clone)]
pub struct PushResponse {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After`, parsed.
    pub retry_after: Option<Duration>,
    /// First bytes of the response body.
    pub excerpt: String,
    /// Request id the destination assigned.
    pub request_id: Option<String>,
}

/// One batch to deliver.
#[derive(Debug, Clone, Copy)]
pub struct PushRequest<'a> {
    /// Tenant the batch belongs to (for per-tenant concurrency).
    pub tenant: &'a str,
    /// The tenant's cap on batches in flight, if set.
    pub tenant_max_concurrency: Option<usize>,
    /// Batch id, sent as `Idempotency-Key`.
    pub batch_id: &'a str,
    /// Request body: JSON, or its gzip as the batch stage stored it.
    pub body: &'a crate::domain::packing::Body,
}

/// Delivers one batch body.
#[async_trait]
pub trait Pusher: Send + Sync {
    /// Sends the body with the batch id as `Idempotency-Key`; transport failures are errors.
    async fn push(&self, req: &PushRequest<'_>) -> Result<PushResponse, PushError>;

    /// Asks the destination to drop every dataset of a tenant (offboarding); false if it offers
    /// no such endpoint.
    async fn drop_tenant(&self, _tenant: &str) -> Result<bool, PushError> {
        Ok(false)
    }

    /// The destination's reconciliation checksums, if it offers them (`None` if it does not).
    async fn checksums(
        &self,
        _req: &crate::protocol::ChecksumRequest,
    ) -> Result<Option<crate::protocol::ChecksumResponse>, PushError> {
        Ok(None)
    }
}

mod history;
mod records;
mod store;
pub use history::*;
pub use records::*;
pub use store::*;

/// A store that also holds the table queue.
pub trait Backend: Store + JobQueue {}
impl<T: Store + JobQueue> Backend for T {}
