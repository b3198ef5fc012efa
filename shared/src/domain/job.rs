//! The job envelope: a small versioned message naming one unit of work. Rows never travel in it
//! (claim check: they live in the store), so any queue's size limit is far away.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Version of the envelope this build writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// The pipeline stage that handles a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Finds due data sources and opens runs.
    Scheduler,
    /// Plans chunks and diffs each against staging.
    Snapshot,
    /// Commits a run's delta to staging.
    Merge,
    /// Cuts change records into batches.
    Batch,
    /// Delivers one batch.
    Push,
}

impl Stage {
    /// All stages in pipeline order.
    pub const ALL: [Stage; 5] = [
        Stage::Scheduler,
        Stage::Snapshot,
        Stage::Merge,
        Stage::Batch,
        Stage::Push,
    ];

    /// The stages a filter selects: all of them when it is empty.
    pub fn selected(filter: &[Stage]) -> Vec<Stage> {
        if filter.is_empty() {
            Stage::ALL.to_vec()
        } else {
            filter.to_vec()
        }
    }

    /// Lower-case name used in queues, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Scheduler => "scheduler",
            Stage::Snapshot => "snapshot",
            Stage::Merge => "merge",
            Stage::Batch => "batch",
            Stage::Push => "push",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do; every variant after `Onboard` belongs to one run of one data source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Task {
    /// Timer tick: open interval runs for every due data source.
    Tick,
    /// Open initial runs for the data sources the named reports need (all when empty).
    Onboard {
        /// Tenant id.
        tenant: String,
        /// Report names.
        #[serde(default)]
        reports: Vec<String>,
    },
    /// Prune history past its retention period.
    Prune,
    /// Reconcile a data source with its destination (periodic verification).
    Verify {
        /// Tenant id.
        tenant: String,
        /// Data source id.
        source: String,
        /// Re-send drifted keys.
        #[serde(default)]
        repair: bool,
    },
    /// Describe the source, check drift, cut key-range chunks.
    Plan {
        /// Tenant id.
        tenant: String,
        /// Data source id.
        source: String,
        /// Run id.
        run_id: String,
    },
    /// Diff one key-range chunk against staging and write its delta.
    Chunk {
        /// Tenant id.
        tenant: String,
        /// Data source id.
        source: String,
        /// Run id.
        run_id: String,
        /// Chunk number within the run.
        chunk: u32,
    },
    /// Commit the run's delta to staging.
    Merge {
        /// Tenant id.
        tenant: String,
        /// Data source id.
        source: String,
        /// Run id.
        run_id: String,
    },
    /// Cut the run's changes into batches.
    Batch {
        /// Tenant id.
        tenant: String,
        /// Data source id.
        source: String,
        /// Run id.
        run_id: String,
    },
    /// Deliver one batch.
    Push {
        /// Tenant id.
        tenant: String,
        /// Data source id.
        source: String,
        /// Run id.
        run_id: String,
        /// Batch id.
        batch_id: String,
    },
}

/// A job message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Envelope version.
    pub v: u32,
    /// Unique message id (a redelivered message keeps it).
    pub id: String,
    /// The work.
    #[serde(flatten)]
    pub task: Task,
    /// Delivery attempt, counted by the queue (1 on first delivery).
    #[serde(default)]
    pub attempt: u32,
    /// W3C trace context, so one sync is one trace across stages and hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
    /// Not to run before this instant (e.g. heavy work waiting for its sync window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// Claim order: higher first. Interval runs (and the timer) outrank onboarding, so a tenant's
    /// deep initial-sync backlog cannot starve other tenants' interval syncs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u8,
}

fn is_zero(p: &u8) -> bool {
    *p == 0
}

/// Priority of the timer, periodic verification and pruning.
pub const PRIORITY_TIMER: u8 = 2;
/// Priority of every job of an interval run.
pub const PRIORITY_INTERVAL: u8 = 1;

/// Why a message is not a job this build can run.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// Not JSON at all.
    #[error("job message is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// JSON without a numeric `v`.
    #[error("job message has no envelope version field `v`")]
    NoVersion,
    /// Written by a newer or older build.
    #[error("job envelope version {found} is not supported (this build reads version {ENVELOPE_VERSION})")]
    UnsupportedVersion {
        /// The version found.
        found: u64,
    },
    /// Right version, wrong fields.
    #[error("job message does not match envelope version {ENVELOPE_VERSION}: {0}")]
    Invalid(#[source] serde_json::Error),
}

fn random_hex(bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", fastrand::u8(..))).collect()
}

/// A W3C trace context starting a new trace (random trace and parent ids).
pub fn new_traceparent() -> String {
    format!("00-{}-{}-01", random_hex(16), random_hex(8))
}

impl Job {
    /// A new job starting a new trace.
    pub fn new(task: Task) -> Job {
        Job {
            v: ENVELOPE_VERSION,
            id: uuid::Uuid::new_v4().to_string(),
            task,
            attempt: 0,
            traceparent: Some(new_traceparent()),
            created_at: Utc::now(),
            not_before: None,
            priority: 0,
        }
        .with_default_priority()
    }

    fn with_default_priority(mut self) -> Job {
        if matches!(self.task, Task::Tick | Task::Verify { .. } | Task::Prune) {
            self.priority = PRIORITY_TIMER;
        }
        self
    }

