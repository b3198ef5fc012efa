//! The PostgreSQL store: the SQLite store's contract on a server database shared by many
//! workers — binary `COPY FROM` for deltas, set-based merge in one transaction, a table queue with
//! `FOR UPDATE SKIP LOCKED`, all in its own schema.

mod batches;
mod config;
mod delta;
mod dlq;
mod numbered;
mod operator;
mod packs;
mod prepared;
mod queue;
mod runs;
mod schema;
mod scratch;
mod slots;
mod staged;
mod staging;

use super::pool::{pg_err, pool_err, pool_with, Limits};
use crate::domain::ident;
use crate::errors::StoreError;
use crate::ports::{from_ms, now_ms};
use crate::ports::{Batches, Store};
use deadpool_postgres::{Object, Pool};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_postgres::types::ToSql;

/// The machine's PostgreSQL, as the integration tests find it: for this module's own tests.
#[cfg(test)]
fn test_url() -> String {
    std::env::var("SIGNALS_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The store in one PostgreSQL schema.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// Quoted schema name, prefixed to every table.
    s: String,
    written: Arc<AtomicU64>,
}

/// Rows per message on a read stream.
const STREAM_BATCH: usize = 2_000;

impl PgStore {
    /// Connects (lazily, through a pool of `connections`) and migrates `schema`.
    pub async fn connect(url: &str, schema: &str, connections: usize) -> Result<PgStore, StoreError> {
        ident::validate(schema, "store schema").map_err(|e| StoreError::Db {
            context: "open",
            detail: e.to_string(),
        })?;
        let pool = pool_with(url, Limits::store(connections)).map_err(|detail| StoreError::Db {
            context: "open",
            detail,
        })?;
        schema::migrate(&pool, schema).await?;
        Ok(PgStore {
            pool,
            s: ident::quote(schema),
            written: Arc::new(AtomicU64::new(0)),
        })
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_err("connect", &self.pool))
    }

    fn count(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }

    /// Streams a query's rows in batches, mapped by `map`.
    fn stream<T, F>(
        &self,
        context: &'static str,
        sql: String,
        params: Vec<Box<dyn ToSql + Send + Sync>>,
        map: F,
    ) -> Batches<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&tokio_postgres::Row) -> Result<T, StoreError> + Send + Sync + 'static,
    {
        self.stream_rows(context, sql, params, STREAM_BATCH, move |r| map(r).map(std::iter::once))
    }

    /// Like `stream`, for rows that each hold many items (delta segments): one batch per row.
    fn stream_each<T, F>(
        &self,
        context: &'static str,
        sql: String,
        params: Vec<Box<dyn ToSql + Send + Sync>>,
        map: F,
    ) -> Batches<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&tokio_postgres::Row) -> Result<Vec<T>, StoreError> + Send + Sync + 'static,
    {
        self.stream_rows(context, sql, params, 1, map)
    }

    fn stream_rows<T, I, F>(
        &self,
        context: &'static str,
        sql: String,
        params: Vec<Box<dyn ToSql + Send + Sync>>,
        per_batch: usize,
        map: F,
    ) -> Batches<T, StoreError>
    where
        T: Send + 'static,
        I: IntoIterator<Item = T>,
        F: Fn(&tokio_postgres::Row) -> Result<I, StoreError> + Send + Sync + 'static,
    {
        let pool = self.pool.clone();
        spawn_batches(per_batch, move |mut out| async move {
            let client = pool.get().await.map_err(pool_err(context, &pool))?;
            let rows = client
                .query_raw(&sql, params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)))
                .await
                .map_err(pg_err(context))?;
            futures_util::pin_mut!(rows);
            while let Some(row) = rows.next().await {
                out.gather(map(&row.map_err(pg_err(context))?)?);
                if !out.send_full().await {
                    return Ok(());
                }
            }
            out.finish().await;
            Ok(())
        })
    }
}

/// Runs `produce` on a task of its own, streaming what it gives in batches of `per_batch`; its
/// error, if any, ends the stream.
fn spawn_batches<T, F, Fut>(per_batch: usize, produce: F) -> Batches<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(Batcher<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), StoreError>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let failed = tx.clone();
    tokio::spawn(async move {
        let out = Batcher {
            tx,
            batch: Vec::new(),
            per_batch,
        };
        if let Err(e) = produce(out).await {
            let _ = failed.send(Err(e)).await;
        }
    });
    rx
}

/// The sending end of [`spawn_batches`]: items gathered into batches.
struct Batcher<T> {
    tx: tokio::sync::mpsc::Sender<Result<Vec<T>, StoreError>>,
    batch: Vec<T>,
    per_batch: usize,
}

impl<T> Batcher<T> {
    /// Adds items to the batch being gathered.
    fn gather(&mut self, items: impl IntoIterator<Item = T>) {
        self.batch.extend(items);
    }

    /// Sends the batch if it is full; `false` once the reader is gone (stop producing).
    async fn send_full(&mut self) -> bool {
        self.batch.len() < self.per_batch || self.tx.send(Ok(std::mem::take(&mut self.batch))).await.is_ok()
    }

    /// Sends what is left.
    async fn finish(self) {
        if !self.batch.is_empty() {
            let _ = self.tx.send(Ok(self.batch)).await;
        }
    }
}

impl Store for PgStore {
    fn rows_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}
