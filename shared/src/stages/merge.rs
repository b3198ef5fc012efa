//! Merge: commits a run's delta to staging in one transaction (compare-and-set on the run state).

use super::run_task;
use crate::ctx::Ctx;
use crate::domain::config::DiffMode;
use crate::domain::job::{Job, Task};
use crate::errors::StageError;
use crate::ports::{Run, RunState};
use tracing::Instrument;

/// Commits the delta, then asks for batching.
pub(super) async fn merge(ctx: &Ctx, job: &Job, run: &Run) -> Result<Vec<Job>, StageError> {
    match run.state {
        RunState::Snapshotted => {
            if ctx.store.rewind_lost_delta(run).await? {
                return super::snapshot::chunk_jobs(ctx, job, run).await;
            }
            let span = tracing::info_span!(
                "store.merge",
                otel.name = "store.merge",
                inserts = run.inserts,
                updates = run.updates,
                deletes = run.deletes
            );
            ctx.store.merge(run).instrument(span).await?;
            crate::crash::point("after_merge_commit");
        }
        RunState::Merged => {} // merged before a crash; the batch job may be missing
        _ => return Ok(Vec::new()),
    }
    // A watermark or change-tracking run moves its data source's cursor (the watermark, or the
    // change-tracking version) once its changes are in staging; doing it
    // again after a crash is harmless (the same value).
    if let Some(mode) = run
        .mode
        .as_ref()
        .filter(|m| matches!(m.mode, DiffMode::Watermark | DiffMode::ChangeTracking))
    {
        ctx.store
            .set_cursor(&run.tenant, &run.source, mode.next.as_deref(), mode.full)
            .await?;
    }
    Ok(vec![job.next(run_task(run, |tenant, source, run_id| Task::Batch {
        tenant,
        source,
        run_id,
    }))])
}
