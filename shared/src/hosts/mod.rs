//! Hosts: how a stage handler is invoked. Each host maps [`Outcome`] onto its own mechanism —
//! the table-queue runner here; `lambda` (SQS partial batch failures) and `worker` later — so
//! retry, dead-letter and tracing rules live once, in [`execute`].

#[cfg(feature = "jemalloc")]
mod allocator;
pub mod events;
pub mod function;
#[cfg(feature = "lambda")]
pub mod lambda;
pub mod replay;
pub mod runner;
#[cfg(feature = "http-server")]
pub mod worker;

use crate::ctx::Ctx;
use crate::domain::job::{Job, Stage};
use crate::domain::retry::{Decision, RetryPolicy};
use crate::ports::JobQueue;
use std::time::Duration;
use tracing::Instrument;

/// What a host must do with a message after its handler ran.
#[derive(Debug)]
pub enum Outcome {
    /// Enqueue these follow-up jobs, then acknowledge.
    Done(Vec<Job>),
    /// Make the message visible again after the delay.
    Retry {
        /// Wait before the next attempt.
        delay: Duration,
        /// The error of this attempt.
        error: String,
    },
    /// Record a dead letter in the store, then acknowledge.
    DeadLetter {
        /// The final error.
        error: String,
    },
}

async fn policy(ctx: &Ctx, job: &Job) -> RetryPolicy {
    if job.stage() != Stage::Push {
        return ctx.retry;
    }
    let Some(tenant) = job.scope().0 else {
        return ctx.retry;
    };
    match ctx.latest_config().await {
        Ok(Some((v, config))) => match ctx.destination(&config, tenant, v) {
            Ok((_, d)) => RetryPolicy {
                max_attempts: d.max_attempts,
                base: Duration::from_millis(d.backoff_base_ms),
                cap: Duration::from_millis(d.backoff_cap_ms),
            },
            Err(_) => ctx.retry,
        },
        _ => ctx.retry,
    }
}

