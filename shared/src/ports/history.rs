//! Run history read models: what each stage spent on a run, and when each data source last
//! synced (what lag and the operations page are computed from).

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

/// What one stage spent on one run: job time summed over its jobs (`busy_ms`, the cost) and first
/// start to last finish (the wall-clock span, which overlaps other stages' spans when they pipeline).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageTiming {
    /// Run id.
    pub run_id: String,
    /// Stage name.
    pub stage: String,
    /// Job attempts that ran.
    pub jobs: i64,
    /// Attempts that ended in an error.
    pub failures: i64,
    /// Summed attempt durations.
    pub busy_ms: i64,
    /// When the first attempt started.
    pub first_started_at: DateTime<Utc>,
    /// When the last attempt finished.
    pub last_finished_at: DateTime<Utc>,
}

/// When a data source last synced: what its lag and the operations page are computed from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceClock {
    /// Tenant id.
    pub tenant: String,
    /// Data source id.
    pub source: String,
    /// When its first run still on record opened (its lag until a run succeeds).
    pub first_run_at: DateTime<Utc>,
    /// When its latest successful run finished.
    pub last_success_at: Option<DateTime<Utc>>,
}

impl SourceClock {
    /// Time since the last successful sync (since the first run, if none has succeeded yet).
    pub fn lag(&self, now: DateTime<Utc>) -> Duration {
        (now - self.last_success_at.unwrap_or(self.first_run_at))
            .to_std()
            .unwrap_or_default()
    }
}
