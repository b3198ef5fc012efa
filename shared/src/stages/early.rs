//! Follow-up jobs a handler queues before it ends, where its host lends it a queue: a numbered
//! chunk's pushes as each of its steps commits (decision 0025), so those batches go out while
//! the chunk reads on instead of after its last row — the last chunk's batches were a run's
//! tail. A host that runs handlers against a queue of its own (the runner: CLI, worker hosts,
//! tests) lends it for the handler's duration; elsewhere (Lambda, whose follow-ups go out when
//! the invocation returns) the jobs are handed back and leave with the handler's others.
//!
//! Only jobs whose work is already durable may be queued early: the handler may still fail, and
//! its retry must find them harmless (a push of a committed batch is).

use crate::domain::job::Job;
use crate::ports::JobQueue;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

tokio::task_local! {
    static QUEUE: Arc<dyn JobQueue>;
}

/// Runs `handler` with `queue` lent for the jobs it queues before it ends.
pub async fn lend<F: Future>(queue: Arc<dyn JobQueue>, handler: F) -> F::Output {
    QUEUE.scope(queue, handler).await
}

/// Queues `jobs` now if a queue was lent; otherwise, or if queueing failed, hands them back for
/// the handler to return with its other follow-ups.
pub(crate) async fn queue_now(jobs: Vec<Job>) -> Vec<Job> {
    if jobs.is_empty() {
        return jobs;
    }
    let Ok(queue) = QUEUE.try_with(Arc::clone) else {
        return jobs;
    };
    match queue.enqueue(&jobs, Duration::ZERO).await {
        Ok(()) => Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, jobs = jobs.len(), "could not queue follow-up jobs early: they leave when the job ends");
            jobs
        }
    }
}
