//! Push: sends one batch with its id as `Idempotency-Key` and records every attempt in the
//! delivery ledger. A batch is marked delivered only after a 2xx; the last one finishes the run.

use crate::ctx::Ctx;
use crate::domain::job::Job;
use crate::domain::job::Task;
use crate::domain::packing::Body;
use crate::domain::retry::{classify_status, StatusClass};
use crate::errors::StageError;
use crate::ports::{Attempt, BatchRecord, PushRequest, Run, RunState};
use crate::protocol::split_body;
use std::time::Instant;
use tracing::Instrument;

/// Delivers the batch unless it was delivered already.
pub(super) async fn push(ctx: &Ctx, job: &Job, run: &Run, batch_id: &str) -> Result<Vec<Job>, StageError> {
    let attempt = job.attempt;
    if run.state == RunState::Abandoned {
        return Ok(Vec::new()); // an operator gave the run up; its batches are not sent
    }
    let batch = ctx
        .store
        .batch(&run.id, batch_id)
        .await?
        .ok_or_else(|| StageError::NotFound(format!("run `{}` has no batch `{batch_id}`", run.id)))?;
    if batch.delivered {
        // Never resent. If it was split (413) and the children's jobs were lost, re-emit them.
        return children_jobs(ctx, job, run, &batch).await;
    }
    // Delivery settings come from the latest config, so a fixed URL or a rotated credential
    // applies to batches already cut; what was read and how it was cut stays the run's version.
    let (version, config) = ctx
        .latest_config()
        .await?
        .ok_or_else(|| StageError::NotFound("no configuration applied".into()))?;
    let (dest_id, dest) = ctx.destination(&config, &run.tenant, version)?;
    let pusher = ctx.connectors.pusher(dest_id, dest)?;
    let tenant_cap = config.tenant(&run.tenant, version)?.max_push_concurrency;
    let started = Instant::now();
    let request = PushRequest {
        tenant: &run.tenant,
        tenant_max_concurrency: tenant_cap,
        batch_id,
        body: &batch.body,
    };
    let span = tracing::info_span!(
        "push.batch",
        otel.name = "push.batch",
        batch = batch_id,
        rows = batch.rows,
        bytes = batch.body.len(),
        attempt,
        http.response.status_code = tracing::field::Empty,
        request_id = tracing::field::Empty,
        error = tracing::field::Empty
    );
    let result = pusher.push(&request).instrument(span.clone()).await;
    match &result {
        Ok(r) => {
            span.record("http.response.status_code", r.status);
            span.record("request_id", r.request_id.as_deref().unwrap_or(""));
        }
        Err(e) => {
            span.record("error", e.to_string());
        }
    }
    let mut record = Attempt {
        batch_id: batch_id.to_owned(),
        attempt,
        status: None,
        detail: String::new(),
        request_id: None,
        duration: started.elapsed(),
    };
    // Throttling is its own class: an operator tells it from a rejected batch at a glance.
    let class = match &result {
        Ok(r) if r.status == 429 => "429",
        Ok(r) => ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .get((r.status / 100).saturating_sub(1) as usize)
            .copied()
            .unwrap_or("other"),
        Err(_) => "transport",
    };
    crate::metrics::add("signals_push_total", &[("class", class)], 1.0);
    crate::metrics::observe("signals_push_seconds", &[], record.duration.as_secs_f64());
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            record.detail = e.to_string();
            ctx.store.record_attempt(&run.id, &record).await?;
            return Err(e.into());
        }
    };
    record.status = Some(resp.status);
    record.detail = resp.excerpt.clone();
    record.request_id = resp.request_id.clone();
    tracing::info!(
        batch = batch_id,
        status = resp.status,
        request_id = resp.request_id.as_deref().unwrap_or(""),
        duration_ms = record.duration.as_millis() as u64,
        rows = batch.rows,
        "pushed batch"
    );
    match classify_status(resp.status) {
        StatusClass::Success => {
            crate::crash::point("after_push_2xx");
            crate::metrics::add("signals_batches_pushed_total", &[], 1.0);
            crate::metrics::add("signals_bytes_pushed_total", &[], batch.body.len() as f64);
            if ctx.store.mark_delivered(run, &record).await? {
                tracing::info!(tenant = %run.tenant, source = %run.source, run = %run.id, "run done");
            }
            Ok(Vec::new())
        }
        StatusClass::Retry => {
            ctx.store.record_attempt(&run.id, &record).await?;
            Err(StageError::PushRetry {
                batch_id: batch_id.to_owned(),
                status: resp.status,
                excerpt: resp.excerpt,
                retry_after: resp.retry_after,
            })
        }
        StatusClass::Reject if resp.status == 413 => match split_body(&batch.body.json()?, &run.id) {
            Some(halves) => {
                let children: Vec<BatchRecord> = halves
                    .into_iter()
                    .map(|h| BatchRecord {
                        id: h.id,
                        run_id: run.id.clone(),
                        seq_first: h.first as i64,
                        seq_last: h.last as i64,
                        rows: h.records as i64,
                        body: Body::gzip_of(&h.body),
                        delivered: false,
                    })
                    .collect();
                tracing::warn!(
                    batch = batch_id,
                    rows = batch.rows,
                    "destination said 413: splitting the batch in two"
                );
                record.detail = format!("413: split into {} and {}", children[0].id, children[1].id);
                ctx.store.split_batch(run, &record, children).await?;
                children_jobs(ctx, job, run, &batch).await
            }
            None => {
                ctx.store.record_attempt(&run.id, &record).await?;
                Err(StageError::PushRejected {
                    batch_id: batch_id.to_owned(),
                    status: resp.status,
                    excerpt: format!(
                        "a single change record is larger than the destination accepts: {}",
                        resp.excerpt
                    ),
                })
            }
        },
        StatusClass::Reject => {
            ctx.store.record_attempt(&run.id, &record).await?;
            Err(StageError::PushRejected {
                batch_id: batch_id.to_owned(),
                status: resp.status,
                excerpt: resp.excerpt,
            })
        }
    }
}

/// Push jobs for undelivered batches inside a (split) batch's sequence range.
async fn children_jobs(ctx: &Ctx, job: &Job, run: &Run, parent: &BatchRecord) -> Result<Vec<Job>, StageError> {
    Ok(ctx
        .store
        .pending_batches(&run.id)
        .await?
        .into_iter()
        .filter(|(id, lo, hi)| *id != parent.id && *lo >= parent.seq_first && *hi <= parent.seq_last)
        .map(|(batch_id, _, _)| {
            job.next(super::run_task(run, |tenant, source, run_id| Task::Push {
                tenant,
                source,
                run_id,
                batch_id,
            }))
        })
        .collect())
}
