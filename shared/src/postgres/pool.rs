//! Connection pools: one per database URL, connecting lazily, errors that never echo the URL
//! (it holds a password).

use crate::errors::StoreError;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

/// Builds a pool for a connection URL or key=value string.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, String> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("invalid PostgreSQL connection string: {e}"))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(max_size)
        .build()
        .map_err(|e| e.to_string())
}

/// Maps a driver error to a store error with context (the driver never includes the password).
pub fn pg_err(context: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Db {
        context,
        detail: e.as_db_error().map_or_else(|| e.to_string(), |d| d.to_string()),
    }
}

/// Maps a pool error.
pub fn pool_err(context: &'static str) -> impl Fn(deadpool_postgres::PoolError) -> StoreError {
    move |e| StoreError::Db {
        context,
        detail: e.to_string(),
    }
}
