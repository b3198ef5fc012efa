//! The SQL Server store: the PostgreSQL store's contract on SQL Server or Azure SQL Database —
//! the staging schema created and migrated by the program, staging keyed by a compact source id,
//! merges bulk-loaded into a session temp table and applied as set-based statements in one
//! transaction, and a table queue claimed with `UPDLOCK, READPAST, ROWLOCK`.
//!
//! Large values (delta segments, batch bodies) never travel through the bulk-load path: tiberius
//! cannot bulk-load values longer than 64 KiB into `(max)` columns (tiberius-rs/tiberius#322), so
//! each goes as one parameter of its own statement, and bulk loads carry only keys and hashes
//! (docs/decisions/0012-sqlserver-store.md).

mod batches;
mod config;
mod dlq;
mod merge;
mod numbered;
mod operator;
mod queue;
mod runs;
mod schema;
mod session;
mod slots;
mod staging;

use super::conn_str::ConnSpec;
use super::pool::Pool;
use crate::domain::ident;
use crate::errors::StoreError;
use crate::ports::Store;
use crate::ports::{from_ms, now_ms};
use session::Session;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The store in one SQL Server schema.
#[derive(Clone)]
pub struct MssqlStore {
    pool: Pool,
    /// Bracket-quoted schema name, prefixed to every table.
    s: String,
    written: Arc<AtomicU64>,
    /// Compact ids of (tenant, data source) pairs, once looked up.
    sids: Arc<Mutex<HashMap<(String, String), i32>>>,
}

impl MssqlStore {
    /// Connects (lazily, through a pool of `connections` unless the string's `Max Pool Size`
    /// says otherwise) and migrates `schema`.
    pub async fn connect(conn_str: &str, schema: &str, connections: usize) -> Result<MssqlStore, StoreError> {
        let open = |detail: String| StoreError::Db {
            context: "open",
            detail,
        };
        ident::validate(schema, "store schema").map_err(|e| open(e.to_string()))?;
        let spec = ConnSpec::parse(conn_str).map_err(|e| open(e.to_string()))?;
        if spec.max_pool_size.is_some_and(|n| n < 2) {
            // A merge reads the run's segments on one connection while loading `#delta` on another.
            return Err(open(
                "`Max Pool Size` must be at least 2 for a store (16 when it is not set)".into(),
            ));
        }
        let pool = Pool::waiting(spec, connections, Some(crate::backends::STORE_WAIT));
        let s = super::ident::quote(schema);
        schema::migrate(&pool, schema, &s).await?;
        Ok(MssqlStore {
            pool,
            s,
            written: Arc::new(AtomicU64::new(0)),
            sids: Arc::default(),
        })
    }

    /// A connection for one piece of work (`context` names it in errors).
    async fn session(&self, context: &'static str) -> Result<Session, StoreError> {
        Session::open(&self.pool, context).await
    }

    fn count(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }

    /// `sql` with `{s}` replaced by the schema.
    fn q(&self, sql: &str) -> String {
        sql.replace("{s}", &self.s)
    }
}

impl Store for MssqlStore {
    fn rows_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}
