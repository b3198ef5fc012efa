//! The configuration model: tenants → data sources, reports and destinations, validated once.
//!
//! TOML in Git is the source of truth; `signals config apply` stores it as a numbered version in
//! the store and every run records the version it started with. Every error names the file, the
//! tenant or destination, the data source and the field.

mod validate;

use super::secret_ref::SecretRef;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where change batches are delivered, by destination id.
    #[serde(default)]
    pub destinations: BTreeMap<String, Destination>,
    /// Tenants by tenant id.
    #[serde(default)]
    pub tenants: BTreeMap<String, Tenant>,
    /// How long history is kept.
    #[serde(default)]
    pub retention: Retention,
    /// When a run that stopped moving gets its next job queued again.
    #[serde(default)]
    pub recovery: Recovery,
}

/// A run whose jobs were lost — a queue that dropped or expired messages, an operator who purged
/// one — would otherwise hold its data source forever; the scheduler gives such a run its next
/// job again. Every stage is idempotent and an earlier attempt at a chunk is fenced, so a job
/// queued beside one that was only late costs work, never a change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    /// A run with no sign of work for this long (no progress, no job ended, no heartbeat from a
    /// running job, none deferred to a later time — a retry, a `Retry-After`, a sync window) and
    /// no job of it in the table queue is stalled (0: never).
    #[serde(default = "defaults::stalled_after_secs")]
    pub stalled_after_secs: u64,
}

impl Default for Recovery {
    fn default() -> Self {
        Recovery {
            stalled_after_secs: defaults::stalled_after_secs(),
        }
    }
}

/// Retention periods, pruned in the background in small steps so syncs never wait on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Finished runs (and their batches and delivery ledger), except each data source's latest.
    #[serde(default = "defaults::runs_days")]
    pub runs_days: u32,
    /// Delivery attempts of runs still kept.
    #[serde(default = "defaults::runs_days")]
    pub ledger_days: u32,
    /// Bodies of delivered batches.
    #[serde(default = "defaults::bodies_days")]
    pub batch_bodies_days: u32,
    /// Retried or dropped dead letters (open ones are kept until resolved).
    #[serde(default = "defaults::dead_letters_days")]
    pub dead_letters_days: u32,
    /// How often pruning runs.
    #[serde(default = "defaults::prune_interval_secs")]
    pub prune_interval_secs: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            runs_days: defaults::runs_days(),
            ledger_days: defaults::runs_days(),
            batch_bodies_days: defaults::bodies_days(),
            dead_letters_days: defaults::dead_letters_days(),
            prune_interval_secs: defaults::prune_interval_secs(),
        }
    }
}

/// A Data Push API endpoint and how batches are cut and retried for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Base URL; batches are POSTed to `{url}/v1/batches`.
    pub url: String,
    /// Authentication, by secret reference.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Most change records in one batch.
    #[serde(default = "defaults::batch_max_rows")]
    pub batch_max_rows: usize,
    /// Most bytes of change records in one batch body.
    #[serde(default = "defaults::batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Whole-request timeout.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per batch before it is dead-lettered.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt with full jitter.
    #[serde(default = "defaults::backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// Longest retry delay.
    #[serde(default = "defaults::backoff_cap_ms")]
    pub backoff_cap_ms: u64,
    /// Most requests in flight to this destination from one process (a 429/503 lowers the
    /// effective limit until successes raise it again).
    #[serde(default = "defaults::max_concurrency")]
    pub max_concurrency: usize,
    /// Bodies of at least this many bytes are sent gzip-compressed.
    #[serde(default = "defaults::gzip_min_bytes")]
    pub gzip_min_bytes: usize,
}

/// How requests authenticate; every credential is a secret reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// Token reference.
        token: SecretRef,
    },
    /// A custom header such as `X-Api-Key`.
    Header {
        /// Header name.
        name: String,
        /// Header value reference.
        value: SecretRef,
    },
    /// HTTP basic authentication.
    Basic {
        /// User name (not secret).
        username: String,
        /// Password reference.
        password: SecretRef,
    },
    /// TLS client certificate (mTLS): PEM certificate chain and PEM private key.
    Mtls {
        /// Certificate reference.
        cert: SecretRef,
        /// Private key reference.
        key: SecretRef,
    },
}

