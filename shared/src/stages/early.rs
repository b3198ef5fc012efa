//! Follow-up jobs a handler queues before it ends, where its host lends it a queue: a numbered
//! chunk's pushes as each of its steps commits (decision 0025), so those batches go out while
//! the chunk reads on instead of after its last row — the last chunk's batches were a run's
//! tail. A host that runs handlers against a queue of its own (the runner: CLI, worker hosts,
//! tests) lends it for the handler's duration; elsewhere (Lambda, whose follow-ups go out when
//! the invocation returns) the jobs are handed back and leave with the handler's others.
//!
//! Only jobs whose work is already durable may be queued early: the handler may still fail, and
//! its retry must find them harmless (a push of a committed batch is).
//!
//! The host is told when jobs were queued: a runner whose slots are free otherwise sleeps until
//! its next poll or the next job's end, and a step's pushes waited up to that long.

use crate::domain::job::Job;
use crate::ports::JobQueue;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

tokio::task_local! {
    static QUEUE: (Arc<dyn JobQueue>, Arc<Notify>);
}

/// Runs `handler` with `queue` lent for the jobs it queues before it ends; `queued` is notified
/// each time it does.
pub async fn lend<F: Future>(queue: Arc<dyn JobQueue>, queued: Arc<Notify>, handler: F) -> F::Output {
    QUEUE.scope((queue, queued), handler).await
}

/// Queues `jobs` now if a queue was lent; otherwise, or if queueing failed, hands them back for
/// the handler to return with its other follow-ups.
pub(crate) async fn queue_now(jobs: Vec<Job>) -> Vec<Job> {
    if jobs.is_empty() {
        return jobs;
    }
    let Ok((queue, queued)) = QUEUE.try_with(|(q, n)| (q.clone(), n.clone())) else {
        return jobs;
    };
    match queue.enqueue(&jobs, Duration::ZERO).await {
        Ok(()) => {
            queued.notify_one();
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, jobs = jobs.len(), "could not queue follow-up jobs early: they leave when the job ends");
            jobs
        }
    }
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::domain::job::{Stage, Task};

    #[tokio::test]
    async fn jobs_queued_early_wake_the_host_and_without_a_lent_queue_come_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::sqlite::store::SqliteStore::open(&dir.path().join("store.db")).expect("store");
        let queue: Arc<dyn JobQueue> = Arc::new(store);
        let jobs = vec![Job::new(Task::Tick)];
        assert_eq!(queue_now(jobs.clone()).await.len(), 1, "nothing lent: handed back");

        let queued = Arc::new(Notify::new());
        assert!(lend(queue.clone(), queued.clone(), queue_now(jobs)).await.is_empty());
        tokio::time::timeout(Duration::from_secs(5), queued.notified())
            .await
            .expect("the host was told jobs were queued");
        assert_eq!(queue.depth(&[Stage::Scheduler]).await.expect("depth").0, 1);
    }
}
