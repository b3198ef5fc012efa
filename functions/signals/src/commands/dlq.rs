//! `signals dlq list|show|retry`: the one dead-letter model, whatever queue the job came from.

use crate::app::{open_store, StoreSpec};
use anyhow::Context;
use clap::Subcommand;
use signals_shared::domain::job::Job;
use std::time::Duration;

/// What to do with dead letters.
#[derive(Subcommand)]
pub enum DlqAction {
    /// List dead letters (open ones unless --all).
    List {
        /// Include retried and dropped ones.
        #[arg(long)]
        all: bool,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Show one dead letter in full (message, error, response body).
    Show {
        /// Dead letter id.
        id: i64,
    },
    /// Put dead-lettered jobs back on the queue with fresh attempts.
    Retry {
        /// Dead letter ids.
        ids: Vec<i64>,
        /// Retry every open dead letter.
        #[arg(long)]
        all: bool,
    },
}

/// Runs a dlq action.
pub async fn dlq(store: &StoreSpec, action: DlqAction) -> anyhow::Result<()> {
    let store = open_store(store).await?;
    match action {
        DlqAction::List { all, tenant } => {
            let list = store.dead_letters(!all).await?;
            println!(
                "{:>5} {:<8} {:<12} {:<16} {:<8} {:>8}  error",
                "id", "state", "tenant", "source", "stage", "attempts"
            );
            for d in list.iter().filter(|d| tenant.is_none() || d.tenant == tenant) {
                println!(
                    "{:>5} {:<8} {:<12} {:<16} {:<8} {:>8}  {}",
                    d.id,
                    d.state,
                    d.tenant.as_deref().unwrap_or("-"),
                    d.source.as_deref().unwrap_or("-"),
                    d.stage,
                    d.attempts,
                    d.error.chars().take(120).collect::<String>()
                );
            }
        }
        DlqAction::Show { id } => {
            let d = store
                .dead_letter_by_id(id)
                .await?
                .with_context(|| format!("no dead letter {id}"))?;
            println!("{}", serde_json::to_string_pretty(&d)?);
        }
        DlqAction::Retry { ids, all } => {
            let ids = if all {
                store.dead_letters(true).await?.into_iter().map(|d| d.id).collect()
            } else {
                ids
            };
            anyhow::ensure!(!ids.is_empty(), "name dead letter ids or pass --all");
            for id in ids {
                let d = store
                    .dead_letter_by_id(id)
                    .await?
                    .with_context(|| format!("no dead letter {id}"))?;
                anyhow::ensure!(d.state == "open", "dead letter {id} is {}, not open", d.state);
                let job = Job::decode(d.message.as_bytes())
                    .with_context(|| format!("dead letter {id} holds no decodable job; it cannot be retried"))?;
                // A fresh message id and attempt count; the task (run, batch) is the same.
                let mut retry = job.next(job.task.clone());
                retry.traceparent = job.traceparent.clone();
                store.enqueue(&[retry], Duration::ZERO).await?;
                store.resolve_dead_letter(id, "retried").await?;
                println!("dead letter {id}: {} job re-queued", job.stage());
            }
        }
    }
    Ok(())
}
