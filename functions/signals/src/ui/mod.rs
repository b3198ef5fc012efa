//! `signals ui`: the operations page over the store — tenants, data sources, lag, recent runs,
//! running syncs and dead letters — plus `/api/overview` (the same data as JSON) and the retry
//! action, which needs the operator token when one is configured and is refused otherwise.

pub mod overview;
pub mod page;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use signals_shared::backends::Backend;
use signals_shared::ctx::Ctx;
use signals_shared::domain::secret_ref::SecretRef;
use std::sync::Arc;

/// What the handlers share.
#[derive(Clone)]
pub struct UiState {
    /// The store read and written.
    pub store: Arc<dyn Backend>,
    /// Where retried jobs go (the `--queue` in use).
    pub queue: Arc<dyn signals_shared::ports::JobQueue>,
    /// Config cache and the like.
    pub ctx: Arc<Ctx>,
    /// Where the operator token lives (resolved on every retry, so a rotation takes effect).
    pub token: Option<SecretRef>,
}

/// The page's routes.
pub fn router(state: UiState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/overview", get(api))
        .route("/dead-letters/{id}/retry", post(retry))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

#[derive(serde::Deserialize)]
struct IndexQuery {
    notice: Option<String>,
}

fn failure(status: StatusCode, message: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Signals ETL — {}</title></head><body>\
         <p class=error id=error>{}</p><p><a href=\"/\">Back to the operations page</a></p></body></html>",
        status.as_u16(),
        page::esc(message)
    );
    (status, Html(body)).into_response()
}

async fn index(State(s): State<UiState>, Query(q): Query<IndexQuery>) -> Response {
    match overview::read(s.store.as_ref(), s.queue.as_ref(), &s.ctx).await {
        Ok(o) => (
            [(header::CACHE_CONTROL, "no-store")],
            Html(page::render(&o, s.token.is_some(), q.notice.as_deref())),
        )
            .into_response(),
        Err(e) => failure(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("cannot read the store: {e:#}"),
        ),
    }
}

async fn api(State(s): State<UiState>) -> Response {
    match overview::read(s.store.as_ref(), s.queue.as_ref(), &s.ctx).await {
        Ok(o) => Json(o).into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the store: {e:#}\n"),
        )
            .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct RetryForm {
    #[serde(default)]
    token: String,
}

/// Equal without an early exit, so response time does not reveal how much of a guess was right.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn retry(State(s): State<UiState>, Path(id): Path<i64>, Form(form): Form<RetryForm>) -> Response {
    let Some(reference) = &s.token else {
        return failure(
            StatusCode::FORBIDDEN,
            "this operations page is read-only: no operator token is configured",
        );
    };
    let expected = match signals_shared::secrets::resolve(reference) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "cannot resolve the operator token");
            return failure(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("cannot read the operator token: {e}"),
            );
        }
    };
    if !same_secret(&form.token, expected.expose()) {
        tracing::warn!(dead_letter = id, "retry refused: wrong operator token");
        return failure(StatusCode::FORBIDDEN, "wrong operator token: nothing was retried");
    }
    match signals_shared::ops::retry::retry_dead_letter(s.store.as_ref(), s.queue.as_ref(), id, "ui").await {
        Ok(stage) => {
            let _ = s
                .store
                .audit("ui", "dlq retry", &id.to_string(), "from the operations page")
                .await;
            tracing::info!(dead_letter = id, %stage, "dead letter re-queued from the operations page");
            let notice = format!("dead letter {id}: {stage} job re-queued");
            Redirect::to(&format!(
                "/?notice={}",
                signals_shared::domain::url::percent_encode(&notice)
            ))
            .into_response()
        }
        Err(signals_shared::ops::retry::RetryError::Invalid(why)) => failure(StatusCode::CONFLICT, &why),
        Err(e) => failure(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(!same_secret("s3cre", "s3cret"));
        assert!(!same_secret("s3creT", "s3cret"));
        assert!(!same_secret("", "s3cret"));
    }
}
