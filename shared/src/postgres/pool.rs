//! Connection pools: one per database URL, connecting lazily, errors that never echo the URL
//! (it holds a password).

use crate::errors::StoreError;
use deadpool_postgres::{Hook, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime, Timeouts};
use std::time::Duration;
use tokio_postgres::NoTls;

/// How long a new connection may take, the TCP connect and the server's answer to the startup
/// together: a host that drops packets, or a listener that never answers, would otherwise hold
/// a job until the kernel gives up on the socket (minutes), with nothing said.
pub const CONNECT_WITHIN: Duration = Duration::from_secs(30);

/// A pool's size and how long its users wait.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections at most.
    pub connections: usize,
    /// How long a caller waits for a free connection; `None` waits as long as it takes (a
    /// source's readers: each job holds one at a time, so waiting is only queueing).
    pub wait: Option<Duration>,
    /// How long a new connection may take.
    pub connect: Duration,
}

impl Limits {
    /// A source's pool: waiting callers queue; a connection that cannot be made fails in time.
    pub fn queueing(connections: usize) -> Limits {
        Limits {
            connections,
            wait: None,
            connect: CONNECT_WITHIN,
        }
    }

    /// The store's pool: a wait beyond [`crate::backends::STORE_WAIT`] is an error.
    pub fn store(connections: usize) -> Limits {
        Limits {
            wait: Some(crate::backends::STORE_WAIT),
            ..Limits::queueing(connections)
        }
    }
}

/// Settings for each new session, set in the session rather than as startup options so a pooler
/// that refuses startup parameters still connects; a server without a setting keeps its default.
///
/// - The JIT off. Our statements are short or stream rows in key order, and the planner's cost
///   for a staging read of one data source is the whole partitioned table's (the source is known
///   only when the statement runs): on a store holding twelve 1,000,000-row sources a tenant's
///   staging read of under 1,000 rows spent ~220 ms compiling (`pg_stat_statements`,
///   docs/performance-history.md).
/// - The plan cache left to the server: the store's prepared statements run on a generic plan
///   once five runs have shown it costs no more, and those whose generic plan could be bad are
///   written to have none (decision 0028; forcing custom plans cost 3% of an onboarding's CPU).
/// - Notices not sent. `CREATE … IF NOT EXISTS` in every migration run answers "already exists,
///   skipping", which the driver logs: every CLI command printed two such lines.
fn session_settings() -> Hook {
    Hook::async_fn(|client, _| {
        Box::pin(async move {
            for setting in ["SET jit = off", "SET client_min_messages = warning"] {
                if let Err(e) = client.batch_execute(setting).await {
                    tracing::debug!(error = %e, setting, "the server kept its default");
                }
            }
            Ok(())
        })
    })
}

/// Builds a pool for a connection URL or key=value string whose callers queue for a connection.
pub fn pool(url: &str, max_size: usize) -> Result<Pool, String> {
    pool_with(url, Limits::queueing(max_size))
}

/// Builds a pool for a connection URL or key=value string within `limits`.
pub fn pool_with(url: &str, limits: Limits) -> Result<Pool, String> {
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
        .max_size(limits.connections.max(1))
        .post_create(session_settings())
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: limits.wait,
            create: Some(limits.connect),
            recycle: None,
        })
        .build()
        .map_err(|e| e.to_string())
}

/// What went wrong getting a connection from `pool`, in words that say what to do: deadpool's
/// own ("Timeout occurred while waiting for a slot") name neither the wait nor the pool.
pub fn pool_failure(pool: &Pool, e: PoolError) -> String {
    let (t, size) = (pool.timeouts(), pool.status().max_size);
    match e {
        PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
            crate::backends::pool_exhausted(t.wait.unwrap_or_default(), size)
        }
        PoolError::Timeout(deadpool_postgres::TimeoutType::Create) => format!(
            "the database did not complete a connection within {}s (unreachable, or not answering)",
            t.create.unwrap_or_default().as_secs_f64()
        ),
        PoolError::Backend(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// Maps a driver error to a store error with context (the driver never includes the password).
pub fn pg_err(context: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::Db {
        context,
        detail: e.as_db_error().map_or_else(|| e.to_string(), |d| d.to_string()),
    }
}

/// Maps a pool error of `pool`.
pub fn pool_err<'a>(context: &'static str, pool: &'a Pool) -> impl Fn(PoolError) -> StoreError + 'a {
    move |e| StoreError::Db {
        context,
        detail: pool_failure(pool, e),
    }
}
