//! The worker host: a long-running poller of its stages' queue with bounded concurrency, a
//! graceful drain on SIGTERM, and `/healthz`, `/readyz` and Prometheus `/metrics` for
//! Kubernetes probes and KEDA.

use super::runner::{self, RunnerOptions, RunnerStats};
use crate::ctx::Ctx;
use crate::domain::job::Stage;
use crate::errors::StoreError;
use crate::metrics::Gauge;
use crate::ports::{JobQueue, SourceClock};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the probe routes read.
#[derive(Clone)]
pub struct Probes {
    queue: Arc<dyn JobQueue>,
    ctx: Arc<Ctx>,
}

async fn ready(State(Probes { queue, .. }): State<Probes>) -> (StatusCode, String) {
    match queue.depth(&[]).await {
        Ok(_) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store unreachable: {e}\n")),
    }
}

async fn metrics(State(Probes { queue, ctx }): State<Probes>) -> (StatusCode, String) {
    match gauges(queue.as_ref(), &ctx).await {
        Ok(g) => (StatusCode::OK, crate::metrics::render(&g)),
        // A scrape that cannot read the queue fails loudly instead of reporting an empty queue.
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store unreachable: {e}\n")),
    }
}

/// Which ids label the lag gauge, from `SIGNALS_METRICS_LABELS`: none by default (the worst lag
/// only), `tenant` (worst lag per tenant) or `source` (per tenant and data source). Cardinality is
/// the operator's choice, never a surprise.
fn lag_labels() -> &'static str {
    match std::env::var("SIGNALS_METRICS_LABELS").as_deref() {
        Ok("tenant") => "tenant",
        Ok("source") => "source",
        _ => "none",
    }
}

/// Values read at scrape time: queue depth and oldest age per stage, open dead letters, blocked
/// runs, and the data sources' lag (time since their last successful sync).
async fn gauges(queue: &dyn JobQueue, ctx: &Ctx) -> Result<Vec<Gauge>, StoreError> {
    let mut out = Vec::new();
    for stage in Stage::ALL {
        let (depth, oldest) = queue.depth(&[stage]).await?;
        out.push(Gauge::new(
            "signals_queue_depth",
            &[("stage", stage.as_str())],
            depth as f64,
        ));
        out.push(Gauge::new(
            "signals_queue_oldest_age_seconds",
            &[("stage", stage.as_str())],
            oldest.map_or(0.0, |d| d.as_secs_f64()),
        ));
    }
    let open = ctx.store.dead_letters(true).await?;
    let mut blocked: Vec<&str> = open.iter().filter_map(|d| d.run_id.as_deref()).collect();
    blocked.sort_unstable();
    blocked.dedup();
    out.push(Gauge::new("signals_open_dead_letters", &[], open.len() as f64));
    out.push(Gauge::new("signals_blocked_runs", &[], blocked.len() as f64));
    // Lag of the data sources the current config still syncs (offboarded history is not lag).
    let config = ctx.latest_config().await.ok().flatten().map(|(_, c)| c);
    let configured = |c: &SourceClock| {
        config.as_ref().is_some_and(|cfg| {
            cfg.tenants
                .get(&c.tenant)
                .is_some_and(|t| t.sources.contains_key(&c.source))
        })
    };
    let now = chrono::Utc::now();
    let clocks: Vec<SourceClock> = ctx.store.sync_clocks().await?.into_iter().filter(configured).collect();
    let lag = |c: &SourceClock| c.lag(now).as_secs_f64();
    match lag_labels() {
        "source" => out.extend(clocks.iter().map(|c| {
            Gauge::new(
                "signals_source_lag_seconds",
                &[("tenant", &c.tenant), ("source", &c.source)],
                lag(c),
            )
        })),
        "tenant" => {
            let mut worst: std::collections::BTreeMap<&str, f64> = Default::default();
            for c in &clocks {
                let w = worst.entry(&c.tenant).or_default();
                *w = w.max(lag(c));
            }
            out.extend(
                worst
                    .into_iter()
                    .map(|(t, v)| Gauge::new("signals_source_lag_seconds", &[("tenant", t)], v)),
            );
        }
        _ => out.push(Gauge::new(
            "signals_source_lag_seconds",
            &[],
            clocks.iter().map(lag).fold(0.0, f64::max),
        )),
    }
    Ok(out)
}

/// The probe and metrics routes.
pub fn router(queue: Arc<dyn JobQueue>, ctx: Arc<Ctx>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Probes { queue, ctx })
}

/// Serves probes on `listen` (if given) and runs jobs until `shutdown`, then drains.
pub async fn run(
    ctx: Arc<Ctx>,
    queue: Arc<dyn JobQueue>,
    opts: RunnerOptions,
    listen: Option<SocketAddr>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunnerStats, StoreError> {
    let server = match listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| StoreError::Db {
                context: "listen",
                detail: format!("cannot listen on {addr}: {e}"),
            })?;
            tracing::info!(addr = %listener.local_addr().map_or(addr, |a| a), "worker probes and metrics listening");
            let app = router(queue.clone(), ctx.clone());
            Some(tokio::spawn(async move { axum::serve(listener, app).await }))
        }
        None => None,
    };
    let stats = runner::run(ctx, queue, opts, shutdown).await;
    if let Some(s) = server {
        s.abort();
    }
    stats
}
