//! Scheduler: opens interval runs for due data sources on a tick, and initial runs on onboarding.

use crate::ctx::Ctx;
use crate::domain::job::{Job, Task, PRIORITY_INTERVAL};
use crate::domain::schedule::{due, Due, SourceClock};
use crate::errors::StageError;
use crate::ports::{Run, RunKind};
use chrono::Utc;
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
    // Every job of the run inherits this: interval work goes before onboarding backlogs.
    plan.priority = if run.kind == RunKind::Interval {
        PRIORITY_INTERVAL
    } else {
        0
    };
    plan
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
