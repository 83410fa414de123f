//! One `POST /v1/uploads`, from the request to the stored upload record.
//!
//! The order is what the API promises: everything that can be rejected
//! without reading the body (media type, declared length, options) is, before
//! any lookup; a replay returns before a record is created; and the record
//! exists before the first row is read, so that an upload stopping part way
//! is recorded with the row it reached (failed for the file's fault,
//! interrupted for the service's).
//!
//! A request repeating an `interrupted` or `incomplete` upload resumes it:
//! same record, a fresh lease, the rows already accounted for not sent again.
//! One repeating an upload a live instance is still receiving gets `409`.

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use rowpipe_core::store::{LeaseProgress, NewUpload, UploadRecord, UploadStatus};

use crate::auth::Caller;
use crate::body;
use crate::error::ApiError;
use crate::idempotency::Idempotency;
use crate::ingest::{Attempt, ingest};
use crate::lease::Lease;
use crate::options::{UploadParams, intake_options, is_csv_type};
use crate::part_headers::PartHeaderBudget;
use crate::state::AppState;

/// The `Retry-After` of a 429 for too many uploads at once: about the time
/// a small upload takes.
const UPLOAD_RETRY_AFTER_SECS: u64 = 5;

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
    caller: &Caller,
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
        return Err(not_csv_type(&content_type));
    }
    let declared = body::declared_compression(headers)?;
    let idle = std::time::Duration::from_secs(state.config.body_idle_timeout_secs);
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
    // Held until the upload's end: uploads at once are bounded per instance.
    let Ok(_receiving) = state.uploads.clone().try_acquire_owned() else {
        metrics::counter!("rowpipe_uploads_refused_total", "reason" => "too_many_uploads")
            .increment(1);
        return Err(ApiError::TooManyUploads {
            retry_after_secs: UPLOAD_RETRY_AFTER_SECS,
        });
    };

    let idempotency = Idempotency::from_headers(headers, caller.tenant());
    let mut resumed = None;
    if let Some(existing) = idempotency
        .earlier_upload(&state.store, state.config.idempotency_window_secs)
        .await?
    {
        match existing.status {
            UploadStatus::Interrupted | UploadStatus::Incomplete | UploadStatus::Receiving => {
                resumed = Some(resume(state, &existing).await?);
            }
            _ => return Ok(Outcome::Replayed(existing)),
        }
    }
    let idempotency_key = idempotency.key().map(str::to_string);

    let upload_id = match &resumed {
        Some(attempt) => attempt.upload_id.clone(),
        None => uuid::Uuid::now_v7().to_string(),
    };
    tracing::Span::current().record("rowpipe.upload_id", upload_id.as_str());
    let _in_flight = InFlight::new();
    let started = std::time::Instant::now();

    // Both bodies begin the attempt the same way, once their file name is known.
    let resumed = resumed.take();
    let tenant = caller.tenant().map(str::to_string);
    let begin_attempt = |file_name: Option<String>| {
        begin(
            state,
            resumed,
            &upload_id,
            file_name,
            idempotency_key,
            tenant,
        )
    };
    let (report, mut attempt) = if multipart {
        // A compressed multipart body is decompressed whole; a compressed
        // part inside it is told by its magic bytes.
        // What comes before the file's data is bounded (part_headers).
        let budget = PartHeaderBudget::new(state.config.max_part_header_bytes);
        let (parts, raw) = request.into_parts();
        let raw = raw.into_data_stream();
        let raw = match declared {
            None => axum::body::Body::from_stream(budget.wrap(raw)),
            Some(compression) => {
                let (decoded, _) = body::open_compressed(raw, compression);
                axum::body::Body::from_stream(budget.wrap(decoded))
            }
        };
        let request = Request::from_parts(parts, raw);
        let mut multipart = Multipart::from_request(request, state)
            .await
            .map_err(|e| ApiError::BadRequest(format!("invalid multipart body: {e}")))?;
        loop {
            budget.arm();
            let field = multipart.next_field().await.map_err(|e| {
                if PartHeaderBudget::is_exceeded(&e) {
                    ApiError::BadRequest(
                        crate::part_headers::PartHeadersTooLong {
                            limit: state.config.max_part_header_bytes,
                        }
                        .to_string(),
                    )
                } else {
                    ApiError::BadRequest(format!("invalid multipart body: {e}"))
                }
            })?;
            budget.disarm();
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
                return Err(not_csv_type(ct));
            }
            let file_name = field
                .file_name()
                .map(str::to_string)
                .or(params.filename.clone());
            let (file, _) = body::open(field, None, idle).await?;
            let mut attempt = begin_attempt(file_name).await?;
            let report = ingest(state, &mut attempt, options, file).await?;
            break (report, attempt);
        }
    } else {
        let (file, _) = body::open(request.into_body().into_data_stream(), declared, idle).await?;
        let mut attempt = begin_attempt(params.filename.clone()).await?;
        (ingest(state, &mut attempt, options, file).await?, attempt)
    };
    finish(state, &mut attempt, &report.body).await?;
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

