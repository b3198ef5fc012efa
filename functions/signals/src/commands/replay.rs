//! `signals replay FILE [--follow]`: a cloud event file through the same handlers.

use crate::app::{context, open_store, Exit};
use anyhow::Context;
use clap::Args;
use signals_shared::domain::job::Job;
use signals_shared::hosts::events::parse_event;
use signals_shared::hosts::runner::{self, RunnerOptions};
use signals_shared::hosts::{execute, Outcome};
use signals_shared::ports::{DeadLetterStore, JobQueue};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options of `signals replay`.
#[derive(Args)]
pub struct ReplayArgs {
    /// An event file (SQS event, EventBridge scheduled event).
    pub file: PathBuf,
    /// Follow the resulting jobs through the whole pipeline (on the table queue).
    #[arg(long)]
    pub follow: bool,
    /// `jsonl:PATH` writes batches to a file instead of pushing them.
    #[arg(long)]
    pub sink: Option<String>,
}

/// Runs each message of the event; without `--follow`, prints the jobs it would enqueue.
pub async fn replay(store_path: &Path, args: ReplayArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let messages = parse_event(&text).with_context(|| format!("{}", args.file.display()))?;
    let store = open_store(store_path)?;
    let ctx = context(store.clone(), super::run::jsonl_sink(&args.sink)?);
    let mut failed = 0;
    for m in messages {
        let mut job = match Job::decode(m.body.as_bytes()) {
            Ok(j) => j,
            Err(e) => {
                failed += 1;
                eprintln!("{}: {e}", m.origin);
                store
                    .dead_letter(None, &m.body, "unknown", &e.to_string(), m.attempts)
                    .await?;
                continue;
            }
        };
        job.attempt = m.attempts;
        match execute(&ctx, &job).await {
            Outcome::Done(next) => {
                println!(
                    "{}: {} job done, {} next",
                    m.origin,
                    job.stage(),
                    next.len()
                );
                for n in &next {
                    println!("  {}", n.encode());
                }
                if args.follow {
                    store.enqueue(&next, Duration::ZERO).await?;
                }
            }
            Outcome::Retry { delay, error } => {
                failed += 1;
                eprintln!(
                    "{}: failed (would retry in {:.1}s): {error}",
                    m.origin,
                    delay.as_secs_f64()
                );
            }
            Outcome::DeadLetter { error } => {
                failed += 1;
                let id = store
                    .dead_letter(
                        Some(&job),
                        &m.body,
                        job.stage().as_str(),
                        &error,
                        m.attempts,
                    )
                    .await?;
                eprintln!("{}: dead-lettered as {id}: {error}", m.origin);
            }
        }
    }
    if args.follow {
        let opts = RunnerOptions {
            until_idle: true,
            ..RunnerOptions::default()
        };
        runner::run(ctx, store, opts, std::future::pending()).await?;
        println!("followed through the pipeline; see `signals status`");
    }
    if failed > 0 {
        return Err(Exit(1).into());
    }
    Ok(())
}
