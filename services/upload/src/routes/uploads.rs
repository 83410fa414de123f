//! `/v1/uploads` and `/v1/uploads/{id}`: creating uploads and reading their
//! status.

use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rowpipe_core::store::UploadRecord;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::lifecycle::{self, Outcome};
use crate::options::UploadParams;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/uploads", post(create_upload).get(list_uploads))
        .route("/v1/uploads/{id}", get(get_upload))
        // The body limit is enforced while streaming (413 and a failed
        // upload record), not by buffering middleware.
        .layer(DefaultBodyLimit::disable())
}

/// The status document of an upload.
pub fn upload_json(record: &UploadRecord) -> Value {
    let mut v = serde_json::to_value(record).unwrap_or_else(|_| json!({}));
    v["rows_enqueued"] = json!(record.counts.enqueued);
    v["links"] = json!({
        "self": format!("/v1/uploads/{}", record.upload_id),
        "rejects": format!("/v1/uploads/{}/rejects", record.upload_id),
        "duplicates": format!("/v1/uploads/{}/duplicates", record.upload_id),
        "unverified": format!("/v1/uploads/{}/unverified", record.upload_id),
    });
    v
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// `POST /v1/uploads`: multipart (field `file`) or a raw CSV body.
pub async fn create_upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<UploadParams>,
    request: Request,
) -> Result<Response, ApiError> {
    let span = tracing::info_span!(
        "POST /v1/uploads",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/v1/uploads",
        rowpipe.upload_id = tracing::field::Empty,
        rowpipe.tenant = caller.tenant().unwrap_or(""),
        rowpipe.rows_enqueued = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    rowpipe_core::telemetry::record_trace_ids(&span);
    let outcome = lifecycle::receive(&state, &caller, params, request)
        .instrument(span)
        .await?;
    Ok(match outcome {
        Outcome::Replayed(existing) => {
            let mut body = upload_json(&existing);
            body["replayed"] = json!(true);
            (StatusCode::OK, Json(body)).into_response()
        }
        Outcome::Accepted {
            record,
            rows_enqueued,
        } => {
            let mut body = upload_json(&record);
            body["rows_enqueued"] = json!(rows_enqueued);
            let location = format!("/v1/uploads/{}", record.upload_id);
            (
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(body),
            )
                .into_response()
        }
    })
}

/// `GET /v1/uploads/{id}`
pub async fn get_upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    // Another tenant's upload is answered as if it did not exist.
    let record = state
        .store
        .get_upload(&id)
        .await?
        .filter(|r| caller.may_see(r.tenant.as_deref()))
        .ok_or(ApiError::NotFound(id))?;
    Ok(Json(upload_json(&record)))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    pub limit: Option<i64>,
}

/// `GET /v1/uploads`: the most recent uploads of the caller's tenant (of
/// every tenant for an operator), newest first.
pub async fn list_uploads(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = params.limit.unwrap_or(50).clamp(1, 500);
    let records = state.store.list_uploads_of(caller.tenant(), limit).await?;
    let items: Vec<Value> = records.iter().map(upload_json).collect();
    Ok(Json(json!({ "uploads": items })))
}