/// The 415 for a Content-Type that is not CSV, naming what it is when the
/// type says so.
fn not_csv_type(content_type: &str) -> ApiError {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    ApiError::UnsupportedMediaType(match body::describe_media_type(&essence) {
        Some(what) => format!(
            "this is {what} (Content-Type {essence}), not a CSV file; export it as CSV (UTF-8) and upload that"
        ),
        None => format!(
            "Content-Type {content_type:?} is not CSV: send text/csv or multipart/form-data with a `file` field"
        ),
    })
}

/// Take an earlier upload back for this request to resume, with a lease of
/// this instance, and read which of its rows are accounted for.
async fn resume(state: &AppState, existing: &UploadRecord) -> Result<Attempt, ApiError> {
    let id = &existing.upload_id;
    let lease = &state.config.lease;
    if !state
        .store
        .reopen_for_resume(id, &state.instance_id, lease.lease_ms())
        .await?
    {
        return Err(ApiError::UploadInProgress {
            upload_id: id.clone(),
            lease_secs: lease.upload_lease_secs,
        });
    }
    // From here the lease's drop guard records the upload interrupted again
    // if this request ends early.
    let prior = LeaseProgress {
        rows_enqueued: existing.counts.enqueued,
        ..Default::default()
    };
    let (lease, progress) = Lease::start(state, id, prior);
    let accounted = state.store.accounted_rows(id).await?;
    tracing::info!(
        upload_id = %id,
        attempt = existing.attempts + 1,
        accounted = accounted.len(),
        "resuming upload"
    );
    Ok(Attempt {
        upload_id: id.clone(),
        accounted: Some(accounted),
        lease,
        progress: Some(progress),
    })
}

/// The attempt this request makes: the resumed one, or a new record under
/// this instance's lease. Either way the stream's group is made sure of
/// first: a Redis that lost it gets it back from the producer too, before
/// rows it would not deliver are written.
async fn begin(
    state: &AppState,
    resumed: Option<Attempt>,
    upload_id: &str,
    file_name: Option<String>,
    idempotency_key: Option<String>,
    tenant: Option<String>,
) -> Result<Attempt, ApiError> {
    let mut redis = state.redis.clone();
    let (shards, group) = (&state.enqueue.shards, &state.enqueue.group);
    // The shared connection learns that Redis went away (a restart, a
    // failover) from the first command that fails, and reconnects for the
    // next: one more try spares this client a 503 for a dead socket.
    if let Err(e) = rowpipe_core::stream::ensure_groups(&mut redis, shards, group).await {
        if !(e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()) {
            return Err(ApiError::Unavailable(format!("Redis unavailable: {e}")));
        }
        rowpipe_core::stream::ensure_groups(&mut redis, shards, group)
            .await
            .map_err(|e| ApiError::Unavailable(format!("Redis unavailable: {e}")))?;
    }
    if let Some(attempt) = resumed {
        return Ok(attempt);
    }
    // The record's sequence is for the consumer, which reads it from there.
    let created = state
        .store
        .create_upload_leased(
            &NewUpload {
                id: upload_id.to_string(),
                file_name,
                idempotency_key: idempotency_key.clone(),
                tenant,
            },
            &state.instance_id,
            state.config.lease.lease_ms(),
        )
        .await;
    if let Err(e) = created {
        // Two requests with one new Idempotency-Key at once: the second
        // finds the first one's record, which it is a retry of.
        if let (Some(key), true) = (&idempotency_key, is_unique_violation(&e))
            && let Some(existing) = state.store.upload_by_idempotency_key(key).await?
        {
            return Err(ApiError::UploadInProgress {
                upload_id: existing.upload_id,
                lease_secs: state.config.lease.upload_lease_secs,
            });
        }
        return Err(e.into());
    }
    let (lease, progress) = Lease::start(state, upload_id, LeaseProgress::default());
    Ok(Attempt {
        upload_id: upload_id.to_string(),
        accounted: None,
        lease,
        progress: Some(progress),
    })
}

fn is_unique_violation(e: &rowpipe_core::store::StoreError) -> bool {
    matches!(
        e,
        rowpipe_core::store::StoreError::Sqlx(sqlx::Error::Database(d)) if d.is_unique_violation()
    )
}

/// Record that every row is in the stream. A database error here
/// interrupts the upload (resumable) rather than leaving it `receiving`.
async fn finish(
    state: &AppState,
    attempt: &mut Attempt,
    body: &rowpipe_core::store::uploads::FinishedBody,
) -> Result<(), ApiError> {
    let finished = match state.store.finish_receiving(&attempt.upload_id, body).await {
        Ok(finished) => finished,
        Err(e) => {
            let error = ApiError::from(e);
            attempt
                .lease
                .interrupt(&error.public_message(), body.rows_read)
                .await;
            return Err(ApiError::Interrupted {
                cause: Box::new(error),
                upload_id: attempt.upload_id.clone(),
            });
        }
    };
    attempt.lease.settle();
    if !finished {
        // The lease lapsed under this request (the record was marked
        // interrupted, or resumed by another request meanwhile).
        return Err(ApiError::Interrupted {
            cause: Box::new(ApiError::Unavailable(
                "the upload's lease lapsed before its end was recorded".into(),
            )),
            upload_id: attempt.upload_id.clone(),
        });
    }
    Ok(())
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
