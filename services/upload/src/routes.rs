//! HTTP handlers.

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use rowpipe_core::store::{NewUpload, UploadRecord};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::ApiError;
use crate::ingest::ingest;
use crate::intake::{IntakeOptions, Limits, decode, sniff};
use crate::state::AppState;

/// Query parameters of `POST /v1/uploads`.
#[derive(Debug, Default, Deserialize)]
pub struct UploadParams {
    /// `,` `;` `tab` `|` (detected when absent).
    pub delimiter: Option<String>,
    /// Encoding label such as `utf-8`, `windows-1252`, `utf-16le` (detected when absent).
    pub encoding: Option<String>,
    /// `false` for a file without a header row.
    pub header: Option<bool>,
    /// Header name or 1-based position of the email column.
    pub email_column: Option<String>,
    /// Header name or 1-based position of the name column.
    pub name_column: Option<String>,
    /// File name to record for a raw-body upload.
    pub filename: Option<String>,
}

fn intake_options(params: &UploadParams, state: &AppState) -> Result<IntakeOptions, ApiError> {
    let delimiter = match params.delimiter.as_deref() {
        None | Some("") => None,
        Some(d) => Some(sniff::parse_delimiter(d).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "delimiter {d:?} is not supported: use one character, or tab"
            ))
        })?),
    };
    let encoding = match params.encoding.as_deref() {
        None | Some("") => None,
        Some(label) => Some(
            decode::encoding_for_label(label)
                .ok_or_else(|| ApiError::BadRequest(format!("unknown encoding {label:?}")))?,
        ),
    };
    Ok(IntakeOptions {
        delimiter,
        encoding,
        has_header: params.header.unwrap_or(true),
        email_column: params.email_column.clone().filter(|s| !s.is_empty()),
        name_column: params.name_column.clone().filter(|s| !s.is_empty()),
        limits: Limits {
            max_field_bytes: state.config.max_field_bytes,
            max_columns: state.config.max_columns,
            max_row_bytes: state.config.max_row_bytes,
        },
    })
}

fn is_csv_type(content_type: &str) -> bool {
    let ct = content_type.to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim().to_string();
    matches!(
        essence.as_str(),
        "text/csv"
            | "application/csv"
            | "text/plain"
            | "text/tab-separated-values"
            | "application/vnd.ms-excel"
            | "application/octet-stream"
            | "text/comma-separated-values"
            | "application/x-csv"
            | "text/x-csv"
            | ""
    )
}

/// The status document of an upload.
pub fn upload_json(record: &UploadRecord) -> Value {
    let mut v = serde_json::to_value(record).unwrap_or_else(|_| json!({}));
    v["rows_enqueued"] = json!(record.counts.enqueued);
    v["links"] = json!({
        "self": format!("/v1/uploads/{}", record.upload_id),
        "rejects": format!("/v1/uploads/{}/rejects", record.upload_id),
        "duplicates": format!("/v1/uploads/{}/duplicates", record.upload_id),
    });
    v
}

fn client_sha256(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get("x-content-sha256")
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim().to_ascii_lowercase();
        if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some(v);
        }
    }
    None
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
    Query(params): Query<UploadParams>,
    request: Request,
) -> Result<Response, ApiError> {
    let span = tracing::info_span!(
        "POST /v1/uploads",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/v1/uploads",
        rowpipe.upload_id = tracing::field::Empty,
        rowpipe.rows_enqueued = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(request.headers()))
    });
    let _ = span.set_parent(parent);
    rowpipe_core::telemetry::record_trace_ids(&span);
    create_upload_inner(state, params, request)
        .instrument(span)
        .await
}

async fn create_upload_inner(
    state: AppState,
    params: UploadParams,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let multipart = content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data");
    if !multipart && !is_csv_type(&content_type) {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {content_type:?} is not CSV: send text/csv or multipart/form-data with a `file` field"
        )));
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > state.config.max_body_bytes
    {
        return Err(ApiError::PayloadTooLarge {
            limit: state.config.max_body_bytes,
            upload_id: None,
            rows_read: 0,
        });
    }
    let options = intake_options(&params, &state)?;

    // Replays: the same Idempotency-Key, or the same content within the window.
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty() && s.len() <= 255);
    if let Some(key) = &idempotency_key
        && let Some(existing) = state.store.upload_by_idempotency_key(key).await?
    {
        return Ok(replay(existing));
    }
    if let Some(sha) = client_sha256(&headers)
        && state.config.idempotency_window_secs > 0
    {
        let since = rowpipe_core::now_ms() - (state.config.idempotency_window_secs as i64) * 1000;
        if let Some(existing) = state.store.upload_by_sha256(&sha, since, "").await? {
            return Ok(replay(existing));
        }
    }

    let upload_id = uuid::Uuid::now_v7().to_string();
    tracing::Span::current().record("rowpipe.upload_id", upload_id.as_str());
    let _in_flight = InFlight::new();
    let started = std::time::Instant::now();

    let report = if multipart {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?;
        loop {
            let field = multipart
                .next_field()
                .await
                .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?;
            let Some(field) = field else {
                return Err(ApiError::BadRequest(
                    "the multipart body has no `file` field".into(),
                ));
            };
            if field.name() != Some("file") {
                continue;
            }
            if let Some(ct) = field.content_type()
                && !is_csv_type(ct)
            {
                return Err(ApiError::UnsupportedMediaType(format!(
                    "the `file` part has Content-Type {ct:?}, which is not CSV"
                )));
            }
            let file_name = field
                .file_name()
                .map(str::to_string)
                .or(params.filename.clone());
            let seq = create_record(&state, &upload_id, &file_name, &idempotency_key).await?;
            let report = ingest(&state, &upload_id, seq, options, field).await?;
            break report;
        }
    } else {
        let file_name = params.filename.clone();
        let seq = create_record(&state, &upload_id, &file_name, &idempotency_key).await?;
        let body = request.into_body().into_data_stream().boxed();
        ingest(&state, &upload_id, seq, options, body).await?
    };

    state
        .store
        .finish_receiving(&upload_id, &report.body)
        .await?;
    metrics::histogram!("rowpipe_upload_duration_seconds").record(started.elapsed().as_secs_f64());
    tracing::Span::current().record("rowpipe.rows_enqueued", report.body.rows_enqueued);
    tracing::info!(
        upload_id = %upload_id,
        rows_enqueued = report.body.rows_enqueued,
        bytes = report.body.size_bytes,
        encoding = %report.body.encoding,
        "upload enqueued"
    );
    let record = state
        .store
        .get_upload(&upload_id)
        .await?
        .ok_or_else(|| ApiError::Internal("upload record vanished".into()))?;
    let mut body = upload_json(&record);
    body["rows_enqueued"] = json!(report.body.rows_enqueued);
    let location = format!("/v1/uploads/{upload_id}");
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

