//! The single-process runner: every stage plus the timer in one process, on the table queue.
//! A killed process loses nothing: claimed messages come back when their lease runs out.

use super::{execute, settle};
use crate::ctx::Ctx;
use crate::domain::job::{EnvelopeError, Job, Stage, Task, ENVELOPE_VERSION};
use crate::errors::StoreError;
use crate::ports::{Claimed, JobQueue};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// How the runner behaves.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Jobs handled at once, besides half as many push jobs again ([`RunnerOptions::push_slots`]).
    pub concurrency: usize,
    /// Lease (visibility timeout) of a claimed message; renewed every third of it while running.
    pub lease: Duration,
    /// Pause between polls of an empty queue.
    pub poll: Duration,
    /// Enqueue a timer tick this often (`None`: no timer).
    pub tick_every: Option<Duration>,
    /// Return once nothing is queued, delayed or running.
    pub until_idle: bool,
    /// Only jobs of these stages (all when empty): one function binary per stage.
    pub stages: Vec<Stage>,
    /// On shutdown, how long in-flight jobs may run on; the rest are abandoned and their
    /// messages return to the queue when their leases expire.
    pub grace: Duration,
    /// Slots for push jobs only, on top of `concurrency` (`None`: half as many, rounded up);
    /// see [`RunnerOptions::push_slots`].
    pub push_only_slots: Option<usize>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            concurrency: 4,
            lease: Duration::from_secs(60),
            poll: Duration::from_millis(200),
            tick_every: None,
            until_idle: false,
            stages: Vec::new(),
            grace: Duration::from_secs(30),
            push_only_slots: None,
        }
    }
}

impl RunnerOptions {
    /// Slots for push jobs only, on top of `concurrency`. A push mostly waits — on the
    /// destination's answer, a round trip away in production — and holds one batch body, so the
    /// jobs that read, hash and merge rows are what `concurrency` must bound; with pushes sharing
    /// those slots, a run's pushes went out three at a time however many the destination takes
    /// (`max_concurrency`, 8 by default, still caps the requests in flight per destination).
    /// Half of `concurrency` by default, not all of it: against a destination 20 ms away either
    /// took 8–14% off an initial sync in the benchmark, but when the cores are already busy (an
    /// onboarding on loopback) as many again cost ~5% more CPU and ~12 MB more per worker, half
    /// as many no more than the noise (decision 0021).
    pub fn push_slots(&self) -> usize {
        if self.stages.is_empty() || self.stages.contains(&Stage::Push) {
            self.push_only_slots.unwrap_or(self.concurrency.div_ceil(2))
        } else {
            0
        }
    }

    /// Store connections the host's pool needs (decision 0020). A job holds at most two at a time
    /// (a read stream beside a write, or a merge's transaction beside its delta's read), a push
    /// job in a push-only slot one, the one merge job per host that also cuts its batches
    /// (`Ctx::cut_beside`) two more, and the runner's claims, acknowledgements and lease
    /// renewals need their own, or finished jobs could not be acknowledged while the others wait.
    pub fn store_connections(&self) -> usize {
        (2 * self.concurrency + self.push_slots() + 2 + 2).max(crate::backends::DEFAULT_STORE_CONNECTIONS)
    }
}

/// Counts of what a runner did.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunnerStats {
    /// Messages handled.
    pub handled: u64,
}

/// How long a message from a newer version stays invisible to this (older) worker.
pub const NEWER_VERSION_WAIT: Duration = Duration::from_secs(30);

