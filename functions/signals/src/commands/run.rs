//! `signals run`: single-process mode — the timer and every stage on the SQLite table queue.

use crate::app::{context, open_job_store, open_queue, StoreSpec};
use clap::Args;
use signals_shared::ctx::DEFAULT_RETRY;
use signals_shared::domain::job::{Job, Stage, Task};
use signals_shared::domain::retry::RetryPolicy;
use signals_shared::hosts::runner::{self, RunnerOptions};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Retry policy of every stage but push (push follows its destination's `max_attempts`).
#[derive(Args, Clone, Debug)]
pub struct RetryArgs {
    /// Deliveries of a failing job before it is dead-lettered.
    #[arg(long, default_value_t = DEFAULT_RETRY.max_attempts)]
    pub max_attempts: u32,
    /// First retry delay in milliseconds (doubles per attempt, full jitter).
    #[arg(long, default_value_t = DEFAULT_RETRY.base.as_millis() as u64)]
    pub backoff_base_ms: u64,
    /// Longest retry delay in milliseconds.
    #[arg(long, default_value_t = DEFAULT_RETRY.cap.as_millis() as u64)]
    pub backoff_cap_ms: u64,
}

impl RetryArgs {
    /// The policy.
    pub fn policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            base: Duration::from_millis(self.backoff_base_ms),
            cap: Duration::from_millis(self.backoff_cap_ms.max(self.backoff_base_ms)),
        }
    }
}

/// Options of `signals run`.
#[derive(Args, Clone)]
pub struct RunArgs {
    /// Apply this config file first (single-process mode may read the file directly).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Stop once nothing is queued, delayed or running (no timer).
    #[arg(long)]
    pub until_idle: bool,
    /// Enqueue one timer tick first (with --until-idle: one interval round, then stop).
    #[arg(long)]
    pub tick: bool,
    /// Jobs handled at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Push jobs handled at once beside them (default: half of --concurrency, rounded up); more
    /// for a destination far away, whose answers pushes wait on.
    #[arg(long)]
    pub push_slots: Option<usize>,
    /// Lease of a claimed job, renewed while it runs; a crashed process's jobs return after it.
    #[arg(long, default_value_t = 60)]
    pub lease_secs: u64,
    /// Seconds between timer ticks.
    #[arg(long, default_value_t = 10)]
    pub tick_secs: u64,
    /// `jsonl:PATH` writes batches to a file instead of pushing them (dry run).
    #[arg(long)]
    pub sink: Option<String>,
    #[command(flatten)]
    pub retry: RetryArgs,
}

/// Parses `--sink`.
pub fn jsonl_sink(sink: &Option<String>) -> anyhow::Result<Option<PathBuf>> {
    match sink.as_deref() {
        None => Ok(None),
        Some(s) => match s.strip_prefix("jsonl:") {
            Some(p) if !p.is_empty() => Ok(Some(PathBuf::from(p))),
            _ => anyhow::bail!("--sink must be `jsonl:PATH`, not `{s}`"),
        },
    }
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    signals_shared::hosts::function::terminate().await
}

/// Runs the pipeline in this process.
pub async fn run(store_path: &StoreSpec, args: RunArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.config {
        super::config::apply(store_path, file).await?;
    }
    let opts = RunnerOptions {
        concurrency: args.concurrency.max(1),
        push_only_slots: args.push_slots,
        lease: Duration::from_secs(args.lease_secs.max(1)),
        tick_every: (!args.until_idle).then(|| Duration::from_secs(args.tick_secs.max(1))),
        until_idle: args.until_idle,
        ..RunnerOptions::default()
    };
    let store = open_job_store(store_path, &opts).await?;
    let queue = open_queue(store_path, &store).await?;
    let ctx = context(store.clone(), jsonl_sink(&args.sink)?, args.retry.policy());
    if args.tick {
        queue.enqueue(&[Job::new(Task::Tick)], Duration::ZERO).await?;
    }
    tracing::info!(concurrency = opts.concurrency, "single-process runner starting");
    let stats = runner::run(ctx, queue, opts, shutdown_signal()).await?;
    tracing::info!(handled = stats.handled, "runner stopped");
    Ok(())
}

/// Options of `signals worker`.
#[derive(Args, Clone)]
pub struct WorkerArgs {
    /// Stages to poll, comma separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub stages: Vec<String>,
    /// Jobs handled at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Push jobs handled at once beside them (default: half of --concurrency, rounded up); more
    /// for a destination far away, whose answers pushes wait on.
    #[arg(long)]
    pub push_slots: Option<usize>,
    /// Lease of a claimed job, renewed while it runs.
    #[arg(long, default_value_t = 60)]
    pub lease_secs: u64,
    /// On SIGTERM, seconds in-flight jobs may finish in before they are abandoned to their leases.
    #[arg(long, default_value_t = 30)]
    pub grace_secs: u64,
    /// Address for `/healthz`, `/readyz` and `/metrics`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Also enqueue a timer tick this often (one worker per deployment should, or use a CronJob).
    #[arg(long)]
    pub tick_secs: Option<u64>,
    #[command(flatten)]
    pub retry: RetryArgs,
}

/// Parses stage names.
pub fn parse_stages(names: &[String]) -> anyhow::Result<Vec<Stage>> {
    names
        .iter()
        .map(|n| {
            Stage::ALL
                .into_iter()
                .find(|s| s.as_str() == n.trim())
                .ok_or_else(|| anyhow::anyhow!("unknown stage `{n}` (stages: scheduler, snapshot, merge, batch, push)"))
        })
        .collect()
}

/// Runs a worker until SIGTERM, then drains within the grace period.
pub async fn worker(store_path: &StoreSpec, args: WorkerArgs) -> anyhow::Result<()> {
    let opts = RunnerOptions {
        concurrency: args.concurrency.max(1),
        push_only_slots: args.push_slots,
        lease: Duration::from_secs(args.lease_secs.max(1)),
        tick_every: args.tick_secs.map(|s| Duration::from_secs(s.max(1))),
        stages: parse_stages(&args.stages)?,
        grace: Duration::from_secs(args.grace_secs),
        ..RunnerOptions::default()
    };
    let store = open_job_store(store_path, &opts).await?;
    let queue = open_queue(store_path, &store).await?;
    let ctx = context(store.clone(), None, args.retry.policy());
    tracing::info!(stages = ?opts.stages, concurrency = opts.concurrency, "worker starting");
    let stats = signals_shared::hosts::worker::run(ctx, queue, opts, args.listen, shutdown_signal()).await?;
    tracing::info!(handled = stats.handled, "worker stopped");
    Ok(())
}
