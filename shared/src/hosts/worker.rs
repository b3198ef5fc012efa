//! The worker host: a long-running poller of its stages' queue with bounded concurrency, a
//! graceful drain on SIGTERM, and `/healthz`, `/readyz` and Prometheus `/metrics` for
//! Kubernetes probes and KEDA.

use super::runner::{self, RunnerOptions, RunnerStats};
use crate::ctx::Ctx;
use crate::errors::StoreError;
use crate::ports::JobQueue;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

async fn ready(State(queue): State<Arc<dyn JobQueue>>) -> (StatusCode, String) {
    match queue.depth(&[]).await {
        Ok(_) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store unreachable: {e}\n")),
    }
}

async fn metrics(State(queue): State<Arc<dyn JobQueue>>) -> String {
    let (depth, oldest) = queue.depth(&[]).await.unwrap_or((0, None));
    crate::metrics::render(&[
        ("signals_queue_depth", depth as f64),
        (
            "signals_queue_oldest_age_seconds",
            oldest.map_or(0.0, |d| d.as_secs_f64()),
        ),
    ])
}

/// The probe and metrics routes.
pub fn router(queue: Arc<dyn JobQueue>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(queue)
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
            let app = router(queue.clone());
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