/// One customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Destination id the tenant's datasets are pushed to.
    pub destination: String,
    /// Database connections by name.
    #[serde(default)]
    pub connections: BTreeMap<String, Connection>,
    /// Data sources by id.
    #[serde(default)]
    pub sources: BTreeMap<String, DataSource>,
    /// Reports by name: the data sources each report needs (shared sources sync once).
    #[serde(default)]
    pub reports: BTreeMap<String, Vec<String>>,
    /// No new runs start for a paused tenant.
    #[serde(default)]
    pub paused: bool,
    /// Secret mixed into masked values, so they cannot be recomputed from guesses (default: the
    /// tenant id only).
    #[serde(default)]
    pub mask_salt: Option<SecretRef>,
    /// Most of this tenant's batches in flight at once from one process (default: the
    /// destination's `max_concurrency`), so one tenant's onboarding cannot take every slot.
    #[serde(default)]
    pub max_push_concurrency: Option<usize>,
}

/// A database a tenant's data sources read from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connection {
    /// A SQLite database file (not a secret: a path).
    #[serde(default)]
    pub sqlite_path: Option<PathBuf>,
    /// A connection URL or ADO.NET string, by secret reference (it usually holds a password).
    #[serde(default)]
    pub url: Option<SecretRef>,
    /// Most queries at once on this connection's server, shared by every data source of every
    /// tenant that reads from the same server, across all workers.
    #[serde(default)]
    pub max_concurrent_queries: Option<u32>,
    /// UTC hours in which heavy work (initial syncs, full diffs) may run, as `"22-6"`; other work
    /// runs at any hour.
    #[serde(default)]
    pub heavy_hours: Option<String>,
    /// Longest a single source query may run (seconds).
    #[serde(default)]
    pub statement_timeout_secs: Option<u64>,
}

/// How a data source's changes are found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiffMode {
    /// Read every row, hash it here, diff against staging (any source).
    #[default]
    Snapshot,
    /// The source hashes each row; only (key, hash) crosses the link, then changed rows by key.
    RemoteHash,
    /// Rows whose cursor column moved since the last run, plus a periodic full diff for deletes.
    Watermark,
    /// SQL Server change tracking: the keys `CHANGETABLE(CHANGES …)` lists since the stored
    /// version, deletes included; a full snapshot diff when that version is no longer valid.
    ChangeTracking,
}

impl DiffMode {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DiffMode::Snapshot => "snapshot",
            DiffMode::RemoteHash => "remote_hash",
            DiffMode::Watermark => "watermark",
            DiffMode::ChangeTracking => "change_tracking",
        }
    }
}

/// Parses `heavy_hours` (`"22-6"`: from 22:00 to 06:00 UTC) into (start, end) hours.
pub fn parse_hours(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('-')?;
    let (a, b): (u32, u32) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a < 24 && b <= 24 && a != b).then_some((a, b))
}

/// Whether `hour` (0-23, UTC) falls in the window `(start, end)`, which may wrap midnight.
pub fn in_window(hour: u32, (start, end): (u32, u32)) -> bool {
    if start < end {
        (start..end).contains(&hour)
    } else {
        hour >= start || hour < end
    }
}

/// One table or query kept in sync with one destination dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// Name of the tenant connection to read from.
    pub connection: String,
    /// Table to read (`schema.table` allowed); exactly one of `table` and `query`.
    #[serde(default)]
    pub table: Option<String>,
    /// Query to read; its result is treated like a table.
    #[serde(default)]
    pub query: Option<String>,
    /// Key columns that identify a row, in order.
    pub key: Vec<String>,
    /// Seconds between interval syncs.
    #[serde(default = "defaults::interval_secs")]
    pub interval_secs: u64,
    /// Destination dataset name (defaults to the data source id).
    #[serde(default)]
    pub dataset: Option<String>,
    /// Target rows per snapshot chunk (chunks run in parallel and restart independently).
    #[serde(default = "defaults::chunk_rows")]
    pub chunk_rows: u64,
    /// Accept column changes by re-sending every row in the new shape, instead of failing.
    #[serde(default)]
    pub accept_drift: bool,
    /// No new runs start for a paused data source.
    #[serde(default)]
    pub paused: bool,
    /// Reconcile with the destination this often (seconds; off when absent).
    #[serde(default)]
    pub verify_interval_secs: Option<u64>,
    /// When a periodic verification finds drift, re-send exactly the drifted keys.
    #[serde(default)]
    pub verify_repair: bool,
    /// How changes are found: `snapshot` (default), `remote_hash`, `watermark` or `change_tracking`.
    #[serde(default)]
    pub diff: DiffMode,
    /// The `watermark` mode's cursor: an `updated_at` timestamp or a monotonic integer (rowversion).
    #[serde(default)]
    pub watermark_column: Option<String>,
    /// Re-read this much before the cursor (seconds for timestamps, units for integers), for
    /// transactions in flight when the cursor was taken and clock skew.
    #[serde(default = "defaults::watermark_overlap")]
    pub watermark_overlap: i64,
    /// In `watermark` mode, a full key diff (finds hard deletes) at least this often.
    #[serde(default = "defaults::full_diff_interval_secs")]
    pub full_diff_interval_secs: u64,
    /// Columns never read from the source (never stored, never pushed).
    #[serde(default)]
    pub exclude_columns: Vec<String>,
    /// Columns replaced by a keyed hash as they are read (personal data): stored and pushed only
    /// masked. Changing either list is a controlled resync.
    #[serde(default)]
    pub mask_columns: Vec<String>,
}

