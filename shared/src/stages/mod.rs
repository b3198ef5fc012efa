//! Stage handlers: `handle(ctx, job) -> next jobs`. Each is idempotent (DESIGN.md §2), so a
//! redelivered or duplicated message is harmless; none knows which host or queue invoked it.

mod batch;
pub(crate) mod cursor;
pub mod early;
mod merge;
mod push;
mod scheduler;
mod snapshot;

use crate::ctx::Ctx;
use crate::domain::job::{Job, Task};
use crate::errors::StageError;
use crate::ports::Run;

/// How long a parked job (its data source paused) waits before it looks again.
pub const PARK: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether an operator paused this tenant or data source.
pub async fn paused(ctx: &Ctx, tenant: &str, source: &str) -> Result<bool, StageError> {
    Ok(ctx
        .store
        .pauses(tenant)
        .await?
        .iter()
        .any(|p| p.as_deref().is_none_or(|s| s == source)))
}

/// Runs one job through its stage; a job of a paused data source is parked at this boundary.
pub async fn handle(ctx: &Ctx, job: &Job) -> Result<Vec<Job>, StageError> {
    if let (Some(tenant), Some(source)) = (job.scope().0, job.scope().1) {
        if paused(ctx, tenant, source).await? {
            tracing::info!(tenant, source, "data source paused: parking the job");
            let mut again = job.next(job.task.clone());
            again.not_before = Some(chrono::Utc::now() + chrono::Duration::from_std(PARK).expect("small"));
            return Ok(vec![again]);
        }
    }
    match &job.task {
        Task::Tick => scheduler::tick(ctx, job).await,
        Task::Prune => scheduler::prune(ctx).await,
        Task::Onboard { tenant, reports } => scheduler::onboard(ctx, job, tenant, reports).await,
        Task::Verify { tenant, source, repair } => verify(ctx, tenant, source, *repair).await,
        Task::Plan { tenant, run_id, .. } => snapshot::plan(ctx, job, &load_run(ctx, tenant, run_id).await?).await,
        Task::Chunk {
            tenant, run_id, chunk, ..
        } => snapshot::chunk(ctx, job, &load_run(ctx, tenant, run_id).await?, *chunk).await,
        Task::Merge { tenant, run_id, .. } => merge::merge(ctx, job, &load_run(ctx, tenant, run_id).await?).await,
        Task::Batch { tenant, run_id, .. } => batch::batch(ctx, job, &load_run(ctx, tenant, run_id).await?).await,
        Task::Push {
            tenant,
            run_id,
            batch_id,
            ..
        } => push::push(ctx, job, &load_run(ctx, tenant, run_id).await?, batch_id).await,
    }
}

/// The jobs that move on every run stalled as of `now` (each tick does this at its own time;
/// tests pass a later one rather than wait).
pub async fn revive_stalled(ctx: &Ctx, now: chrono::DateTime<chrono::Utc>) -> Result<Vec<Job>, StageError> {
    match ctx.latest_config().await? {
        Some((_, config)) => scheduler::revive_stalled(ctx, &config, now).await,
        None => Ok(Vec::new()),
    }
}

/// Periodic reconciliation: records the report, counts drift, and (with repair) opens the run
/// that re-sends the drifted keys.
async fn verify(ctx: &Ctx, tenant: &str, source: &str, repair: bool) -> Result<Vec<Job>, StageError> {
    let (report, jobs) = crate::ops::reconcile::reconcile(ctx, tenant, source, 256, repair).await?;
    let json = serde_json::to_string(&report).expect("reports serialise");
    ctx.store
        .record_verification(tenant, source, &json, Some(report.in_sync()))
        .await?;
    if !report.in_sync() {
        crate::metrics::add("signals_verify_drift_total", &[], 1.0);
        tracing::warn!(
            tenant,
            source,
            missing = report.missing,
            extra = report.extra,
            different = report.different,
            repaired = report.repaired,
            "verification found drift at the destination"
        );
    }
    Ok(jobs)
}

async fn load_run(ctx: &Ctx, tenant: &str, run_id: &str) -> Result<Run, StageError> {
    ctx.store
        .run(tenant, run_id)
        .await?
        .ok_or_else(|| StageError::NotFound(format!("tenant `{tenant}` has no run `{run_id}`")))
}

/// A follow-up task of the same run.
fn run_task(run: &Run, make: impl FnOnce(String, String, String) -> Task) -> Task {
    make(run.tenant.clone(), run.source.clone(), run.id.clone())
}