/// Runs a job's handler inside a span naming tenant, source, run, stage and attempt, and decides
/// what the host does next. Never panics on a handler's error.
pub async fn execute(ctx: &Ctx, job: &Job) -> Outcome {
    let (tenant, source, run) = job.scope();
    let span = tracing::info_span!("job", otel.name = job.stage().as_str(), stage = %job.stage(),
        task = job.task_name(), tenant = tenant.unwrap_or(""), source = source.unwrap_or(""),
        run = run.unwrap_or(""), attempt = job.attempt, trace_id = job.trace_id().unwrap_or(""),
        otel.status_code = tracing::field::Empty, error = tracing::field::Empty);
    crate::telemetry::adopt(&span, job.traceparent.as_deref());
    let job_span = span.clone();
    async {
        let (started, started_at) = (std::time::Instant::now(), chrono::Utc::now());
        let heartbeat = run.map(|run| tokio::spawn(run_heartbeat(ctx.store.clone(), run.to_owned())));
        let result = crate::stages::handle(ctx, job).await;
        if let Some(h) = heartbeat {
            h.abort();
        }
        let stage = job.stage().as_str();
        let busy = started.elapsed();
        crate::metrics::observe("signals_job_duration_seconds", &[("stage", stage)], busy.as_secs_f64());
        if let Some(run) = run {
            // Run history; a failure here costs a line in the history, never the job.
            if let Err(e) = ctx
                .store
                .record_stage(run, stage, started_at, busy, result.is_err())
                .await
            {
                tracing::warn!(error = %e, "could not record the stage timing");
            }
        }
        let outcome = match &result {
            Ok(_) => "done",
            Err(e) if e.retryable() => "failed_retryable",
            Err(_) => "failed_fatal",
        };
        crate::metrics::add("signals_jobs_total", &[("stage", stage), ("outcome", outcome)], 1.0);
        if let Err(e) = &result {
            job_span.record("otel.status_code", "ERROR");
            job_span.record("error", e.to_string());
        }
        match result {
            Ok(mut next) => {
                // Follow-ups in this job's trace become children of this job's span.
                if let Some(tp) = crate::telemetry::traceparent(&job_span) {
                    for n in next.iter_mut().filter(|n| n.trace_id() == job.trace_id()) {
                        n.traceparent = Some(tp.clone());
                    }
                }
                tracing::info!(next = next.len(), ms = busy.as_millis() as u64, "job done");
                Outcome::Done(next)
            }
            Err(e) => {
                if matches!(
                    e,
                    crate::errors::StageError::Source(crate::errors::SourceError::Connect { .. })
                ) {
                    // A rotated password looks like a failed login: re-fetch secrets next time.
                    crate::secrets::invalidate_cached();
                }
                let error = e.to_string();
                let p = policy(ctx, job).await;
                match p.decide(job.attempt.max(1), e.retryable(), e.retry_after(), fastrand::f64()) {
                    Decision::RetryAfter(delay) => {
                        tracing::warn!(%error, delay_ms = delay.as_millis() as u64, "job failed; will retry");
                        if let Some(run) = run {
                            // Until the retry is due the run only waits: not stalled, whatever
                            // the queue can show (decision 0023).
                            let until = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
                            let _ = ctx.store.defer_run(run, &error, until).await;
                        }
                        Outcome::Retry { delay, error }
                    }
                    Decision::DeadLetter => {
                        tracing::error!(%error, retryable = e.retryable(), "job failed; dead-lettering");
                        Outcome::DeadLetter { error }
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Records a dead letter in the store and counts it (`stage` "unknown" when the body did not decode).
pub async fn record_dead_letter(
    store: &dyn crate::ports::Store,
    job: Option<&Job>,
    body: &str,
    error: &str,
    attempts: u32,
) -> Result<i64, crate::errors::StoreError> {
    let stage = job.map_or("unknown", |j| j.stage().as_str());
    let id = store.dead_letter(job, body, stage, error, attempts).await?;
    crate::metrics::add("signals_dead_letters_total", &[("stage", stage)], 1.0);
    Ok(id)
}

/// While a job of a run goes on, tells the store every `RUN_HEARTBEAT` that the run is worked
/// on, so the scheduler does not take a run with one long job (a large merge, a slow source's
/// chunk) for stalled. Most jobs end before the first beat.
async fn run_heartbeat(store: std::sync::Arc<dyn crate::ports::Store>, run: String) {
    loop {
        tokio::time::sleep(crate::domain::schedule::RUN_HEARTBEAT).await;
        if let Err(e) = store.touch_run(&run).await {
            tracing::warn!(error = %e, "could not record the run's heartbeat");
        }
    }
}

/// Enqueues a handler's follow-up jobs, each delayed until its `not_before`.
pub async fn enqueue_next(queue: &dyn JobQueue, next: Vec<Job>) -> Result<(), crate::errors::StoreError> {
    let (later, now): (Vec<Job>, Vec<Job>) = next.into_iter().partition(|j| j.not_before.is_some());
    queue.enqueue(&now, Duration::ZERO).await?;
    for j in later {
        let wait = j
            .not_before
            .map(|t| (t - chrono::Utc::now()).to_std().unwrap_or_default());
        queue
            .enqueue(std::slice::from_ref(&j), wait.unwrap_or_default())
            .await?;
    }
    Ok(())
}

/// Applies an outcome through a queue and the store's dead letters; errors here are logged and
/// leave the message to be redelivered when its lease runs out (then it returns false).
pub async fn settle(
    ctx: &Ctx,
    queue: &dyn JobQueue,
    claimed: &crate::ports::Claimed,
    job: &Job,
    outcome: Outcome,
) -> bool {
    let result = async {
        match outcome {
            Outcome::Done(next) => {
                enqueue_next(queue, next).await?;
                crate::crash::point("after_enqueue_before_ack");
                queue.ack(claimed).await
            }
            Outcome::Retry { delay, error } => queue.retry_later(claimed, delay, &error).await,
            Outcome::DeadLetter { error } => {
                record_dead_letter(ctx.store.as_ref(), Some(job), &claimed.body, &error, claimed.attempts).await?;
                queue.ack(claimed).await
            }
        }
    }
    .await;
    if let Err(e) = &result {
        tracing::error!(error = %e, "could not settle a job; it will be redelivered after its lease");
    }
    result.is_ok()
}

/// Tunes the allocators for long-running workers whose peak must not drift with how long they
/// ran. With the `jemalloc` feature (the worker hosts and the CLI) Rust's allocations go to
/// jemalloc, whose options are compiled in (`allocator`); glibc's malloc still serves the C
/// libraries (SQLite) and any build without the feature (Lambda), and is tuned here
/// (`make bench`: the same ±10% for a 5,000,000-row sync as for 1,000,000):
///
/// - arenas capped at two: by default glibc opens up to eight per core as threads contend, each
///   keeping freed memory of its own;
/// - a fixed 128 KiB mmap threshold: by default the threshold rises to the largest block freed
///   so far (up to 32 MiB), after which batch bodies and read buffers of a few MiB come from the
///   heap and leave it fragmented — with the threshold fixed they are mapped and unmapped whole.
///   Measured: a 1,000,000-row batch stage peaked at 41 MB instead of 63, a 5,000,000-row
///   sync at 57 MB instead of 78 (53 and 68 for 1,000,000). Mapping each fresh costs page
///   faults, so our own large buffers are kept for reuse instead (`domain::buffers`, decision
///   0014); a raised threshold was faster still but held 20–60 MB more per worker.
///
/// Call before starting the runtime's threads; `MALLOC_ARENA_MAX` and `MALLOC_MMAP_THRESHOLD_`
/// in the environment still win.
pub fn tune_malloc() {
    #[cfg(feature = "jemalloc")]
    allocator::keep_options();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets an allocator parameter; it has no memory-safety preconditions.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 2);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
            }
        }
    }
}

/// Hands memory freed by a finished job back to the system. glibc keeps freed pages of its
/// arenas until the top of the heap is free, so a long run's resident set creeps up with the
/// fragments of earlier chunks; trimming after each large job keeps a long onboarding's peak
/// near a short one's. A few milliseconds at most, off the hot path. (jemalloc, where it is the
/// allocator, returns its own freed pages within a second: `allocator`.)
pub fn return_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the system; no memory-safety preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
