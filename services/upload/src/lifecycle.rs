//! One `POST /v1/uploads`, from the request to the stored upload record.
//!
//! The order is what the API promises: everything that can be rejected
//! without reading the body (media type, declared length, options) is, before
//! any lookup; a replay returns before a record is created; and the record
//! exists before the first row is read, so that an upload failing part way
//! is recorded as failed with the row it reached.

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use futures::StreamExt;
use rowpipe_core::store::{NewUpload, UploadRecord};

use crate::error::ApiError;
use crate::idempotency::Idempotency;
use crate::ingest::ingest;
use crate::options::{UploadParams, intake_options, is_csv_type};
use crate::state::AppState;

/// How an upload request ended, when it did not fail.
pub enum Outcome {
    /// The request repeats an earlier upload, which is returned as it is.
    Replayed(UploadRecord),
    /// The body was read and every row is in the stream.
    Accepted {
        record: UploadRecord,
        rows_enqueued: i64,
    },
}

/// Receive an upload: a multipart body (field `file`) or a raw CSV body.
pub async fn receive(
    state: &AppState,
    params: UploadParams,
    request: Request,
) -> Result<Outcome, ApiError> {
    let headers = request.headers();
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
    let options = intake_options(&params, &state.config)?;

    let idempotency = Idempotency::from_headers(headers);
    if let Some(existing) = idempotency
        .earlier_upload(&state.store, state.config.idempotency_window_secs)
        .await?
    {
        return Ok(Outcome::Replayed(existing));
    }
    let idempotency_key = idempotency.key().map(str::to_string);

    let upload_id = uuid::Uuid::now_v7().to_string();
    tracing::Span::current().record("rowpipe.upload_id", upload_id.as_str());
    let _in_flight = InFlight::new();
    let started = std::time::Instant::now();

    let report = if multipart {
        let mut multipart = Multipart::from_request(request, state)
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
            let seq = create_record(state, &upload_id, file_name, idempotency_key).await?;
            let report = ingest(state, &upload_id, seq, options, field).await?;
            break report;
        }
    } else {
        let file_name = params.filename.clone();
        let seq = create_record(state, &upload_id, file_name, idempotency_key).await?;
        let body = request.into_body().into_data_stream().boxed();
        ingest(state, &upload_id, seq, options, body).await?
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
    Ok(Outcome::Accepted {
        record,
        rows_enqueued: report.body.rows_enqueued,
    })
}

async fn create_record(
    state: &AppState,
    upload_id: &str,
    file_name: Option<String>,
    idempotency_key: Option<String>,
) -> Result<i64, ApiError> {
    let seq = state
        .store
        .create_upload(&NewUpload {
            id: upload_id.to_string(),
            file_name,
            idempotency_key,
        })
        .await?;
    Ok(seq)
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
