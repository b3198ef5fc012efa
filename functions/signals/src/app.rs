//! Opening the store and building the handler context, once per command.

use anyhow::Context;
use signals_shared::connectors::DefaultConnectors;
use signals_shared::ctx::Ctx;
use signals_shared::sqlite::store::SqliteStore;
use std::path::{Path, PathBuf};
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

/// Opens (creating and migrating) the store.
pub fn open_store(path: &Path) -> anyhow::Result<Arc<SqliteStore>> {
    Ok(Arc::new(SqliteStore::open(path).with_context(|| {
        format!("cannot open the store at {}", path.display())
    })?))
}

/// The handler context over the store; `jsonl` sends batches to a file instead (dry run).
pub fn context(store: Arc<SqliteStore>, jsonl: Option<PathBuf>) -> Arc<Ctx> {
    Arc::new(Ctx::new(store, Arc::new(DefaultConnectors::new(jsonl))))
}
