//! The SQLite store (embedded default): config versions, runs, staging, deltas, batches, the
//! delivery ledger, dead letters and the table queue, in one database file.

mod batches;
mod config;
mod dlq;
mod numbered;
mod operator;
mod queue;
mod runs;
mod schema;
mod slots;
mod staging;

use super::db::Db;
use crate::errors::StoreError;
use crate::ports::Store;
use crate::ports::{from_ms, now_ms};
use std::path::Path;

/// The store on one SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    db: Db,
}

impl SqliteStore {
    /// Opens or creates the store, migrating its schema.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        Ok(SqliteStore {
            db: Db::open(path, schema::migrate)?,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        self.db.path()
    }
}

impl Store for SqliteStore {
    fn rows_written(&self) -> u64 {
        self.db.rows_written()
    }
}
