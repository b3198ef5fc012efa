//! The Lambda host: each function binary becomes a Lambda function when `AWS_LAMBDA_RUNTIME_API`
//! is set. An SQS batch is handled concurrently, a span per message, and answered with
//! `batchItemFailures` listing exactly the messages to deliver again: undecodable bodies (SQS's
//! redrive policy moves those to the DLQ after `maxReceiveCount`; `signals dlq import` brings
//! them into the store), retryable failures (made visible again after their backoff), and jobs
//! stopped before the invocation deadline. A job that fails fatally or exhausts its attempts
//! (`ApproximateReceiveCount`) becomes a dead letter in the store and is acknowledged, like on any
//! other host (DESIGN.md §2). An EventBridge scheduled event runs the scheduler's tick.
//!
//! Each invocation ends with one CloudWatch Embedded Metric Format log line (jobs by outcome,
//! duration), since a Lambda has no `/metrics` to scrape.

use super::events::{decode, receive_count, tick_of, CloudEvent};
use super::runner::NEWER_VERSION_WAIT;
use super::{execute, settle, Outcome};
use crate::ctx::Ctx;
use crate::domain::job::{EnvelopeError, Job, Stage, ENVELOPE_VERSION};
use crate::errors::StoreError;
use crate::ports::{Claimed, JobQueue};
use crate::sqs::SqsQueue;
use async_trait::async_trait;
use aws_lambda_events::sqs::{SqsBatchResponse, SqsMessage};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Time kept back from the invocation deadline to report the batch: a tenth of what is left, at
/// most this much (a 3-second function keeps 0.3 s, a 15-minute one 3 s).
const DEADLINE_MARGIN: Duration = Duration::from_secs(3);

/// The messages of one invocation, seen as a queue: enqueue and visibility go to SQS; `ack` is a
/// no-op because Lambda deletes every message the response does not list as failed.
struct Invocation<'a> {
    sqs: &'a SqsQueue,
}

#[async_trait]
impl JobQueue for Invocation<'_> {
    async fn enqueue(&self, jobs: &[Job], delay: Duration) -> Result<(), StoreError> {
        self.sqs.enqueue(jobs, delay).await
    }
    async fn claim(&self, _: usize, _: Duration, _: &[Stage]) -> Result<Vec<Claimed>, StoreError> {
        Ok(Vec::new())
    }
    async fn extend(&self, claimed: &Claimed, lease: Duration) -> Result<(), StoreError> {
        self.sqs.extend(claimed, lease).await
    }
    async fn ack(&self, _: &Claimed) -> Result<(), StoreError> {
        Ok(())
    }
    async fn retry_later(&self, claimed: &Claimed, delay: Duration, error: &str) -> Result<(), StoreError> {
        self.sqs.retry_later(claimed, delay, error).await
    }
    async fn depth(&self, stages: &[Stage]) -> Result<(u64, Option<Duration>), StoreError> {
        self.sqs.depth(stages).await
    }
}

/// Counts of one invocation, for its metrics line.
#[derive(Default)]
struct Tally {
    done: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    undecodable: AtomicU64,
    timed_out: AtomicU64,
}

/// What became of one message.
enum Fate {
    Done,
    Retry,
    DeadLettered,
    Undecodable,
    TimedOut,
}

/// Serves invocations until the runtime stops.
pub async fn run(ctx: Arc<Ctx>, sqs: Arc<SqsQueue>, stage: Stage) -> Result<(), lambda_runtime::Error> {
    tracing::info!(%stage, "Lambda host starting");
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (ctx, sqs) = (ctx.clone(), sqs.clone());
        async move { invoke(&ctx, &sqs, stage, event).await }
    }))
    .await
}

async fn invoke(
    ctx: &Ctx,
    sqs: &SqsQueue,
    stage: Stage,
    event: LambdaEvent<Value>,
) -> Result<Value, lambda_runtime::Error> {
    let started = Instant::now();
    let left = time_left(event.context.deadline, std::time::SystemTime::now());
    let deadline = left.saturating_sub(DEADLINE_MARGIN.min(left / 10));
    let tally = Tally::default();
    let result = match decode(event.payload) {
        Err(e) => Err(lambda_runtime::Error::from(format!(
            "not an event this function handles: {e}"
        ))),
        Ok(CloudEvent::Scheduled(e)) => {
            let tick = tick_of(&e);
            let claimed = Claimed {
                handle: String::new(),
                body: tick.encode(),
                attempts: 1,
            };
            match handle(ctx, sqs, &claimed, deadline, &tally).await {
                Fate::Done | Fate::DeadLettered => Ok(Value::Null),
                // EventBridge retries a failed asynchronous invocation; the next tick comes anyway.
                _ => Err(lambda_runtime::Error::from("the scheduled tick failed; see the logs")),
            }
        }
        Ok(CloudEvent::Sqs(e)) => {
            let handled = futures_util::future::join_all(e.records.iter().map(|m| {
                let span = tracing::info_span!(
                    "sqs.message",
                    message_id = m.message_id.as_deref().unwrap_or(""),
                    attempt = receive_count(m)
                );
                async {
                    let id = m.message_id.clone().unwrap_or_default();
                    let failed = match claimed_of(sqs, stage, m) {
                        Some(claimed) => !matches!(
                            handle(ctx, sqs, &claimed, deadline, &tally).await,
                            Fate::Done | Fate::DeadLettered
                        ),
                        None => {
                            tracing::error!("SQS record without a body or receipt handle");
                            tally.undecodable.fetch_add(1, Ordering::Relaxed);
                            true
                        }
                    };
                    failed.then_some(id)
                }
                .instrument(span)
            }))
            .await;
            let mut response = SqsBatchResponse::default();
            for id in handled.into_iter().flatten() {
                response.add_failure(id);
            }
            Ok(serde_json::to_value(response)?)
        }
    };
    emit_metrics(stage, &tally, started.elapsed());
    crate::telemetry::flush();
    result
}

