//! The replay host: an event file from `events/` (the JSON a cloud delivers) through the same
//! handlers, optionally followed through the whole pipeline on the table queue.

use super::events::{parse_event, EventError};
use super::runner::{self, RunnerOptions};
use super::{execute, Outcome};
use crate::ctx::Ctx;
use crate::domain::job::Job;
use crate::errors::StoreError;
use crate::ports::{JobQueue, Store};
use std::sync::Arc;
use std::time::Duration;

/// Why a replay could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The event file is not an event we know.
    #[error(transparent)]
    Event(#[from] EventError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Runs each message of the event and prints what happened; returns how many failed.
/// With `follow`, the resulting jobs run through the pipeline until nothing is left.
pub async fn replay(
    ctx: Arc<Ctx>,
    store: Arc<dyn Store>,
    queue: Arc<dyn JobQueue>,
    event: &str,
    follow: bool,
) -> Result<usize, ReplayError> {
    let messages = parse_event(event)?;
    let mut failed = 0;
    for m in messages {
        let mut job = match Job::decode(m.body.as_bytes()) {
            Ok(j) => j,
            Err(e) => {
                failed += 1;
                let id = super::record_dead_letter(store.as_ref(), None, &m.body, &e.to_string(), m.attempts).await?;
                eprintln!("{}: {e} (dead letter {id})", m.origin);
                continue;
            }
        };
        job.attempt = m.attempts;
        match execute(&ctx, &job).await {
            Outcome::Done(next) => {
                println!("{}: {} job done, {} next", m.origin, job.stage(), next.len());
                for n in &next {
                    println!("  {}", n.encode());
                }
                if follow {
                    queue.enqueue(&next, Duration::ZERO).await?;
                }
            }
            Outcome::Retry { delay, error } => {
                failed += 1;
                eprintln!(
                    "{}: failed (a queue would retry in {:.1}s): {error}",
                    m.origin,
                    delay.as_secs_f64()
                );
            }
            Outcome::DeadLetter { error } => {
                failed += 1;
                let id = super::record_dead_letter(store.as_ref(), Some(&job), &m.body, &error, m.attempts).await?;
                eprintln!("{}: dead-lettered as {id}: {error}", m.origin);
            }
        }
    }
    if follow {
        let opts = RunnerOptions {
            until_idle: true,
            ..RunnerOptions::default()
        };
        runner::run(ctx, queue, opts, std::future::pending()).await?;
        println!("followed through the pipeline; see `signals status`");
    }
    Ok(failed)
}
