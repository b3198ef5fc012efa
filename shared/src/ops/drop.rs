//! Dropping a dead letter: the operator gives up on one job. A dropped push batch counts as
//! handled so its run can finish; a run whose snapshot, merge or batch job is dropped is
//! abandoned. Either way the keys the destination may now lack are returned, so a repair can
//! re-send exactly those.

use super::repair::keys_of_body;
use crate::domain::job::{Job, Task};
use crate::errors::StoreError;
use crate::ports::{Attempt, Backend, RunState};
use std::time::Duration;

/// What a drop did.
#[derive(Debug, Default)]
pub struct Dropped {
    /// (tenant, data source) the keys belong to.
    pub source: Option<(String, String)>,
    /// Keys the destination may be missing or hold stale.
    pub keys: Vec<Vec<u8>>,
    /// What happened to the run.
    pub effect: String,
}

/// Why a drop failed.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    /// No such dead letter, or not open.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Drops open dead letter `id`, recording `by`.
pub async fn drop_dead_letter(store: &dyn Backend, id: i64, by: &str) -> Result<Dropped, DropError> {
    let d = store
        .dead_letter_by_id(id)
        .await?
        .ok_or_else(|| DropError::Invalid(format!("no dead letter {id}")))?;
    if d.state != "open" {
        return Err(DropError::Invalid(format!("dead letter {id} is {}, not open", d.state)));
    }
    let mut out = Dropped {
        effect: "nothing else to do (the message was not a job)".into(),
        ..Default::default()
    };
    if let Ok(job) = Job::decode(d.message.as_bytes()) {
        out = drop_job(store, &job, id, by).await?;
    }
    store.resolve_dead_letter(id, "dropped", by).await?;
    Ok(out)
}

async fn drop_job(store: &dyn Backend, job: &Job, id: i64, by: &str) -> Result<Dropped, DropError> {
    let (Some(tenant), Some(source), Some(run_id)) = job.scope() else {
        return Ok(Dropped {
            effect: "nothing else to do (not a job of a run)".into(),
            ..Default::default()
        });
    };
    let Some(run) = store.run(tenant, run_id).await? else {
        return Ok(Dropped {
            effect: "its run no longer exists".into(),
            ..Default::default()
        });
    };
    let schema = run.schema.clone();
    let mut out = Dropped {
        source: Some((tenant.to_owned(), source.to_owned())),
        ..Default::default()
    };
    match &job.task {
        Task::Push { batch_id, .. } => {
            if let (Some(batch), Some(schema)) = (store.batch(run_id, batch_id).await?, &schema) {
                out.keys = keys_of_body(&batch.body.json()?, schema).map_err(DropError::Invalid)?;
            }
            let note = Attempt {
                batch_id: batch_id.clone(),
                attempt: job.attempt,
                status: None,
                detail: format!("dropped by {by} (dead letter {id})"),
                request_id: None,
                duration: Duration::ZERO,
            };
            let finished = store.mark_delivered(&run, &note).await?;
            out.effect = format!(
                "batch {batch_id} counted as handled{}",
                if finished { "; the run is done" } else { "" }
            );
        }
        _ => {
            if run.mode.as_ref().is_some_and(|m| m.numbered) {
                // Its chunks staged keys as they saved batches (decision 0025): the undelivered
                // batches hold exactly the staged keys the destination never got.
                if let Some(schema) = &schema {
                    for (batch_id, _, _) in store.pending_batches(run_id).await? {
                        if let Some(batch) = store.batch(run_id, &batch_id).await? {
                            out.keys
                                .extend(keys_of_body(&batch.body.json()?, schema).map_err(DropError::Invalid)?);
                        }
                    }
                }
            } else if matches!(run.state, RunState::Merged | RunState::Batched) {
                // Merged changes the destination never got: the delta holds exactly their keys.
                if let Some(schema) = &schema {
                    let mut rx = store.changes(run_id);
                    while let Some(batch) = rx.recv().await {
                        for record in batch?.iter().flat_map(|records| records.iter()) {
                            let (_, payload) = record.map_err(|e| DropError::Invalid(e.to_string()))?;
                            let obj: serde_json::Value =
                                serde_json::from_str(payload).map_err(|e| DropError::Invalid(e.to_string()))?;
                            out.keys
                                .push(super::repair::key_of_object(&obj, schema).map_err(DropError::Invalid)?);
                        }
                    }
                }
            }
            store
                .abandon_run(run_id, &format!("abandoned: dead letter {id} dropped by {by}"))
                .await?;
            out.effect = format!("run {run_id} abandoned; the data source's next run starts from staging");
        }
    }
    Ok(out)
}
