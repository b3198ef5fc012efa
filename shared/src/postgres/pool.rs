//! Connection pools: one per database URL, connecting lazily, errors that never echo the URL
//! (it holds a password).

use crate::errors::StoreError;
use deadpool_postgres::{Hook, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

/// Turns the JIT off for each new session. Our statements are short or stream rows in key
/// order, and the planner's cost for a staging read of one data source is the whole partitioned
/// table's (the source is known only when the statement runs): on a store holding twelve
/// 1,000,000-row sources a tenant's staging read of under 1,000 rows spent ~220 ms compiling
/// (`pg_stat_statements`, docs/performance.md). Set in the session, not as a startup option, so
/// a pooler that refuses startup parameters still connects; a server without the setting keeps
/// its default.
fn jit_off() -> Hook {
    Hook::async_fn(|client, _| {
        Box::pin(async move {
            if let Err(e) = client.batch_execute("SET jit = off").await {
                tracing::debug!(error = %e, "the server kept its JIT setting");
            }
            Ok(())
        })
    })
}

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
        .post_create(jit_off())
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
