//! The configuration model: tenants → data sources, reports and destinations, validated once.
//!
//! TOML in Git is the source of truth; `signals config apply` stores it as a numbered version in
//! the store and every run records the version it started with. Every error names the file, the
//! tenant or destination, the data source and the field.

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
}

impl DiffMode {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DiffMode::Snapshot => "snapshot",
            DiffMode::RemoteHash => "remote_hash",
            DiffMode::Watermark => "watermark",
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
    /// How changes are found: `snapshot` (default), `remote_hash` or `watermark`.
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

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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

    /// Every inconsistency, each naming its place as `tenant `t`, data source `s`, field `f``.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (id, d) in &self.destinations {
            let at = format!("destination `{id}`");
            if !valid_id(id) {
                p.push(format!("{at}: id must be 1-64 of a-z, 0-9, `_`, `-`"));
            }
            if !(d.url.starts_with("http://") || d.url.starts_with("https://")) {
                p.push(format!("{at}, field `url`: must start with http:// or https://"));
            }
            if d.batch_max_rows == 0 {
                p.push(format!("{at}, field `batch_max_rows`: must be at least 1"));
            }
            if d.batch_max_bytes < 1024 {
                p.push(format!("{at}, field `batch_max_bytes`: must be at least 1024"));
            }
            if d.max_attempts == 0 {
                p.push(format!("{at}, field `max_attempts`: must be at least 1"));
            }
            if d.max_concurrency == 0 {
                p.push(format!("{at}, field `max_concurrency`: must be at least 1"));
            }
        }
        for (tid, t) in &self.tenants {
            let at = format!("tenant `{tid}`");
            if !valid_id(tid) {
                p.push(format!("{at}: id must be 1-64 of a-z, 0-9, `_`, `-`"));
            }
            if !self.destinations.contains_key(&t.destination) {
                p.push(format!("{at}, field `destination`: no destination `{}`", t.destination));
            }
            for (cid, c) in &t.connections {
                if c.sqlite_path.is_some() == c.url.is_some() {
                    p.push(format!(
                        "{at}, connection `{cid}`: set exactly one of `sqlite_path` and `url`"
                    ));
                }
                if c.max_concurrent_queries == Some(0) {
                    p.push(format!(
                        "{at}, connection `{cid}`, field `max_concurrent_queries`: must be at least 1"
                    ));
                }
                if c.heavy_hours.as_deref().is_some_and(|h| parse_hours(h).is_none()) {
                    p.push(format!(
                        "{at}, connection `{cid}`, field `heavy_hours`: expected UTC hours like \"22-6\""
                    ));
                }
            }
            let mut datasets = BTreeMap::new();
            for (sid, s) in &t.sources {
                let at = format!("{at}, data source `{sid}`");
                if !valid_id(sid) {
                    p.push(format!("{at}: id must be 1-64 of a-z, 0-9, `_`, `-`"));
                }
                if !t.connections.contains_key(&s.connection) {
                    p.push(format!("{at}, field `connection`: no connection `{}`", s.connection));
                }
                if s.table.is_some() == s.query.is_some() {
                    p.push(format!("{at}: set exactly one of `table` and `query`"));
                }
                if s.key.is_empty() {
                    p.push(format!("{at}, field `key`: name at least one key column"));
                }
                for k in &s.key {
                    if let Err(e) = super::ident::validate(k, "key column") {
                        p.push(format!("{at}, field `key`: {e}"));
                    }
                }
                for c in s.exclude_columns.iter().chain(&s.mask_columns) {
                    if let Err(e) = super::ident::validate(c, "column") {
                        p.push(format!("{at}, field `exclude_columns`/`mask_columns`: {e}"));
                    }
                    if s.key.contains(c) {
                        p.push(format!("{at}: key column `{c}` cannot be excluded or masked"));
                    }
                }
                if s.diff == DiffMode::Watermark {
                    match &s.watermark_column {
                        None => p.push(format!(
                            "{at}, field `watermark_column`: `diff = \"watermark\"` needs the cursor column"
                        )),
                        Some(c) => {
                            if let Err(e) = super::ident::validate(c, "watermark column") {
                                p.push(format!("{at}, field `watermark_column`: {e}"));
                            }
                        }
                    }
                }
                if s.diff == DiffMode::RemoteHash
                    && t.connections
                        .get(&s.connection)
                        .is_some_and(|c| c.sqlite_path.is_some())
                {
                    p.push(format!(
                        "{at}, field `diff`: `remote_hash` needs a server source (PostgreSQL, SQL Server), not SQLite"
                    ));
                }
                if let Some(t) = &s.table {
                    if let Err(e) = super::ident::qualified(t, "table") {
                        p.push(format!("{at}, field `table`: {e}"));
                    }
                }
                if s.interval_secs == 0 {
                    p.push(format!("{at}, field `interval_secs`: must be at least 1"));
                }
                if s.chunk_rows < 1000 {
                    p.push(format!("{at}, field `chunk_rows`: must be at least 1000"));
                }
                if let Some(other) = datasets.insert(s.dataset_name(sid).to_owned(), sid) {
                    p.push(format!(
                        "{at}, field `dataset`: dataset `{}` is already fed by data source `{other}`",
                        s.dataset_name(sid)
                    ));
                }
            }
            for (rid, sources) in &t.reports {
                for s in sources {
                    if !t.sources.contains_key(s) {
                        p.push(format!("{at}, report `{rid}`: no data source `{s}`"));
                    }
                }
            }
        }
        p
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
mod tests {
    use super::*;

