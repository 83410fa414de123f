//! `/healthz`, `/readyz` and `/metrics`: what probes and scrapers poll. They
//! answer without a token.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(rowpipe_core::telemetry::metrics_endpoint))
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: Redis and the database answer.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut redis = state.redis.clone();
    let redis_ok = redis.ping().await.is_ok();
    let db_ok = state.store.ping().await.is_ok();
    let status = if redis_ok && db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "redis": redis_ok, "database": db_ok, "ready": redis_ok && db_ok })),
    )
        .into_response()
}