/// Time left until the invocation deadline. Lambda sends the deadline as Unix epoch milliseconds;
/// local emulators (cargo lambda's) send the timeout itself, which no epoch time this century is
/// as small as.
fn time_left(deadline_ms: u64, now: std::time::SystemTime) -> Duration {
    const YEAR_2001_MS: u64 = 978_307_200_000;
    if deadline_ms < YEAR_2001_MS {
        return Duration::from_millis(deadline_ms);
    }
    Duration::from_millis(deadline_ms)
        .checked_sub(now.duration_since(std::time::UNIX_EPOCH).unwrap_or_default())
        .unwrap_or_default()
}

fn claimed_of(sqs: &SqsQueue, stage: Stage, m: &SqsMessage) -> Option<Claimed> {
    // The queue the message came from; this function's own if the ARN names none of ours.
    let url = sqs
        .url_for_arn(m.event_source_arn.as_deref().unwrap_or(""))
        .unwrap_or_else(|| sqs.url(stage));
    Some(Claimed {
        handle: format!("{url}\t{}", m.receipt_handle.as_deref()?),
        body: m.body.clone()?,
        attempts: receive_count(m),
    })
}

/// Runs one message to its fate within the invocation's time.
async fn handle(ctx: &Ctx, sqs: &SqsQueue, claimed: &Claimed, time_left: Duration, tally: &Tally) -> Fate {
    let mut job = match Job::decode(claimed.body.as_bytes()) {
        Ok(job) => job,
        Err(EnvelopeError::UnsupportedVersion { found }) if found > u64::from(ENVELOPE_VERSION) => {
            tracing::warn!(
                found,
                "job envelope from a newer version: leaving it for a newer function"
            );
            let _ = sqs.retry_later(claimed, NEWER_VERSION_WAIT, "newer envelope").await;
            tally.retried.fetch_add(1, Ordering::Relaxed);
            return Fate::Retry;
        }
        Err(e) => {
            tracing::error!(error = %e, "undecodable message: reporting it failed (the redrive policy moves it to the DLQ)");
            tally.undecodable.fetch_add(1, Ordering::Relaxed);
            return Fate::Undecodable;
        }
    };
    job.attempt = claimed.attempts;
    let outcome = match tokio::time::timeout(time_left, execute(ctx, &job)).await {
        Ok(o) => o,
        Err(_) => {
            tracing::warn!(stage = %job.stage(), "stopped before the invocation deadline; the message will be delivered again");
            tally.timed_out.fetch_add(1, Ordering::Relaxed);
            return Fate::TimedOut;
        }
    };
    let fate = match &outcome {
        Outcome::Done(_) => Fate::Done,
        Outcome::Retry { .. } => Fate::Retry,
        Outcome::DeadLetter { .. } => Fate::DeadLettered,
    };
    if !settle(ctx, &Invocation { sqs }, claimed, &job, outcome).await {
        // Follow-ups not enqueued or the dead letter not recorded: deliver the message again.
        tally.retried.fetch_add(1, Ordering::Relaxed);
        return Fate::Retry;
    }
    let counter = match fate {
        Fate::Done => &tally.done,
        Fate::DeadLettered => &tally.dead_lettered,
        _ => &tally.retried,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    fate
}

/// One CloudWatch Embedded Metric Format line: CloudWatch turns it into metrics, any log
/// pipeline can parse it.
fn emit_metrics(stage: Stage, t: &Tally, took: Duration) {
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let metric = |name: &str, unit: &str| serde_json::json!({ "Name": name, "Unit": unit });
    let line = serde_json::json!({
        "_aws": {
            "Timestamp": chrono::Utc::now().timestamp_millis(),
            "CloudWatchMetrics": [{
                "Namespace": "SignalsETL",
                "Dimensions": [["stage"]],
                "Metrics": [
                    metric("jobs_done", "Count"), metric("jobs_retried", "Count"),
                    metric("jobs_dead_lettered", "Count"), metric("messages_undecodable", "Count"),
                    metric("jobs_timed_out", "Count"), metric("invocation_ms", "Milliseconds"),
                ],
            }],
        },
        "stage": stage.as_str(),
        "jobs_done": n(&t.done),
        "jobs_retried": n(&t.retried),
        "jobs_dead_lettered": n(&t.dead_lettered),
        "messages_undecodable": n(&t.undecodable),
        "jobs_timed_out": n(&t.timed_out),
        "invocation_ms": took.as_millis() as u64,
    });
    // Straight to stdout, which Lambda sends to CloudWatch Logs as is.
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_are_epoch_millis_or_an_emulators_timeout() {
        let now = std::time::UNIX_EPOCH + Duration::from_millis(1_795_700_000_000);
        assert_eq!(time_left(1_795_700_030_000, now), Duration::from_secs(30));
        assert_eq!(time_left(1_795_699_000_000, now), Duration::ZERO, "already past");
        assert_eq!(
            time_left(600_000, now),
            Duration::from_secs(600),
            "cargo lambda sends the timeout"
        );
    }
}