async fn create_record(
    state: &AppState,
    upload_id: &str,
    file_name: &Option<String>,
    idempotency_key: &Option<String>,
) -> Result<i64, ApiError> {
    let seq = state
        .store
        .create_upload(&NewUpload {
            id: upload_id.to_string(),
            file_name: file_name.clone(),
            idempotency_key: idempotency_key.clone(),
        })
        .await?;
    Ok(seq)
}

fn replay(existing: UploadRecord) -> Response {
    let mut body = upload_json(&existing);
    body["replayed"] = json!(true);
    (StatusCode::OK, Json(body)).into_response()
}

/// Counts uploads in flight for the gauge, including failed ones.
struct InFlight;

impl InFlight {
    fn new() -> Self {
        metrics::gauge!("rowpipe_uploads_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("rowpipe_uploads_in_flight").decrement(1.0);
    }
}

/// `GET /v1/uploads/{id}`
pub async fn get_upload(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = state
        .store
        .get_upload(&id)
        .await?
        .ok_or(ApiError::NotFound(id))?;
    Ok(Json(upload_json(&record)))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    pub limit: Option<i64>,
}

/// `GET /v1/uploads`: the most recent uploads, newest first.
pub async fn list_uploads(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<Value>, ApiError> {
    let limit = params.limit.unwrap_or(50).clamp(1, 500);
    let records = state.store.list_uploads(limit).await?;
    let items: Vec<Value> = records.iter().map(upload_json).collect();
    Ok(Json(json!({ "uploads": items })))
}

/// Quote a CSV field when it needs it (RFC 4180).
pub fn csv_field(s: &str, out: &mut String) {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

const PAGE: i64 = 1000;

/// A CSV body streamed one database page at a time, so an export of any size
/// stays in bounded memory. `page(after)` returns the rows after the given
/// row number, each with its row number and its CSV fields.
fn paged_csv<F, Fut>(header: &'static str, page: F) -> Body
where
    F: Fn(i64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<
            Output = Result<Vec<(i64, Vec<String>)>, rowpipe_core::store::StoreError>,
        > + Send,
{
    let page = std::sync::Arc::new(page);
    let stream = futures::stream::unfold(Some(0i64), move |after| {
        let page = page.clone();
        async move {
            let after = after?;
            let mut out = String::new();
            if after == 0 {
                out.push_str(header);
                out.push('\n');
            }
            match page(after).await {
                Ok(rows) => {
                    let next = if rows.len() < PAGE as usize {
                        None
                    } else {
                        rows.last().map(|r| r.0)
                    };
                    for (row_number, fields) in rows {
                        out.push_str(&row_number.to_string());
                        for f in fields {
                            out.push(',');
                            csv_field(&f, &mut out);
                        }
                        out.push('\n');
                    }
                    Some((Ok::<_, std::io::Error>(out), next))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    Body::from_stream(stream)
}

fn csv_response(body: Body) -> Response {
    ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], body).into_response()
}

/// `GET /v1/uploads/{id}/rejects`: every rejected row as CSV (row number,
/// reason, message, the original fields as JSON), ready to send back.
pub async fn get_rejects(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if state.store.upload_seq(&id).await?.is_none() {
        return Err(ApiError::NotFound(id));
    }
    let store = state.store.clone();
    Ok(csv_response(paged_csv(
        "row_number,reason,message,fields",
        move |after| {
            let (store, id) = (store.clone(), id.clone());
            async move {
                let rows = store.rejected_rows_page(&id, after, PAGE).await?;
                Ok(rows
                    .into_iter()
                    .map(|r| (r.row_number, vec![r.reason, r.message, r.fields]))
                    .collect())
            }
        },
    )))
}

/// `GET /v1/uploads/{id}/duplicates`: row numbers that lost to an earlier
/// row with the same email, as CSV.
pub async fn get_duplicates(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if state.store.upload_seq(&id).await?.is_none() {
        return Err(ApiError::NotFound(id));
    }
    let store = state.store.clone();
    Ok(csv_response(paged_csv("row_number,email", move |after| {
        let (store, id) = (store.clone(), id.clone());
        async move {
            let rows = store.duplicate_rows_page(&id, after, PAGE).await?;
            Ok(rows
                .into_iter()
                .map(|(n, email)| (n, vec![email]))
                .collect())
        }
    })))
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: Redis and the database answer.
pub async fn readyz(State(state): State<AppState>) -> Response {
    let mut redis = state.redis.clone();
    let redis_ok = redis::cmd("PING")
        .query_async::<String>(&mut redis)
        .await
        .is_ok();
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

/// `GET /openapi.json`
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::OPENAPI_JSON,
    )
}