impl DataSource {
    /// The destination dataset name.
    pub fn dataset_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.dataset.as_deref().unwrap_or(id)
    }
}

mod defaults {
    pub fn batch_max_rows() -> usize {
        5_000
    }
    pub fn batch_max_bytes() -> usize {
        4 * 1024 * 1024
    }
    pub fn timeout_ms() -> u64 {
        30_000
    }
    pub fn max_attempts() -> u32 {
        8
    }
    pub fn backoff_base_ms() -> u64 {
        500
    }
    pub fn backoff_cap_ms() -> u64 {
        60_000
    }
    pub fn interval_secs() -> u64 {
        300
    }
    pub fn chunk_rows() -> u64 {
        100_000
    }
    pub fn runs_days() -> u32 {
        90
    }
    pub fn bodies_days() -> u32 {
        7
    }
    pub fn dead_letters_days() -> u32 {
        30
    }
    pub fn prune_interval_secs() -> u64 {
        3_600
    }
    pub fn stalled_after_secs() -> u64 {
        1_800
    }
    pub fn watermark_overlap() -> i64 {
        60
    }
    pub fn full_diff_interval_secs() -> u64 {
        3_600
    }
    pub fn max_concurrency() -> usize {
        8
    }
    pub fn gzip_min_bytes() -> usize {
        64 * 1024
    }
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// File path.
        file: String,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML does not parse or does not fit the model. The offending text is not quoted:
    /// it may be a secret pasted where a reference belongs.
    #[error("{file}: line {line}, column {column}: {message}")]
    Parse {
        /// File path.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong (names the field, never echoes the value).
        message: String,
    },
    /// The model parsed but its contents are inconsistent.
    #[error("{file}: invalid configuration:\n  - {}", problems.join("\n  - "))]
    Invalid {
        /// File path.
        file: String,
        /// One line per problem, each naming where it is.
        problems: Vec<String>,
    },
    /// A job names a tenant the configuration does not have.
    #[error("unknown tenant `{tenant}` (config version {version})")]
    UnknownTenant {
        /// Tenant id.
        tenant: String,
        /// Config version consulted.
        version: i64,
    },
    /// A job names a data source the tenant does not have.
    #[error("tenant `{tenant}` has no data source `{source_id}` (config version {version})")]
    UnknownSource {
        /// Tenant id.
        tenant: String,
        /// Data source id.
        source_id: String,
        /// Config version consulted.
        version: i64,
    },
}

impl Config {
    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and validates TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start).min(text.len());
            let before = &text[..at];
            ConfigError::Parse {
                file: file.to_owned(),
                line: before.matches('\n').count() + 1,
                column: at - before.rfind('\n').map_or(0, |i| i + 1) + 1,
                message: e.message().to_owned(),
            }
        })?;
        let problems = config.problems();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                file: file.to_owned(),
                problems,
            })
        }
    }

    /// The tenant, or an error naming it.
    pub fn tenant(&self, tenant: &str, version: i64) -> Result<&Tenant, ConfigError> {
        self.tenants.get(tenant).ok_or_else(|| ConfigError::UnknownTenant {
            tenant: tenant.to_owned(),
            version,
        })
    }

    /// The data source, or an error naming what is missing.
    pub fn source(&self, tenant: &str, source: &str, version: i64) -> Result<&DataSource, ConfigError> {
        self.tenant(tenant, version)?
            .sources
            .get(source)
            .ok_or_else(|| ConfigError::UnknownSource {
                tenant: tenant.to_owned(),
                source_id: source.to_owned(),
                version,
            })
    }

    /// The data sources a set of reports needs, each once (all of the tenant's when `reports` is empty).
    pub fn sources_for_reports(&self, tenant: &str, reports: &[String], version: i64) -> Result<Vec<String>, String> {
        let t = self.tenant(tenant, version).map_err(|e| e.to_string())?;
        if reports.is_empty() {
            return Ok(t.sources.keys().cloned().collect());
        }
        let mut out = std::collections::BTreeSet::new();
        for r in reports {
            let list = t
                .reports
                .get(r)
                .ok_or_else(|| format!("tenant `{tenant}` has no report `{r}`"))?;
            out.extend(list.iter().cloned());
        }
        Ok(out.into_iter().collect())
    }
}

#[cfg(test)]
mod tests;
