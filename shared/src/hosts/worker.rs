//! The worker host: a long-running poller of its stages' queue with bounded concurrency, a
//! graceful drain on SIGTERM, and `/healthz`, `/readyz` and Prometheus `/metrics` for
//! Kubernetes probes and KEDA.

use super::runner::{self, RunnerOptions, RunnerStats};
use crate::ctx::Ctx;
use crate::errors::StoreError;
use crate::ports::{JobQueue, Store};
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
    store: Arc<dyn Store>,
}

async fn ready(State(Probes { queue, .. }): State<Probes>) -> (StatusCode, String) {
    match queue.depth(&[]).await {
        Ok(_) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store unreachable: {e}\n")),
    }
}

async fn metrics(State(Probes { queue, store }): State<Probes>) -> String {
    let (depth, oldest) = queue.depth(&[]).await.unwrap_or((0, None));
    let open = store.dead_letters(true).await.unwrap_or_default();
    let mut blocked: Vec<&str> = open.iter().filter_map(|d| d.run_id.as_deref()).collect();
    blocked.sort_unstable();
    blocked.dedup();
    crate::metrics::render(&[
        ("signals_queue_depth", depth as f64),
        (
            "signals_queue_oldest_age_seconds",
            oldest.map_or(0.0, |d| d.as_secs_f64()),
        ),
        ("signals_open_dead_letters", open.len() as f64),
        ("signals_blocked_runs", blocked.len() as f64),
    ])
}

/// The probe and metrics routes.
pub fn router(queue: Arc<dyn JobQueue>, store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Probes { queue, store })
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
            let app = router(queue.clone(), ctx.store.clone());
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
