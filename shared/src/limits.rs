//! Limits per source server: a source whose connection sets `max_concurrent_queries` takes a slot
//! in the store (shared by every data source of every tenant on that server, in every process)
//! for each query, and gives it back when the query's rows have been read.

use crate::domain::encoding::RowHash;
use crate::domain::schema::TableSchema;
use crate::domain::value::Value;
use crate::errors::SourceError;
use crate::ports::{Batches, KeyRange, SlotStore, SnapshotSource, SourceSpec};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// A slot lease; renewed while a long read runs, so a crashed holder frees it within the lease.
const LEASE: Duration = Duration::from_secs(120);

/// A source whose queries wait for a slot on their server.
pub struct LimitedSource {
    inner: Arc<dyn SnapshotSource>,
    slots: Arc<dyn SlotStore>,
    server: String,
    limit: u32,
}

/// A held slot.
struct Slot {
    slots: Arc<dyn SlotStore>,
    server: String,
    holder: String,
}

impl Slot {
    async fn take(slots: Arc<dyn SlotStore>, server: &str, limit: u32) -> Result<Slot, SourceError> {
        let holder = uuid::Uuid::new_v4().simple().to_string();
        let mut wait = Duration::from_millis(20);
        loop {
            let got = slots
                .acquire_slot(server, &holder, limit, LEASE)
                .await
                .map_err(|e| SourceError::Query {
                    detail: format!("cannot take a query slot on the source server: {e}"),
                })?;
            if got {
                return Ok(Slot {
                    slots,
                    server: server.to_owned(),
                    holder,
                });
            }
            tokio::time::sleep(wait.mul_f64(0.5 + fastrand::f64())).await;
            wait = (wait * 2).min(Duration::from_millis(500));
        }
    }

    async fn renew(&self, limit: u32) {
        let _ = self.slots.acquire_slot(&self.server, &self.holder, limit, LEASE).await;
    }

    async fn give_back(self) {
        if let Err(e) = self.slots.release_slot(&self.server, &self.holder).await {
            tracing::warn!(error = %e, "could not release a source query slot; it expires with its lease");
        }
    }
}

impl LimitedSource {
    /// Wraps `inner`; `server` identifies the source server (host:port/database or file).
    pub fn new(inner: Arc<dyn SnapshotSource>, slots: Arc<dyn SlotStore>, server: String, limit: u32) -> LimitedSource {
        LimitedSource {
            inner,
            slots,
            server,
            limit,
        }
    }

    /// Runs a streaming read inside a slot held until the stream ends.
    fn limited<T: Send + 'static>(
        &self,
        open: impl FnOnce() -> Batches<T, SourceError> + Send + 'static,
    ) -> Batches<T, SourceError> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (slots, server, limit) = (self.slots.clone(), self.server.clone(), self.limit);
        tokio::spawn(async move {
            let slot = match Slot::take(slots, &server, limit).await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            let mut inner = open();
            let mut renewed = tokio::time::Instant::now();
            while let Some(item) = inner.recv().await {
                if tx.send(item).await.is_err() {
                    break;
                }
                if renewed.elapsed() > LEASE / 3 {
                    slot.renew(limit).await;
                    renewed = tokio::time::Instant::now();
                }
            }
            slot.give_back().await;
        });
        rx
    }
}

#[async_trait]
impl SnapshotSource for LimitedSource {
    async fn describe(&self, spec: &SourceSpec) -> Result<TableSchema, SourceError> {
        let slot = Slot::take(self.slots.clone(), &self.server, self.limit).await?;
        let out = self.inner.describe(spec).await;
        slot.give_back().await;
        out
    }

    async fn split(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        chunk_rows: u64,
    ) -> Result<Vec<Vec<u8>>, SourceError> {
        let slot = Slot::take(self.slots.clone(), &self.server, self.limit).await?;
        let out = self.inner.split(spec, schema, chunk_rows).await;
        slot.give_back().await;
        out
    }

    fn read(&self, spec: &SourceSpec, schema: &TableSchema, range: &KeyRange) -> Batches<Vec<Value>, SourceError> {
        let (inner, spec, schema, range) = (self.inner.clone(), spec.clone(), schema.clone(), range.clone());
        self.limited(move || inner.read(&spec, &schema, &range))
    }

    fn read_hashes(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        range: &KeyRange,
    ) -> Batches<(Vec<Value>, RowHash), SourceError> {
        let (inner, spec, schema, range) = (self.inner.clone(), spec.clone(), schema.clone(), range.clone());
        self.limited(move || inner.read_hashes(&spec, &schema, &range))
    }

    fn reads_with_hashes(&self) -> bool {
        self.inner.reads_with_hashes()
    }

    fn read_with_hashes(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        range: &KeyRange,
    ) -> Batches<(Vec<Value>, RowHash), SourceError> {
        let (inner, spec, schema, range) = (self.inner.clone(), spec.clone(), schema.clone(), range.clone());
        self.limited(move || inner.read_with_hashes(&spec, &schema, &range))
    }

    async fn read_keys(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        keys: &[Vec<Value>],
    ) -> Result<Vec<Vec<Value>>, SourceError> {
        let slot = Slot::take(self.slots.clone(), &self.server, self.limit).await?;
        let out = self.inner.read_keys(spec, schema, keys).await;
        slot.give_back().await;
        out
    }

    fn read_since(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        column: &str,
        from: &Value,
    ) -> Batches<Vec<Value>, SourceError> {
        let (inner, spec, schema, column, from) = (
            self.inner.clone(),
            spec.clone(),
            schema.clone(),
            column.to_owned(),
            from.clone(),
        );
        self.limited(move || inner.read_since(&spec, &schema, &column, &from))
    }

    async fn max_of(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        column: &str,
    ) -> Result<Option<Value>, SourceError> {
        let slot = Slot::take(self.slots.clone(), &self.server, self.limit).await?;
        let out = self.inner.max_of(spec, schema, column).await;
        slot.give_back().await;
        out
    }

    async fn change_versions(&self, spec: &SourceSpec) -> Result<(i64, Option<i64>), SourceError> {
        let slot = Slot::take(self.slots.clone(), &self.server, self.limit).await?;
        let out = self.inner.change_versions(spec).await;
        slot.give_back().await;
        out
    }

    fn read_changes(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        version: i64,
    ) -> Batches<crate::ports::TrackedChange, SourceError> {
        let (inner, spec, schema) = (self.inner.clone(), spec.clone(), schema.clone());
        self.limited(move || inner.read_changes(&spec, &schema, version))
    }
}
