//! What the operations page shows, read from the store in one pass: tenants and their data
//! sources with state, lag and recent runs, running syncs with progress, and open dead letters.
//! The page and `/api/overview` render this same value.

use serde::Serialize;
use signals_shared::backends::Backend;
use signals_shared::ctx::Ctx;
use signals_shared::ports::{JobQueue, Run, SourceClock};
use std::collections::BTreeMap;

/// Recent runs kept per data source for its chart.
const RECENT_RUNS: usize = 20;

/// Everything on the page.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// When it was read.
    pub generated_at: chrono::DateTime<chrono::Utc>,
    /// Jobs in the queue.
    pub queue_depth: u64,
    /// Age of the oldest visible job, seconds.
    pub oldest_job_secs: Option<f64>,
    /// Tenants of the current config.
    pub tenants: Vec<TenantView>,
    /// Runs not finished yet, oldest first.
    pub running: Vec<RunningView>,
    /// Open dead letters, newest first.
    pub dead_letters: Vec<DeadLetterView>,
}

/// One tenant.
#[derive(Debug, Serialize)]
pub struct TenantView {
    /// Tenant id.
    pub id: String,
    /// The whole tenant is paused.
    pub paused: bool,
    /// Its data sources.
    pub sources: Vec<SourceView>,
}

/// One data source of a tenant.
#[derive(Debug, Serialize)]
pub struct SourceView {
    /// Data source id.
    pub id: String,
    /// `never run`, `paused`, or the latest run's state (`done`, `blocked`, `snapshotting`…).
    pub state: String,
    /// When it last synced successfully.
    pub last_success_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds since then (since its first run when none succeeded yet).
    pub lag_secs: Option<f64>,
    /// Its configured interval.
    pub interval_secs: u64,
    /// Lag beyond two intervals and a minute: shown as behind.
    pub behind: bool,
    /// The latest run's error, if any.
    pub last_error: Option<String>,
    /// Recent runs, oldest first.
    pub recent: Vec<RunPoint>,
}

/// One run in a data source's chart.
#[derive(Debug, Serialize)]
pub struct RunPoint {
    /// Run id.
    pub run_id: String,
    /// Initial or interval.
    pub kind: &'static str,
    /// Opened at.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Source rows read.
    pub rows_read: i64,
    /// Inserts found.
    pub inserts: i64,
    /// Updates found.
    pub updates: i64,
    /// Deletes found.
    pub deletes: i64,
}

/// A run still going.
#[derive(Debug, Serialize)]
pub struct RunningView {
    /// Tenant id.
    pub tenant: String,
    /// Data source id.
    pub source: String,
    /// Run id.
    pub run_id: String,
    /// Initial or interval.
    pub kind: &'static str,
    /// State as shown to operators.
    pub state: String,
    /// Chunks done / planned.
    pub chunks: (i64, i64),
    /// Batches delivered / cut.
    pub batches: (i64, i64),
    /// Share done, 0–1: chunks count for the first half, delivered batches for the second.
    pub fraction: f64,
    /// Progress, pace and ETA in words (as `signals status` prints it).
    pub progress: String,
}

/// An open dead letter.
#[derive(Debug, Serialize)]
pub struct DeadLetterView {
    /// Dead letter id.
    pub id: i64,
    /// Tenant id.
    pub tenant: Option<String>,
    /// Data source id.
    pub source: Option<String>,
    /// Stage that gave up.
    pub stage: String,
    /// The final error.
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// Recorded at.
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Reads the overview from the store.
pub async fn read(store: &dyn Backend, queue: &dyn JobQueue, ctx: &Ctx) -> anyhow::Result<Overview> {
    let now = chrono::Utc::now();
    let config = ctx.latest_config().await?.map(|(_, c)| c);
    let clocks: BTreeMap<(String, String), SourceClock> = store
        .sync_clocks()
        .await?
        .into_iter()
        .map(|c| ((c.tenant.clone(), c.source.clone()), c))
        .collect();
    let mut tenants = Vec::new();
    let mut running = Vec::new();
    for (tenant_id, tenant) in config.iter().flat_map(|c| c.tenants.iter()) {
        let pauses = store.pauses(tenant_id).await?;
        let tenant_paused = pauses.iter().any(Option::is_none);
        let runs = store
            .runs(Some(tenant_id), RECENT_RUNS * tenant.sources.len().max(1))
            .await?;
        let mut sources = Vec::new();
        for (source_id, source) in &tenant.sources {
            let mine: Vec<&Run> = runs.iter().filter(|r| r.source == *source_id).collect();
            let paused = tenant_paused || source.paused || pauses.iter().flatten().any(|s| s == source_id);
            let latest = mine.first();
            let state = match latest {
                Some(r) if !matches!(r.display_state(), "done" | "abandoned" | "blocked") && paused => "paused",
                Some(r) => r.display_state(),
                None if paused => "paused",
                None => "never run",
            };
            let clock = clocks.get(&(tenant_id.clone(), source_id.clone()));
            let lag = clock.map(|c| c.lag(now).as_secs_f64());
            sources.push(SourceView {
                id: source_id.clone(),
                state: state.to_owned(),
                last_success_at: clock.and_then(|c| c.last_success_at),
                lag_secs: lag,
                interval_secs: source.interval_secs,
                behind: !paused && lag.is_some_and(|l| l > (2 * source.interval_secs + 60) as f64),
                last_error: latest.and_then(|r| r.last_error.clone()),
                recent: mine.iter().rev().map(|r| point(r)).collect(),
            });
            running.extend(
                mine.iter()
                    .filter(|r| r.finished_at.is_none() && r.display_state() != "abandoned")
                    .map(|r| running_view(r)),
            );
        }
        tenants.push(TenantView {
            id: tenant_id.clone(),
            paused: tenant_paused,
            sources,
        });
    }
    running.sort_by(|a, b| (&a.tenant, &a.source).cmp(&(&b.tenant, &b.source)));
    let (queue_depth, oldest) = queue.depth(&[]).await?;
    let dead_letters = store
        .dead_letters(true)
        .await?
        .into_iter()
        .map(|d| DeadLetterView {
            id: d.id,
            tenant: d.tenant,
            source: d.source,
            stage: d.stage,
            error: d.error,
            attempts: d.attempts,
            created_at: d.created_at,
        })
        .collect();
    Ok(Overview {
        generated_at: now,
        queue_depth,
        oldest_job_secs: oldest.map(|d| d.as_secs_f64()),
        tenants,
        running,
        dead_letters,
    })
}

fn point(r: &Run) -> RunPoint {
    RunPoint {
        run_id: r.id.clone(),
        kind: r.kind.as_str(),
        at: r.created_at,
        rows_read: r.rows_read,
        inserts: r.inserts,
        updates: r.updates,
        deletes: r.deletes,
    }
}

fn running_view(r: &Run) -> RunningView {
    let share = |done: i64, total: i64| {
        if total > 0 {
            done as f64 / total as f64
        } else {
            0.0
        }
    };
    RunningView {
        tenant: r.tenant.clone(),
        source: r.source.clone(),
        run_id: r.id.clone(),
        kind: r.kind.as_str(),
        state: r.display_state().to_owned(),
        chunks: (r.chunks_done, r.chunks_total),
        batches: (r.batches_delivered, r.batches_total),
        fraction: 0.5 * share(r.chunks_done, r.chunks_total) + 0.5 * share(r.batches_delivered, r.batches_total),
        progress: crate::commands::status::progress(r),
    }
}
