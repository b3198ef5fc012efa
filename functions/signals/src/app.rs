//! Opening the store and building the handler context, once per command.

use anyhow::Context;
use signals_shared::backends::{self, Backend};
use signals_shared::connectors::DefaultConnectors;
use signals_shared::ctx::Ctx;
use signals_shared::domain::retry::RetryPolicy;
use signals_shared::ports::JobQueue;
use std::path::PathBuf;
use std::sync::Arc;

/// An error that ends the command with a specific exit code (e.g. verify found differences).
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// Which store to open: a SQLite path, a PostgreSQL URL, or a secret reference to one.
#[derive(Debug, Clone)]
pub struct StoreSpec {
    /// The `--store` value.
    pub spec: String,
    /// PostgreSQL schema of the store.
    pub schema: String,
    /// The `--queue` value: `table` or `sqs://PREFIX`.
    pub queue: String,
}

/// Opens (creating and migrating) the store.
pub async fn open_store(store: &StoreSpec) -> anyhow::Result<Arc<dyn Backend>> {
    open_store_with(store, backends::DEFAULT_STORE_CONNECTIONS).await
}

/// Opens the store for a host running jobs with `opts`: its pool serves them all.
pub async fn open_job_store(
    store: &StoreSpec,
    opts: &signals_shared::hosts::runner::RunnerOptions,
) -> anyhow::Result<Arc<dyn Backend>> {
    open_store_with(store, opts.store_connections()).await
}

async fn open_store_with(store: &StoreSpec, connections: usize) -> anyhow::Result<Arc<dyn Backend>> {
    // Never echo the spec itself: it may be a URL with a password.
    let shown = if backends::is_postgres(&store.spec) {
        "the PostgreSQL store"
    } else {
        store.spec.as_str()
    };
    backends::open_for(&store.spec, &store.schema, connections)
        .await
        .with_context(|| format!("cannot open {shown}"))
}

/// Opens the job queue the `--queue` option names (the store's table queue by default).
pub async fn open_queue(spec: &StoreSpec, store: &Arc<dyn Backend>) -> anyhow::Result<Arc<dyn JobQueue>> {
    backends::open_queue(&spec.queue, store)
        .await
        .with_context(|| format!("cannot open the job queue `{}`", spec.queue))
}

/// The handler context over the store; `jsonl` sends batches to a file instead (dry run).
pub fn context(store: Arc<dyn Backend>, jsonl: Option<PathBuf>, retry: RetryPolicy) -> Arc<Ctx> {
    let mut ctx = Ctx::new(store, Arc::new(DefaultConnectors::new(jsonl)));
    ctx.retry = retry;
    Arc::new(ctx)
}
