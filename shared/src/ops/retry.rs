//! Retrying a dead letter: its job goes back on the queue with a fresh message id and attempt
//! count (same task, same trace), and the dead letter is marked retried by whoever asked — the
//! CLI and the operations page share this one path.

use crate::domain::job::{Job, Stage};
use crate::ports::{JobQueue, Store};
use std::time::Duration;

/// Why a retry was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// No such dead letter, not open, or not a job.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::errors::StoreError),
}

/// Re-queues open dead letter `id`, recording `by`; returns the stage of the re-queued job.
///
/// The job is enqueued before the dead letter is resolved: if the second step fails the worst
/// case is a duplicate job, which the run rules make harmless, never a lost one.
pub async fn retry_dead_letter(
    store: &dyn Store,
    queue: &dyn JobQueue,
    id: i64,
    by: &str,
) -> Result<Stage, RetryError> {
    let d = store
        .dead_letter_by_id(id)
        .await?
        .ok_or_else(|| RetryError::Invalid(format!("no dead letter {id}")))?;
    if d.state != "open" {
        return Err(RetryError::Invalid(format!(
            "dead letter {id} is {}, not open",
            d.state
        )));
    }
    let job = Job::decode(d.message.as_bytes()).map_err(|e| {
        RetryError::Invalid(format!(
            "dead letter {id} holds no decodable job ({e}); it cannot be retried"
        ))
    })?;
    let mut retry = job.next(job.task.clone());
    retry.traceparent = job.traceparent.clone();
    queue.enqueue(&[retry], Duration::ZERO).await?;
    store.resolve_dead_letter(id, "retried", by).await?;
    Ok(job.stage())
}
