//! The receiver's HTTP server, with fault injection for tests and demos
//! (`POST /_admin/faults`, or [`Faults::push`] in-process).

use super::db::{ApplyError, ReceiverDb};
use super::faults::{Draw, Faults, RateFaults};
use crate::protocol::ChecksumRequest;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Shared receiver state.
pub struct ReceiverState {
    /// Storage.
    pub db: ReceiverDb,
    /// Injected failures.
    pub faults: Faults,
    /// Required `Authorization` header value, if any.
    pub expect_authorization: Option<String>,
    /// Faults by rate, if configured.
    pub rates: Option<RateFaults>,
    /// Bodies larger than this (after decompression) get 413 Payload Too Large.
    pub max_body_bytes: Option<usize>,
    /// Requests that arrived gzip-compressed.
    pub gzip_bodies: AtomicU64,
    /// Acknowledge a batch once its JSON parses, without applying it (benchmarks measure the
    /// sender's side apart from this receiver's own SQLite writes).
    pub ack_after_parse: bool,
    requests: AtomicU64,
    in_flight: AtomicU64,
    most_in_flight: AtomicU64,
}

impl ReceiverState {
    /// State over a database.
    pub fn new(db: ReceiverDb, expect_authorization: Option<String>) -> ReceiverState {
        ReceiverState {
            db,
            faults: Faults::default(),
            expect_authorization,
            rates: None,
            max_body_bytes: None,
            gzip_bodies: AtomicU64::new(0),
            ack_after_parse: false,
            requests: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            most_in_flight: AtomicU64::new(0),
        }
    }

    /// The most batch requests it was answering at once: what a sender's concurrency looks like
    /// from the destination.
    pub fn most_in_flight(&self) -> u64 {
        self.most_in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request in flight while it lives.
struct InFlight<'a>(&'a ReceiverState);

impl<'a> InFlight<'a> {
    fn enter(st: &'a ReceiverState) -> InFlight<'a> {
        let now = st.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        st.most_in_flight.fetch_max(now, Ordering::Relaxed);
        InFlight(st)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn json_error(status: StatusCode, msg: &str) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

async fn batches(State(st): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> Response {
    let n = st.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let request_id = format!("rcv-{n}");
    let counted = InFlight::enter(&st);
    let mut resp = handle_batch(&st, &headers, body).await;
    drop(counted);
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
    let body = match headers.get("content-encoding").and_then(|v| v.to_str().ok()) {
        None | Some("identity") => body,
        Some("gzip") => match crate::domain::packing::gunzip(&body) {
            Ok(b) => {
                st.gzip_bodies.fetch_add(1, Ordering::Relaxed);
                Bytes::from_owner(b)
            }
            Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("body is not valid gzip: {e}")),
        },
        Some(other) => {
            return json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                &format!("unsupported Content-Encoding `{other}`"),
            )
        }
    };
    if let Some(max) = st.max_body_bytes {
        if body.len() > max {
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body of {} bytes is over {max}", body.len()),
            );
        }
    }
    let fault = if st.faults.is_empty() {
        None
    } else {
        let dataset = super::body::parse(&body)
            .ok()
            .and_then(|b| b.dataset.map(|d| d.into_owned()));
        st.faults.take(dataset.as_deref())
    };
    if let Some(f) = fault {
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = json_error(status, f.body.as_deref().unwrap_or("injected fault"));
        if let Some(s) = f.retry_after_secs {
            r.headers_mut()
                .insert("retry-after", s.to_string().parse().expect("digits"));
        }
        return r;
    }
    let draw = st.rates.as_ref().map_or(Draw::Ok, RateFaults::next);
    match draw {
        Draw::Status(code) => {
            let mut r = json_error(StatusCode::from_u16(code).expect("valid code"), "injected fault");
            if code == 429 {
                let secs = st.rates.as_ref().map_or(1, |r| r.rates().retry_after_secs);
                r.headers_mut()
                    .insert("retry-after", secs.to_string().parse().expect("digits"));
            }
            return r;
        }
        Draw::DropBefore => return dropped_connection(),
        Draw::Slow => {
            let ms = st.rates.as_ref().map_or(0, |r| r.rates().slow_ms);
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
        Draw::Ok | Draw::DropAfter => {}
    }
    if st.ack_after_parse {
        return match super::body::parse(&body) {
            Ok(b) => {
                let mut r = (StatusCode::OK, super::body::ack(&b)).into_response();
                r.headers_mut()
                    .insert("content-type", "application/json".parse().expect("ascii"));
                r
            }
            Err(e) => json_error(StatusCode::BAD_REQUEST, &e),
        };
    }
    let st2 = st.clone();
    let result = tokio::task::spawn_blocking(move || st2.db.apply(&key, &body)).await;
    match result {
        Ok(Ok(_)) if draw == Draw::DropAfter => dropped_connection(),
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

/// A 200 whose body fails mid-stream: the server aborts the connection, so the client never
/// learns the outcome.
fn dropped_connection() -> Response {
    let stream =
        futures_util::stream::once(async { Err::<Bytes, _>(std::io::Error::other("injected connection drop")) });
    let mut r = Response::new(axum::body::Body::from_stream(stream));
    r.headers_mut().insert("content-length", "64".parse().expect("digits"));
    r
}

async fn checksums(
    State(st): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    Json(req): Json<ChecksumRequest>,
) -> Response {
    if let Some(want) = &st.expect_authorization {
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            return json_error(StatusCode::UNAUTHORIZED, "missing or wrong Authorization");
        }
    }
    let st2 = st.clone();
    match tokio::task::spawn_blocking(move || st2.db.checksums(&req)).await {
        Ok(Ok(resp)) => Json(resp).into_response(),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn drop_tenant(State(st): State<Arc<ReceiverState>>, headers: HeaderMap, Path(tenant): Path<String>) -> Response {
    if let Some(want) = &st.expect_authorization {
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            return json_error(StatusCode::UNAUTHORIZED, "missing or wrong Authorization");
        }
    }
    let st2 = st.clone();
    match tokio::task::spawn_blocking(move || st2.db.drop_tenant(&tenant)).await {
        Ok(Ok(n)) => Json(serde_json::json!({ "datasets_dropped": n })).into_response(),
        Ok(Err(e)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn add_fault(State(st): State<Arc<ReceiverState>>, Json(f): Json<super::faults::Fault>) -> StatusCode {
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
        .route("/v1/checksums", post(checksums))
        .route("/v1/tenants/{tenant}", axum::routing::delete(drop_tenant))
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
