//! Opening the store a host was pointed at: a SQLite file (embedded default), a PostgreSQL
//! database or a SQL Server one, named directly or through a secret reference (the URL or
//! connection string usually holds a password).

use crate::domain::secret_ref::SecretRef;
use crate::errors::StoreError;
pub use crate::ports::Backend;
use std::sync::Arc;

/// Default PostgreSQL schema of the store.
pub const DEFAULT_PG_SCHEMA: &str = "signals";

/// Store connections of a process that runs no jobs of its own (the CLI's commands), and the
/// least a job host gets.
pub const DEFAULT_STORE_CONNECTIONS: usize = 16;

/// How long a job waits for one of the store's connections before it fails (and is retried). A
/// host sizes its pool for the jobs it runs at once (`RunnerOptions::store_connections`), so a
/// wait this long means something holds connections it should not: an error that says so beats
/// a host waiting on itself for ever (jobs holding one connection each while waiting for a
/// second).
pub const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// What a store error says when every connection stayed in use for `wait`.
pub fn pool_exhausted(wait: std::time::Duration, connections: usize) -> String {
    format!(
        "no connection came free within {}s: all {connections} of this host's connections stayed in use \
         (another job holds them, or the host runs more jobs at once than its pool serves)",
        wait.as_secs_f64()
    )
}

/// Opens `spec`: `postgres://…` / `postgresql://…` / `host=… ` strings, ADO.NET SQL Server
/// strings (`Server=…;…`), `env:NAME`, `file:PATH` or `aws-sm:ARN[#field]` holding one of those,
/// or else a SQLite file path. `pg_schema` names the PostgreSQL or SQL Server schema (created and
/// migrated on first use).
pub async fn open(spec: &str, pg_schema: &str) -> Result<Arc<dyn Backend>, StoreError> {
    open_for(spec, pg_schema, DEFAULT_STORE_CONNECTIONS).await
}

/// [`open`] for a host that runs jobs: a server store's pool holds `connections`
/// (`RunnerOptions::store_connections`).
pub async fn open_for(spec: &str, pg_schema: &str, connections: usize) -> Result<Arc<dyn Backend>, StoreError> {
    let resolved;
    let target = if spec.starts_with("env:") || spec.starts_with("file:") || spec.starts_with("aws-sm:") {
        let r = SecretRef::try_from(spec.to_owned()).map_err(|detail| StoreError::Db {
            context: "open",
            detail,
        })?;
        resolved = crate::secrets::resolve(&r).map_err(|e| StoreError::Db {
            context: "open",
            detail: e.to_string(),
        })?;
        resolved.expose()
    } else {
        spec
    };
    if is_postgres(target) {
        #[cfg(feature = "postgres")]
        return Ok(Arc::new(
            crate::postgres::store::PgStore::connect(target, pg_schema, connections).await?,
        ));
        #[cfg(not(feature = "postgres"))]
        return Err(StoreError::Db {
            context: "open",
            detail: "this build has no PostgreSQL store".into(),
        });
    }
    #[cfg(feature = "mssql")]
    if crate::mssql::is_mssql(target) {
        return Ok(Arc::new(
            crate::mssql::store::MssqlStore::connect(target, pg_schema, connections).await?,
        ));
    }
    let _ = (pg_schema, connections);
    #[cfg(feature = "sqlite")]
    return Ok(Arc::new(crate::sqlite::store::SqliteStore::open(
        std::path::Path::new(target),
    )?));
    #[cfg(not(feature = "sqlite"))]
    Err(StoreError::Db {
        context: "open",
        detail: "this build has no SQLite store".into(),
    })
}

/// Opens the job queue `spec` names: `table` (or empty) is the store's own table queue;
/// `sqs://PREFIX` is one Amazon SQS queue per stage; `azure://ACCOUNT/PREFIX` one Azure Storage
/// queue per stage.
pub async fn open_queue(spec: &str, store: &Arc<dyn Backend>) -> Result<Arc<dyn crate::ports::JobQueue>, StoreError> {
    match spec {
        "" | "table" => Ok(store.clone()),
        #[cfg(feature = "sqs")]
        s if s.starts_with("sqs://") => Ok(Arc::new(crate::sqs::SqsQueue::connect(s).await?)),
        #[cfg(feature = "azure-queue")]
        s if s.starts_with("azure://") => Ok(Arc::new(crate::azure_queue::AzureQueue::connect(s).await?)),
        other => Err(StoreError::Db {
            context: "open queue",
            detail: format!(
                "unknown queue `{other}`: expected `table`, `sqs://PREFIX` or `azure://ACCOUNT/PREFIX` \
                 (this build: SQS {}, Azure {})",
                if cfg!(feature = "sqs") { "yes" } else { "no" },
                if cfg!(feature = "azure-queue") { "yes" } else { "no" }
            ),
        }),
    }
}

/// Whether a connection string names PostgreSQL.
pub fn is_postgres(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://") || s.trim_start().starts_with("host=")
}
