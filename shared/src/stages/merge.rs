//! Merge: commits a run's delta to staging in one transaction (compare-and-set on the run state),
//! and cuts the run's batches beside it (decision 0019).

use super::{batch, run_task};
use crate::ctx::Ctx;
use crate::domain::config::DiffMode;
use crate::domain::job::{Job, Task};
use crate::errors::{StageError, StoreError};
use crate::ports::{Run, RunState};
use tracing::Instrument;

/// Commits the delta while the batches are cut from it, then asks for their pushes; a run whose
/// cut did not finish here goes on to the batch stage.
pub(super) async fn merge(ctx: &Ctx, job: &Job, run: &Run) -> Result<Vec<Job>, StageError> {
    match run.state {
        RunState::Snapshotted => {
            if ctx.store.rewind_lost_delta(run).await? {
                return super::snapshot::chunk_jobs(ctx, job, run).await;
            }
            let (merged, cut) = merge_and_cut(ctx, run).await;
            let merged = merged?;
            crate::crash::point("after_merge_commit");
            if merged {
                if let Some(cut) = cut.transpose()? {
                    move_cursor(ctx, run).await?;
                    ctx.store.finish_batching(run, cut.batches, cut.bytes).await?;
                    crate::crash::point("after_cut_recorded");
                    return batch::pushes(ctx, job, run).await;
                }
            }
        }
        RunState::Merged => {} // merged before a crash; the batch job may be missing
        // This job merged and cut the run, then ended before its push jobs were queued (a
        // crash, a lost acknowledgement): this delivery is the only one that can queue them.
        // A push job for a batch already delivered or already queued does no harm (push).
        RunState::Batched => return batch::pushes(ctx, job, run).await,
        _ => return Ok(Vec::new()),
    }
    move_cursor(ctx, run).await?;
    Ok(vec![job.next(run_task(run, |tenant, source, run_id| Task::Batch {
        tenant,
        source,
        run_id,
    }))])
}

/// The merge's outcome (whether this job moved the run to `merged`) and, when the host lets
/// this job cut beside it (`Ctx::cut_beside`), the cut's. The two only read the delta, so they
/// run at once: the merge is mostly the store's work and the cut mostly ours (gzip), and one
/// after the other they left a core idle for as long as the shorter took. The merge runs in a
/// task of its own so the cut's compression cannot hold it up; both are awaited whatever either
/// returns, so nothing of the job is left running behind its result.
async fn merge_and_cut(ctx: &Ctx, run: &Run) -> (Result<bool, StageError>, Option<Result<batch::Cut, StageError>>) {
    let span = tracing::info_span!(
        "store.merge",
        otel.name = "store.merge",
        inserts = run.inserts,
        updates = run.updates,
        deletes = run.deletes
    );
    let (store, merging) = (ctx.store.clone(), run.clone());
    let merge = tokio::spawn(async move { store.merge(&merging).await }.instrument(span));
    let cut = match ctx.cut_beside() {
        Some(_leave) => Some(batch::cut(ctx, run).await),
        None => None,
    };
    let merged = match merge.await {
        Ok(merged) => merged.map_err(StageError::from),
        Err(e) => Err(StoreError::Db {
            context: "merge",
            detail: format!("the merge task ended without a result: {e}"),
        }
        .into()),
    };
    (merged, cut)
}

/// A watermark or change-tracking run moves its data source's cursor (the watermark, or the
/// change-tracking version) once its changes are in staging; doing it again after a crash is
/// harmless (the same value). A run numbered at commit moves it after its last chunk's commit
/// (decision 0025); if the worker dies between the two, the next run finds no cursor and
/// diffs the whole table, which re-sends nothing unchanged.
pub(super) async fn move_cursor(ctx: &Ctx, run: &Run) -> Result<(), StageError> {
    if let Some(mode) = run
        .mode
        .as_ref()
        .filter(|m| matches!(m.mode, DiffMode::Watermark | DiffMode::ChangeTracking))
    {
        ctx.store
            .set_cursor(&run.tenant, &run.source, mode.next.as_deref(), mode.full)
            .await?;
    }
    Ok(())
}
