//! Validation: every inconsistency of a parsed configuration, each naming where it is.

use super::{parse_hours, Config, DiffMode};
use std::collections::BTreeMap;

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The shortest quiet period that can tell a stalled run from one whose job is running: several
/// of that job's heartbeats (`schedule::RUN_HEARTBEAT`).
const MIN_STALLED_AFTER_SECS: u64 = 300;

impl Config {
    /// Every inconsistency, each naming its place as `tenant `t`, data source `s`, field `f``.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let stalled = self.recovery.stalled_after_secs;
        if stalled != 0 && stalled < MIN_STALLED_AFTER_SECS {
            p.push(format!(
                "recovery, field `stalled_after_secs`: must be 0 (never) or at least {MIN_STALLED_AFTER_SECS}: \
                 a running job's heartbeat comes every {} s",
                crate::domain::schedule::RUN_HEARTBEAT.as_secs()
            ));
        }
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
                    if let Err(e) = crate::domain::ident::validate(k, "key column") {
                        p.push(format!("{at}, field `key`: {e}"));
                    }
                }
                for c in s.exclude_columns.iter().chain(&s.mask_columns) {
                    if let Err(e) = crate::domain::ident::validate(c, "column") {
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
                            if let Err(e) = crate::domain::ident::validate(c, "watermark column") {
                                p.push(format!("{at}, field `watermark_column`: {e}"));
                            }
                        }
                    }
                }
                if s.diff == DiffMode::ChangeTracking && s.table.is_none() {
                    p.push(format!(
                        "{at}, field `diff`: `change_tracking` reads a table's change table: set `table`, not `query`"
                    ));
                }
                if matches!(s.diff, DiffMode::RemoteHash | DiffMode::ChangeTracking)
                    && t.connections
                        .get(&s.connection)
                        .is_some_and(|c| c.sqlite_path.is_some())
                {
                    p.push(format!(
                        "{at}, field `diff`: `{}` needs a server source ({}), not SQLite",
                        s.diff.as_str(),
                        if s.diff == DiffMode::RemoteHash {
                            "PostgreSQL, SQL Server"
                        } else {
                            "SQL Server"
                        }
                    ));
                }
                if let Some(t) = &s.table {
                    if let Err(e) = crate::domain::ident::qualified(t, "table") {
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
}
