//! The default connectors: picks the source adapter for a tenant connection and the pusher for a
//! destination, by what this build was compiled with.

use crate::ctx::Connectors;
use crate::domain::config::{Destination, Tenant};
use crate::errors::{SourceError, StageError};
use crate::ports::{Pusher, SnapshotSource};
use crate::secrets::resolve;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Pushers by destination id, with the settings they were built from.
type PusherCache = Mutex<HashMap<String, (Destination, Arc<dyn Pusher>)>>;

/// The pool cached for `key` if it was built from the same connection string, else a new one.
fn cached<P: Clone>(
    pools: &Mutex<HashMap<String, (crate::secrets::Secret, P)>>,
    key: String,
    url: &crate::secrets::Secret,
    build: impl FnOnce() -> Result<P, SourceError>,
) -> Result<P, SourceError> {
    let mut pools = pools.lock().unwrap_or_else(|p| p.into_inner());
    match pools.get(&key) {
        Some((u, p)) if u.expose() == url.expose() => Ok(p.clone()),
        _ => {
            let p = build()?;
            pools.insert(key, (url.clone(), p.clone()));
            Ok(p)
        }
    }
}

/// Builds adapters from config; pushers are cached per destination (one HTTP connection pool).
#[derive(Default)]
pub struct DefaultConnectors {
    /// Send every batch to this JSONL file instead of the destinations (dry run).
    pub jsonl: Option<PathBuf>,
    pushers: PusherCache,
    /// Source pools by `tenant/connection`, with the URL they were built from.
    #[cfg(feature = "postgres")]
    pg_pools: Mutex<HashMap<String, (crate::secrets::Secret, deadpool_postgres::Pool)>>,
    /// SQL Server pools by `tenant/connection`, with the connection string they were built from.
    #[cfg(feature = "mssql")]
    mssql_pools: Mutex<HashMap<String, (crate::secrets::Secret, crate::mssql::pool::Pool)>>,
}

impl DefaultConnectors {
    /// Connectors, optionally in dry-run mode.
    pub fn new(jsonl: Option<PathBuf>) -> DefaultConnectors {
        DefaultConnectors {
            jsonl,
            ..Default::default()
        }
    }
}

impl Connectors for DefaultConnectors {
    fn source(
        &self,
        tenant_id: &str,
        tenant: &Tenant,
        connection: &str,
    ) -> Result<Arc<dyn SnapshotSource>, StageError> {
        let conn = tenant
            .connections
            .get(connection)
            .ok_or_else(|| StageError::NotFound(format!("tenant `{tenant_id}` has no connection `{connection}`")))?;
        if let Some(path) = &conn.sqlite_path {
            #[cfg(feature = "sqlite")]
            return Ok(Arc::new(crate::sqlite::source::SqliteSource::new(
                path.clone(),
                connection,
            )));
        }
        let url = match &conn.url {
            Some(r) => resolve(r)?,
            None => unreachable!("validated: a connection has a path or a url"),
        };
        let scheme = url.expose().split(':').next().unwrap_or("").to_ascii_lowercase();
        let key = format!("{tenant_id}/{connection}");
        let connect_err = |detail: String| SourceError::Connect {
            connection: connection.to_owned(),
            detail,
        };
        #[cfg(feature = "postgres")]
        if crate::backends::is_postgres(url.expose()) {
            let pool = cached(&self.pg_pools, key, &url, || {
                crate::postgres::pool::pool(url.expose(), 8).map_err(connect_err)
            })?;
            let timeout = conn.statement_timeout_secs;
            return Ok(Arc::new(
                crate::postgres::source::PgSource::new(pool, connection).with_statement_timeout(timeout),
            ));
        }
        #[cfg(feature = "mssql")]
        if crate::mssql::is_mssql(url.expose()) {
            let pool = cached(&self.mssql_pools, key, &url, || {
                let spec =
                    crate::mssql::conn_str::ConnSpec::parse(url.expose()).map_err(|e| connect_err(e.to_string()))?;
                Ok(crate::mssql::pool::Pool::new(spec, 8))
            })?;
            return Ok(Arc::new(crate::mssql::source::MssqlSource::new(pool, connection)));
        }
        #[cfg(feature = "sqlite")]
        if scheme == "sqlite" {
            let path = url.expose()["sqlite:".len()..].trim_start_matches("//");
            return Ok(Arc::new(crate::sqlite::source::SqliteSource::new(
                path.into(),
                connection,
            )));
        }
        Err(SourceError::Connect {
            connection: connection.to_owned(),
            detail: format!("this build has no source adapter for `{scheme}:` connections"),
        }
        .into())
    }

    fn server_of(&self, tenant_id: &str, tenant: &Tenant, connection: &str) -> Result<String, StageError> {
        let conn = tenant
            .connections
            .get(connection)
            .ok_or_else(|| StageError::NotFound(format!("tenant `{tenant_id}` has no connection `{connection}`")))?;
        if let Some(path) = &conn.sqlite_path {
            return Ok(format!("sqlite:{}", path.display()));
        }
        let url = match &conn.url {
            Some(r) => resolve(r)?,
            None => unreachable!("validated: a connection has a path or a url"),
        };
        #[cfg(feature = "postgres")]
        if crate::backends::is_postgres(url.expose()) {
            if let Ok(c) = url.expose().parse::<tokio_postgres::Config>() {
                let host = match c.get_hosts().first() {
                    Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                    #[cfg(unix)]
                    Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
                    None => "localhost".into(),
                };
                let port = c.get_ports().first().copied().unwrap_or(5432);
                return Ok(format!("postgres://{host}:{port}/{}", c.get_dbname().unwrap_or("")));
            }
        }
        #[cfg(feature = "mssql")]
        if crate::mssql::is_mssql(url.expose()) {
            return crate::mssql::conn_str::ConnSpec::parse(url.expose())
                .map(|s| s.describe())
                .map_err(|e| {
                    SourceError::Connect {
                        connection: connection.to_owned(),
                        detail: e.to_string(),
                    }
                    .into()
                });
        }
        // Unknown kinds: the scheme and host part only, never credentials.
        let shown = url
            .expose()
            .split('@')
            .next_back()
            .unwrap_or("")
            .split(['/', '?', ';'])
            .next()
            .unwrap_or("");
        Ok(shown.to_owned())
    }

    fn pusher(&self, destination_id: &str, destination: &Destination) -> Result<Arc<dyn Pusher>, StageError> {
        let mut cache = self.pushers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((d, p)) = cache.get(destination_id) {
            if d == destination {
                return Ok(p.clone());
            }
        }
        let pusher: Arc<dyn Pusher> = match &self.jsonl {
            Some(path) => Arc::new(crate::sink::jsonl::JsonlSink::new(path.clone())),
            #[cfg(feature = "http-sink")]
            None => Arc::new(crate::sink::http::HttpPusher::new(destination)?),
            #[cfg(not(feature = "http-sink"))]
            None => {
                return Err(crate::errors::PushError::Setup("this build has no HTTP sink".into()).into());
            }
        };
        cache.insert(destination_id.to_owned(), (destination.clone(), pusher.clone()));
        Ok(pusher)
    }
}
