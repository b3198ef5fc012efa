//! What a stage handler gets: the store, the connectors, and config versions (cached, immutable).

use crate::domain::config::{Config, DataSource, Destination, Tenant};
use crate::domain::retry::RetryPolicy;
use crate::errors::{StageError, StoreError};
use crate::ports::{Pusher, SnapshotSource, SourceSpec, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Builds adapters for a tenant's connections and destinations.
pub trait Connectors: Send + Sync {
    /// The source behind a tenant connection.
    fn source(&self, tenant_id: &str, tenant: &Tenant, connection: &str)
        -> Result<Arc<dyn SnapshotSource>, StageError>;
    /// A name for the server behind a connection, without credentials: query slots are counted
    /// per server, whichever tenant or connection name reaches it.
    fn server_of(&self, tenant_id: &str, tenant: &Tenant, connection: &str) -> Result<String, StageError>;
    /// The pusher for a destination.
    fn pusher(&self, destination_id: &str, destination: &Destination) -> Result<Arc<dyn Pusher>, StageError>;
}

/// Retry policy of every stage but push (push follows its destination's settings).
pub const DEFAULT_RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 5,
    base: Duration::from_secs(1),
    cap: Duration::from_secs(60),
};

/// Shared by every job a host runs.
pub struct Ctx {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Adapter factory.
    pub connectors: Arc<dyn Connectors>,
    /// Retry policy for non-push stages (tests shorten it).
    pub retry: RetryPolicy,
    /// Whether a merge job cuts the run's batches beside the merge (decision 0019); off, the
    /// batch stage cuts them after it, as the benchmark's stage-by-stage figures need.
    pub cut_beside_merge: bool,
    /// Whether a run planned with nothing staged for its data source has its chunks number
    /// and cut their own batches as they commit (decision 0025); off, it takes the snapshot,
    /// merge and batch stages one after another, as the benchmark's stage-by-stage figures and
    /// the tests of those stages need.
    pub number_at_commit: bool,
    /// One cut beside a merge at a time: it is for the core a single large run leaves idle.
    /// When several runs merge at once the cores are busy anyway, and each such job holds two
    /// more store connections and a few bodies (decision 0019).
    cuts_beside: tokio::sync::Semaphore,
    configs: Mutex<HashMap<i64, Arc<Config>>>,
}

impl Ctx {
    /// A context over a store and connectors.
    pub fn new(store: Arc<dyn Store>, connectors: Arc<dyn Connectors>) -> Ctx {
        Ctx {
            store,
            connectors,
            retry: DEFAULT_RETRY,
            cut_beside_merge: true,
            number_at_commit: true,
            cuts_beside: tokio::sync::Semaphore::new(1),
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// A config version, parsed once and cached (versions never change).
    pub async fn config(&self, version: i64) -> Result<Arc<Config>, StageError> {
        if let Some(c) = self.configs.lock().unwrap_or_else(|p| p.into_inner()).get(&version) {
            return Ok(c.clone());
        }
        let toml = self
            .store
            .config_version(version)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                what: "config version",
                detail: format!("version {version} is not in the store"),
            })?;
        let config = Arc::new(Config::parse(&toml, &format!("config version {version}"))?);
        self.configs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(version, config.clone());
        Ok(config)
    }

    /// Leave for a merge job to cut beside its merge, held until the cut ends; `None` when
    /// turned off or another merge job of this host is cutting.
    pub fn cut_beside(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.cut_beside_merge
            .then(|| self.cuts_beside.try_acquire().ok())
            .flatten()
    }

    /// The latest config version, if any was applied.
    pub async fn latest_config(&self) -> Result<Option<(i64, Arc<Config>)>, StageError> {
        match self.store.latest_config_version().await? {
            None => Ok(None),
            Some(v) => Ok(Some((v, self.config(v).await?))),
        }
    }

    /// The source adapter and spec of a data source.
    pub fn source_for(
        &self,
        config: &Config,
        tenant: &str,
        source: &str,
        version: i64,
    ) -> Result<(Arc<dyn SnapshotSource>, SourceSpec, DataSource), StageError> {
        let t = config.tenant(tenant, version)?;
        let ds = config.source(tenant, source, version)?.clone();
        let mut src = self.connectors.source(tenant, t, &ds.connection)?;
        let limit = t.connections.get(&ds.connection).and_then(|c| c.max_concurrent_queries);
        if let Some(limit) = limit {
            let server = self.connectors.server_of(tenant, t, &ds.connection)?;
            let slots: Arc<dyn crate::ports::SlotStore> = self.store.clone();
            src = Arc::new(crate::limits::LimitedSource::new(src, slots, server, limit));
        }
        let spec = SourceSpec {
            table: ds.table.clone(),
            query: ds.query.clone(),
            key: ds.key.clone(),
            exclude: ds.exclude_columns.clone(),
        };
        if !ds.mask_columns.is_empty() {
            let salt = match &t.mask_salt {
                Some(r) => crate::secrets::resolve(r)?.expose().as_bytes().to_vec(),
                None => tenant.as_bytes().to_vec(),
            };
            src = Arc::new(crate::privacy::MaskedSource::new(src, ds.mask_columns.clone(), salt));
        }
        Ok((src, spec, ds))
    }

    /// The destination of a tenant.
    pub fn destination<'a>(
        &self,
        config: &'a Config,
        tenant: &str,
        version: i64,
    ) -> Result<(&'a str, &'a Destination), StageError> {
        let t = config.tenant(tenant, version)?;
        let d = config
            .destinations
            .get_key_value(&t.destination)
            .expect("validated: every tenant's destination exists");
        Ok((d.0.as_str(), d.1))
    }
}
