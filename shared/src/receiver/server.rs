//! The receiver's HTTP server, with fault injection for tests and demos
//! (`POST /_admin/faults`, or [`Faults::push`] in-process).

use super::db::{ApplyError, ReceiverDb};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One injected failure: the next `times` batches (of `dataset`, if given) get `status`.
#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    /// Status to answer.
    pub status: u16,
    /// How many requests it applies to.
    #[serde(default = "one")]
    pub times: u32,
    /// Only batches of this dataset.
    #[serde(default)]
    pub dataset: Option<String>,
    /// `Retry-After` seconds to send.
    #[serde(default)]
    pub retry_after_secs: Option<u64>,
    /// Response body.
    #[serde(default)]
    pub body: Option<String>,
}

fn one() -> u32 {
    1
}

/// Pending injected failures.
#[derive(Default)]
pub struct Faults(Mutex<VecDeque<Fault>>);

impl Faults {
    /// Adds a failure.
    pub fn push(&self, f: Fault) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push_back(f);
    }
    /// Removes every failure.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
    fn take(&self, dataset: Option<&str>) -> Option<Fault> {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let i = q
            .iter()
            .position(|f| f.dataset.is_none() || f.dataset.as_deref() == dataset)?;
        let f = q[i].clone();
        if q[i].times <= 1 {
            q.remove(i);
        } else {
            q[i].times -= 1;
        }
        Some(f)
    }
}

/// Shared receiver state.
pub struct ReceiverState {
    /// Storage.
    pub db: ReceiverDb,
    /// Injected failures.
    pub faults: Faults,
    /// Required `Authorization` header value, if any.
    pub expect_authorization: Option<String>,
    requests: AtomicU64,
}

impl ReceiverState {
    /// State over a database.
    pub fn new(db: ReceiverDb, expect_authorization: Option<String>) -> ReceiverState {
        ReceiverState {
            db,
            faults: Faults::default(),
            expect_authorization,
            requests: AtomicU64::new(0),
        }
    }
}

fn json_error(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

async fn batches(State(st): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> Response {
    let n = st.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let request_id = format!("rcv-{n}");
    let mut resp = handle_batch(&st, &headers, body).await;
    resp.headers_mut()
        .insert("x-request-id", request_id.parse().expect("ascii header"));
    resp
}

async fn handle_batch(st: &Arc<ReceiverState>, headers: &HeaderMap, body: Bytes) -> Response {
    if let Some(want) = &st.expect_authorization {
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            return json_error(StatusCode::UNAUTHORIZED, "missing or wrong Authorization");
        }
    }
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return json_error(StatusCode::BAD_REQUEST, "missing Idempotency-Key header");
    };
    let dataset = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("dataset").and_then(|d| d.as_str()).map(str::to_owned));
    if let Some(f) = st.faults.take(dataset.as_deref()) {
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = json_error(status, f.body.as_deref().unwrap_or("injected fault"));
        if let Some(s) = f.retry_after_secs {
            r.headers_mut()
                .insert("retry-after", s.to_string().parse().expect("digits"));
        }
        return r;
    }
    let st2 = st.clone();
    let result = tokio::task::spawn_blocking(move || st2.db.apply(&key, &body)).await;
    match result {
        Ok(Ok((resp, replayed))) => {
            let mut r = (StatusCode::OK, resp).into_response();
            r.headers_mut()
                .insert("content-type", "application/json".parse().expect("ascii"));
            if replayed {
                r.headers_mut()
                    .insert("idempotent-replayed", "true".parse().expect("ascii"));
            }
            r
        }
        Ok(Err(ApplyError::Invalid(msg))) => json_error(StatusCode::BAD_REQUEST, &msg),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &format!("receiver task failed: {e}")),
    }
}

async fn add_fault(State(st): State<Arc<ReceiverState>>, Json(f): Json<Fault>) -> StatusCode {
    st.faults.push(f);
    StatusCode::NO_CONTENT
}

async fn clear_faults(State(st): State<Arc<ReceiverState>>) -> StatusCode {
    st.faults.clear();
    StatusCode::NO_CONTENT
}

async fn stats(State(st): State<Arc<ReceiverState>>) -> Response {
    match st.db.stats() {
        Ok(s) => Json(s).into_response(),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

/// The receiver's routes.
pub fn router(state: Arc<ReceiverState>) -> Router {
    Router::new()
        .route("/v1/batches", post(batches))
        .route("/v1/health", get(|| async { "ok" }))
        .route("/_admin/faults", post(add_fault).delete(clear_faults))
        .route("/_admin/stats", get(stats))
        .layer(axum::extract::DefaultBodyLimit::max(256 * 1024 * 1024))
        .with_state(state)
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ReceiverState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}
