//! Scheduler: opens interval runs for due data sources on a tick, and initial runs on onboarding.

use crate::ctx::Ctx;
use crate::domain::config::Config;
use crate::domain::job::{Job, Task, PRIORITY_INTERVAL};
use crate::domain::schedule::{due, Due, SourceClock};
use crate::errors::StageError;
use crate::ports::{Run, RunKind, RunState};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

fn plan_job(job: &Job, run: &Run) -> Job {
    let mut plan = job.next(super::run_task(run, |tenant, source, run_id| Task::Plan {
        tenant,
        source,
        run_id,
    }));
    // One trace per run, opened here (linked to this scheduler job's trace).
    plan.traceparent = Some(crate::telemetry::start_run_trace(
        &run.tenant,
        &run.source,
        &run.id,
        run.kind.as_str(),
    ));
    plan.priority = priority(run);
    plan
}

/// Every job of a run inherits its first job's priority: interval work goes before onboarding
/// backlogs.
fn priority(run: &Run) -> u8 {
    if run.kind == RunKind::Interval {
        PRIORITY_INTERVAL
    } else {
        0
    }
}

/// Opens an interval run for every data source whose interval has elapsed.
pub(super) async fn tick(ctx: &Ctx, job: &Job) -> Result<Vec<Job>, StageError> {
    let Some((version, config)) = ctx.latest_config().await? else {
        tracing::warn!("tick with no configuration applied: run `signals config apply FILE`");
        return Ok(Vec::new());
    };
    let now = Utc::now();
    let mut next = Vec::new();
    let every = chrono::Duration::seconds(config.retention.prune_interval_secs as i64);
    if ctx.store.last_audit("prune").await?.is_none_or(|at| now - at >= every) {
        // Recorded first, so the ticks before the job runs do not queue it again.
        ctx.store.audit("scheduler", "prune", "store", "scheduled").await?;
        next.push(job.next(Task::Prune));
    }
    next.extend(revive_stalled(ctx, &config, now).await?);
    for (tid, tenant) in &config.tenants {
        let pauses = ctx.store.pauses(tid).await?;
        let verified: HashMap<String, _> = ctx.store.last_verifications(tid).await?.into_iter().collect();
        let clocks: HashMap<String, _> = ctx
            .store
            .source_clocks(tid)
            .await?
            .into_iter()
            .map(|(s, at, active)| (s, (at, active)))
            .collect();
        for (sid, source) in &tenant.sources {
            let clock = SourceClock {
                interval_secs: source.interval_secs,
                last_started: clocks.get(sid).map(|c| c.0),
                active: clocks.get(sid).is_some_and(|c| c.1),
                paused: tenant.paused || source.paused || pauses.iter().any(|p| p.as_ref().is_none_or(|s| s == sid)),
            };
            match due(&clock, now) {
                Due::Yes => {
                    if let Some(run) = ctx.store.open_run(tid, sid, RunKind::Interval, version).await? {
                        tracing::info!(tenant = %tid, source = %sid, run = %run.id, "opened interval run");
                        next.push(plan_job(job, &run));
                    }
                }
                Due::Busy => {
                    tracing::debug!(tenant = %tid, source = %sid, "previous run still active; waiting")
                }
                _ => {}
            }
            if let (Some(every), Some(_)) = (source.verify_interval_secs, clock.last_started) {
                let due = verified
                    .get(sid)
                    .is_none_or(|at| (now - *at).num_seconds() >= every as i64);
                if due && !clock.paused {
                    // Recorded now, so the ticks before the job runs do not queue it again.
                    ctx.store
                        .record_verification(tid, sid, "{\"scheduled\":true}", None)
                        .await?;
                    let repair = source.verify_repair;
                    next.push(job.next(Task::Verify {
                        tenant: tid.clone(),
                        source: sid.clone(),
                        repair,
                    }));
                }
            }
        }
    }
    Ok(next)
}