    /// A follow-up job in the same trace (new span id), with the same priority.
    pub fn next(&self, task: Task) -> Job {
        let mut job = Job::new(task);
        job.priority = self.priority;
        if let Some(trace_id) = self.trace_id() {
            job.traceparent = Some(format!("00-{trace_id}-{}-01", random_hex(8)));
        }
        job
    }

    /// The trace id from the trace context, if any.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(|t| t.split('-').nth(1))
    }

    /// Parses a message, checking the envelope version first so the error says what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Job, EnvelopeError> {
        let raw: serde_json::Value = serde_json::from_slice(bytes).map_err(EnvelopeError::NotJson)?;
        match raw.get("v").and_then(|v| v.as_u64()) {
            None => Err(EnvelopeError::NoVersion),
            Some(v) if v != ENVELOPE_VERSION as u64 => Err(EnvelopeError::UnsupportedVersion { found: v }),
            Some(_) => serde_json::from_value(raw).map_err(EnvelopeError::Invalid),
        }
    }

    /// Serialises the envelope.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("jobs always serialise")
    }

    /// The stage that handles this job.
    pub fn stage(&self) -> Stage {
        match self.task {
            Task::Tick | Task::Onboard { .. } | Task::Prune => Stage::Scheduler,
            Task::Plan { .. } | Task::Chunk { .. } | Task::Verify { .. } => Stage::Snapshot,
            Task::Merge { .. } => Stage::Merge,
            Task::Batch { .. } => Stage::Batch,
            Task::Push { .. } => Stage::Push,
        }
    }

    /// The task's name, for spans and logs.
    pub fn task_name(&self) -> &'static str {
        match &self.task {
            Task::Tick => "tick",
            Task::Onboard { .. } => "onboard",
            Task::Prune => "prune",
            Task::Verify { .. } => "verify",
            Task::Plan { .. } => "plan",
            Task::Chunk { .. } => "chunk",
            Task::Merge { .. } => "merge",
            Task::Batch { .. } => "batch",
            Task::Push { .. } => "push",
        }
    }

    /// (tenant, data source, run) where the job has them.
    pub fn scope(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        match &self.task {
            Task::Tick | Task::Prune => (None, None, None),
            Task::Onboard { tenant, .. } => (Some(tenant), None, None),
            Task::Verify { tenant, source, .. } => (Some(tenant), Some(source), None),
            Task::Plan { tenant, source, run_id }
            | Task::Chunk {
                tenant, source, run_id, ..
            }
            | Task::Merge { tenant, source, run_id }
            | Task::Batch { tenant, source, run_id }
            | Task::Push {
                tenant, source, run_id, ..
            } => (Some(tenant), Some(source), Some(run_id)),
        }
    }
}

/// The text every encoded job of run `run_id` holds, and no job of another run: how the table
/// queue finds a run's jobs without a column of their own.
pub fn run_id_field(run_id: &str) -> String {
    format!("\"run_id\":{}", serde_json::Value::from(run_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_of_a_run_holds_its_run_id_field() {
        for task in [
            r#""task":"plan""#,
            r#""task":"chunk","chunk":2"#,
            r#""task":"merge""#,
            r#""task":"batch""#,
            r#""task":"push","batch_id":"b""#,
        ] {
            let json = format!(
                r#"{{"v":1,"id":"x",{task},"tenant":"t","source":"s","run_id":"r\"1","created_at":"2026-01-01T00:00:00Z"}}"#
            );
            let body = Job::decode(json.as_bytes()).unwrap().encode();
            assert!(body.contains(&run_id_field("r\"1")), "{body}");
            assert!(
                !body.contains(&run_id_field("r\"")),
                "a prefix of the id must not match: {body}"
            );
        }
    }

    #[test]
    fn round_trips() {
        let job = Job::new(Task::Chunk {
            tenant: "acme".into(),
            source: "orders".into(),
            run_id: "r1".into(),
            chunk: 3,
        });
        let back = Job::decode(job.encode().as_bytes()).unwrap();
        assert_eq!(back, job);
        assert_eq!(back.stage(), Stage::Snapshot);
        let next = job.next(Task::Merge {
            tenant: "acme".into(),
            source: "orders".into(),
            run_id: "r1".into(),
        });
        assert_eq!(next.trace_id(), job.trace_id());
        assert_ne!(next.traceparent, job.traceparent);
    }

    #[test]
    fn wire_shape_is_flat() {
        let json = r#"{"v":1,"id":"x","task":"push","tenant":"t","source":"s","run_id":"r","batch_id":"b","attempt":2,"created_at":"2026-01-01T00:00:00Z"}"#;
        let job = Job::decode(json.as_bytes()).unwrap();
        assert_eq!(job.stage(), Stage::Push);
        assert_eq!(job.scope(), (Some("t"), Some("s"), Some("r")));
    }

    #[test]
    fn rejects_bad_messages_clearly() {
        let err = |s: &str| Job::decode(s.as_bytes()).unwrap_err().to_string();
        assert!(err("{not json").contains("not valid JSON"));
        assert!(err(r#"{"task":"tick"}"#).contains("no envelope version"));
        assert_eq!(
            err(r#"{"v":2,"task":"tick"}"#),
            "job envelope version 2 is not supported (this build reads version 1)"
        );
        assert!(
            err(r#"{"v":1,"id":"x","task":"explode","created_at":"2026-01-01T00:00:00Z"}"#)
                .contains("does not match envelope version 1")
        );
    }
}
