//! A SQLite database file shared by async code: one writer connection behind a mutex (SQLite has
//! one writer anyway), short-lived reader connections for streams, all on blocking threads.

use crate::errors::StoreError;
use crate::ports::Batches;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Rows per message on a read stream: large enough to amortise channel costs, small enough to
/// keep memory flat.
pub const STREAM_BATCH: usize = 2_000;

/// Maps a driver error into a store error with context.
pub fn db_err(context: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::Db {
        context,
        detail: e.to_string(),
    }
}

/// Opens a connection with the settings every connection here uses.
pub fn connect(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(60))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    conn.pragma_update(None, "cache_size", -32_000)?;
    Ok(conn)
}

/// A database file with a serialised writer and counted writes.
#[derive(Clone)]
pub struct Db {
    path: PathBuf,
    writer: Arc<Mutex<Connection>>,
    written: Arc<AtomicU64>,
}

impl Db {
    /// Opens (creating if needed) and runs `migrate` on the writer connection.
    pub fn open(path: &Path, migrate: impl FnOnce(&mut Connection) -> rusqlite::Result<()>) -> Result<Db, StoreError> {
        let mut conn = connect(path, false).map_err(db_err("open"))?;
        migrate(&mut conn).map_err(db_err("migrate"))?;
        Ok(Db {
            path: path.to_owned(),
            writer: Arc::new(Mutex::new(conn)),
            written: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows inserted, updated or deleted through this handle.
    pub fn rows_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Runs `f` in one IMMEDIATE transaction on the writer, committing if it returns Ok.
    pub async fn write<T, F>(&self, context: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction) -> rusqlite::Result<T> + Send + 'static,
    {
        let writer = self.writer.clone();
        let written = self.written.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            let before = conn.total_changes();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            written.fetch_add(conn.total_changes().saturating_sub(before), Ordering::Relaxed);
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Db {
            context,
            detail: format!("worker thread failed: {e}"),
        })?
        .map_err(db_err(context))
    }

    /// Runs a read on the writer connection (short reads; streams use their own connection).
    pub async fn read<T, F>(&self, context: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Db {
            context,
            detail: format!("worker thread failed: {e}"),
        })?
        .map_err(db_err(context))
    }

    /// Streams a query's rows in batches on a fresh read connection.
    pub fn stream<T, F>(
        &self,
        context: &'static str,
        sql: String,
        params: Vec<rusqlite::types::Value>,
        map: F,
    ) -> Batches<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T> + Send + 'static,
    {
        self.stream_rows(context, sql, params, STREAM_BATCH, move |r| map(r).map(std::iter::once))
    }

    /// Like `stream`, for rows that each hold many items (delta segments): one batch per row.
    pub fn stream_each<T, F>(
        &self,
        context: &'static str,
        sql: String,
        params: Vec<rusqlite::types::Value>,
        map: F,
    ) -> Batches<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&rusqlite::Row<'_>) -> rusqlite::Result<Vec<T>> + Send + 'static,
    {
        self.stream_rows(context, sql, params, 1, map)
    }

    fn stream_rows<T, I, F>(
        &self,
        context: &'static str,
        sql: String,
        params: Vec<rusqlite::types::Value>,
        per_batch: usize,
        map: F,
    ) -> Batches<T, StoreError>
    where
        T: Send + 'static,
        I: IntoIterator<Item = T>,
        F: Fn(&rusqlite::Row<'_>) -> rusqlite::Result<I> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let run = || -> rusqlite::Result<()> {
                let conn = connect(&path, true)?;
                let mut stmt = conn.prepare(&sql)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
                let mut batch = Vec::new();
                while let Some(row) = rows.next()? {
                    batch.extend(map(row)?);
                    if batch.len() >= per_batch && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                        return Ok(()); // the consumer stopped listening
                    }
                }
                if !batch.is_empty() {
                    let _ = tx.blocking_send(Ok(batch));
                }
                Ok(())
            };
            if let Err(e) = run() {
                let _ = tx.blocking_send(Err(db_err(context)(e)));
            }
        });
        rx
    }
}