async fn process(ctx: Arc<Ctx>, queue: Arc<dyn JobQueue>, claimed: Claimed, lease: Duration, queued: Arc<Notify>) {
    let mut job = match Job::decode(claimed.body.as_bytes()) {
        Ok(job) => job,
        // Written by a newer build during a rolling upgrade: not ours to judge. Leave it, unchanged,
        // for a worker that knows its version.
        Err(EnvelopeError::UnsupportedVersion { found }) if found > u64::from(ENVELOPE_VERSION) => {
            tracing::warn!(
                found,
                "job envelope from a newer version: leaving it for a newer worker"
            );
            let _ = queue
                .retry_later(&claimed, NEWER_VERSION_WAIT, "envelope from a newer version")
                .await;
            return;
        }
        Err(e) => {
            match queue.quarantine(&claimed, &e.to_string()).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(q) => {
                    tracing::error!(error = %q, "could not move an undecodable message to the poison queue");
                    return;
                }
            }
            tracing::error!(error = %e, "undecodable message: dead-lettering it");
            let dl = super::record_dead_letter(
                ctx.store.as_ref(),
                None,
                &claimed.body,
                &e.to_string(),
                claimed.attempts,
            )
            .await;
            if dl.is_ok() {
                let _ = queue.ack(&claimed).await;
            }
            return;
        }
    };
    job.attempt = claimed.attempts;
    let heartbeat = {
        let (queue, claimed) = (queue.clone(), claimed.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                if let Err(e) = queue.extend(&claimed, lease).await {
                    tracing::warn!(error = %e, "could not extend a lease");
                }
            }
        })
    };
    // Lent so that a handler can queue the follow-ups of work already durable before it ends.
    let outcome = crate::stages::early::lend(queue.clone(), queued, execute(&ctx, &job)).await;
    heartbeat.abort();
    settle(&ctx, queue.as_ref(), &claimed, &job, outcome).await;
    if !matches!(job.task, Task::Push { .. }) {
        super::return_free_memory(); // after the jobs that move a chunk's or a run's rows
    }
}

/// Runs until `shutdown` resolves (or until idle, with `until_idle`), then drains in-flight jobs.
pub async fn run(
    ctx: Arc<Ctx>,
    queue: Arc<dyn JobQueue>,
    opts: RunnerOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<RunnerStats, StoreError> {
    tokio::pin!(shutdown);
    // Jobs in the general slots, and push jobs in the push-only ones.
    let (mut inflight, mut pushing) = (JoinSet::new(), JoinSet::new());
    let mut stats = RunnerStats::default();
    let mut next_tick = Instant::now();
    // Jobs a handler queued before its end (`stages::early`): a reason to claim again now.
    let queued = Arc::new(Notify::new());
    loop {
        if let Some(every) = opts.tick_every {
            if Instant::now() >= next_tick {
                queue.enqueue(&[Job::new(Task::Tick)], Duration::ZERO).await?;
                next_tick = Instant::now() + every;
            }
        }
        // One slot is kept for interval and timer work: priority alone orders the queue, but
        // when every slot holds a long onboarding job (a million-row merge) nothing would be
        // free to take a small tenant's interval run for as long as those jobs last.
        let free = opts.concurrency.saturating_sub(inflight.len());
        let general = free.saturating_sub(usize::from(opts.concurrency > 1));
        let mut claimed = if general > 0 {
            queue.claim(general, opts.lease, &opts.stages).await?
        } else {
            Vec::new()
        };
        // Fewer than asked: nothing else is visible now, pushes included, so an idle worker
        // polls once, not once per kind of slot.
        let drained = general > 0 && claimed.len() < general;
        if free > general && claimed.len() == general {
            claimed.extend(queue.claim_urgent(free - general, opts.lease, &opts.stages).await?);
        }
        let push_free = if drained {
            0
        } else {
            opts.push_slots().saturating_sub(pushing.len())
        };
        let pushes = if push_free > 0 {
            queue.claim(push_free, opts.lease, &[Stage::Push]).await?
        } else {
            Vec::new()
        };
        let got = claimed.len() + pushes.len();
        stats.handled += got as u64;
        for c in claimed {
            inflight.spawn(process(ctx.clone(), queue.clone(), c, opts.lease, queued.clone()));
        }
        for c in pushes {
            pushing.spawn(process(ctx.clone(), queue.clone(), c, opts.lease, queued.clone()));
        }
        if got > 0 {
            continue;
        }
        if opts.until_idle && inflight.is_empty() && pushing.is_empty() && queue.depth(&opts.stages).await?.0 == 0 {
            break;
        }
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            Some(_) = pushing.join_next(), if !pushing.is_empty() => {}
            _ = queued.notified() => {}
            _ = tokio::time::sleep(opts.poll) => {}
        }
    }
    let running = inflight.len() + pushing.len();
    if running > 0 {
        tracing::info!(
            jobs = running,
            grace_secs = opts.grace.as_secs(),
            "draining in-flight jobs"
        );
    }
    let drain = async {
        for set in [&mut inflight, &mut pushing] {
            while let Some(r) = set.join_next().await {
                if let Err(e) = r {
                    tracing::error!(error = %e, "a job task failed");
                }
            }
        }
    };
    if tokio::time::timeout(opts.grace, drain).await.is_err() {
        tracing::warn!("grace period over: abandoning in-flight jobs; their messages return after the lease");
    }
    Ok(stats)
}