    const GOOD: &str = r#"
[destinations.platform]
url = "https://push.example.com"
auth = { bearer = { token = "env:PUSH_TOKEN" } }

[tenants.acme]
destination = "platform"
reports = { sales = ["orders", "customers"], stock = ["customers", "products"] }

[tenants.acme.connections.erp]
url = "env:ACME_ERP_URL"

[tenants.acme.sources.orders]
connection = "erp"
table = "dbo.orders"
key = ["id"]

[tenants.acme.sources.customers]
connection = "erp"
table = "customers"
key = ["id"]
interval_secs = 60

[tenants.acme.sources.products]
connection = "erp"
query = "SELECT * FROM products WHERE active = 1"
key = ["sku", "site"]
"#;

    #[test]
    fn parses_and_applies_defaults() {
        let c = Config::parse(GOOD, "good.toml").unwrap();
        let d = &c.destinations["platform"];
        assert_eq!(d.batch_max_rows, 5_000);
        assert_eq!(c.tenants["acme"].sources["orders"].interval_secs, 300);
        let srcs = c
            .sources_for_reports("acme", &["sales".into(), "stock".into()], 1)
            .unwrap();
        assert_eq!(srcs, vec!["customers", "orders", "products"]);
    }

    #[test]
    fn errors_name_file_tenant_source_and_field() {
        let bad = GOOD
            .replace(
                "connection = \"erp\"\ntable = \"customers\"",
                "connection = \"crm\"\ntable = \"customers\"",
            )
            .replace("key = [\"sku\", \"site\"]", "key = []");
        let err = Config::parse(&bad, "acme.toml").unwrap_err().to_string();
        assert!(err.starts_with("acme.toml: invalid configuration"), "{err}");
        assert!(
            err.contains("tenant `acme`, data source `customers`, field `connection`: no connection `crm`"),
            "{err}"
        );
        assert!(
            err.contains("tenant `acme`, data source `products`, field `key`"),
            "{err}"
        );
    }

    #[test]
    fn heavy_hours_wrap_midnight() {
        assert_eq!(parse_hours("22-6"), Some((22, 6)));
        assert!(in_window(23, (22, 6)) && in_window(3, (22, 6)) && !in_window(12, (22, 6)));
        assert!(in_window(9, (8, 18)) && !in_window(18, (8, 18)));
        assert_eq!(parse_hours("25-3"), None);
        assert_eq!(parse_hours("night"), None);
    }

    #[test]
    fn watermark_needs_its_column_and_remote_hash_a_server() {
        let bad = GOOD.replace("table = \"dbo.orders\"", "table = \"dbo.orders\"\ndiff = \"watermark\"");
        let err = Config::parse(&bad, "x.toml").unwrap_err().to_string();
        assert!(err.contains("data source `orders`, field `watermark_column`"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_secret_refs_are_refused() {
        let err = Config::parse(&GOOD.replace("interval_secs = 60", "interval = 60"), "x.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `interval`"), "{err}");
        let err = Config::parse(
            &GOOD.replace("env:ACME_ERP_URL", "Server=db;Password=hunter2"),
            "x.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("secret reference"), "{err}");
        assert!(!err.contains("hunter2"), "a secret value leaked into an error: {err}");
    }
}