/// Queues the next job again for every run that stopped moving with nothing queued to move it
/// (decision 0023): a lost message would otherwise hold its data source forever. The plan stage
/// re-emits a planned run's unread chunks or its merge, the batch stage cuts a merged run or
/// re-emits its undelivered pushes; a job that was only late finds its work done, or fences
/// the earlier attempt at a chunk.
pub(super) async fn revive_stalled(ctx: &Ctx, config: &Config, now: DateTime<Utc>) -> Result<Vec<Job>, StageError> {
    let secs = config.recovery.stalled_after_secs;
    if secs == 0 {
        return Ok(Vec::new());
    }
    let mut next = Vec::new();
    for run in ctx
        .store
        .quiet_runs(now - chrono::Duration::seconds(secs as i64))
        .await?
    {
        // A blocked run waits for its dead letter to be retried or dropped; a paused one parks.
        if run.dead_letters > 0 || super::paused(ctx, &run.tenant, &run.source).await? {
            continue;
        }
        if ctx.store.queued_for_run(&run.id).await? {
            continue; // late behind other work, or running: not lost
        }
        let task = match run.state {
            RunState::Planning | RunState::Snapshotting | RunState::Snapshotted => {
                super::run_task(&run, |tenant, source, run_id| Task::Plan { tenant, source, run_id })
            }
            RunState::Merged | RunState::Batched => {
                super::run_task(&run, |tenant, source, run_id| Task::Batch { tenant, source, run_id })
            }
            RunState::Done | RunState::Abandoned => continue,
        };
        let mut again = Job::new(task);
        again.priority = priority(&run);
        let note = format!(
            "stalled: no sign of work for {secs} s and no job of the run queued; the scheduler queued its {} job again",
            again.task_name()
        );
        tracing::warn!(tenant = %run.tenant, source = %run.source, run = %run.id, state = run.state.as_str(), "{note}");
        crate::metrics::add("signals_runs_revived_total", &[("state", run.state.as_str())], 1.0);
        // Also the run's sign of work: it is revived at most once per quiet period.
        ctx.store.note_error(&run.id, &note).await?;
        next.push(again);
    }
    Ok(next)
}

/// Opens initial runs for exactly the data sources the reports need, each once; sources that
/// were already onboarded (by another report) are in sync already and are skipped.
pub(super) async fn onboard(ctx: &Ctx, job: &Job, tenant: &str, reports: &[String]) -> Result<Vec<Job>, StageError> {
    let Some((version, config)) = ctx.latest_config().await? else {
        return Err(StageError::NotFound(
            "no configuration applied: run `signals config apply FILE`".into(),
        ));
    };
    config.tenant(tenant, version)?;
    let sources = config
        .sources_for_reports(tenant, reports, version)
        .map_err(StageError::NotFound)?;
    let known: HashMap<String, _> = ctx
        .store
        .source_clocks(tenant)
        .await?
        .into_iter()
        .map(|(s, ..)| (s, ()))
        .collect();
    let mut next = Vec::new();
    for sid in sources {
        if known.contains_key(&sid) {
            tracing::info!(tenant, source = %sid, "already onboarded; skipping");
            continue;
        }
        if let Some(run) = ctx.store.open_run(tenant, &sid, RunKind::Initial, version).await? {
            tracing::info!(tenant, source = %sid, run = %run.id, "opened initial run");
            next.push(plan_job(job, &run));
        }
    }
    Ok(next)
}

/// Prunes history past the configured retention, in small steps.
pub(super) async fn prune(ctx: &Ctx) -> Result<Vec<Job>, StageError> {
    let Some((_, config)) = ctx.latest_config().await? else {
        return Ok(Vec::new());
    };
    let r = &config.retention;
    let ago = |days: u32| Utc::now() - chrono::Duration::days(i64::from(days));
    let cutoffs = crate::ports::PruneCutoffs {
        runs: ago(r.runs_days),
        ledger: ago(r.ledger_days),
        bodies: ago(r.batch_bodies_days),
        dead_letters: ago(r.dead_letters_days),
    };
    let removed = ctx.store.prune(&cutoffs).await?;
    tracing::info!(removed, "pruned history past its retention");
    ctx.store
        .audit("scheduler", "pruned", "store", &format!("{removed} rows"))
        .await?;
    Ok(Vec::new())
}
