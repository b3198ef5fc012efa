//! Merge: commits a run's delta to staging in one transaction (compare-and-set on the run state).

use super::run_task;
use crate::ctx::Ctx;
use crate::domain::job::{Job, Task};
use crate::errors::StageError;
use crate::ports::{Run, RunState};

/// Commits the delta, then asks for batching.
pub(super) async fn merge(ctx: &Ctx, job: &Job, run: &Run) -> Result<Vec<Job>, StageError> {
    match run.state {
        RunState::Snapshotted => {
            ctx.store.merge(run).await?;
            crate::crash::point("after_merge_commit");
        }
        RunState::Merged => {} // merged before a crash; the batch job may be missing
        _ => return Ok(Vec::new()),
    }
    Ok(vec![job.next(run_task(run, |tenant, source, run_id| Task::Batch {
        tenant,
        source,
        run_id,
    }))])
}
