//! The HTTP API's errors, mapped to status codes in one place.
//!
//! What a client is told and what the log keeps differ for the service's
//! own failures: a 5xx answer never carries a database's or Redis's
//! message, a host name or a file path (see [`ApiError::public_message`]);
//! the log line of the failed request does.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("upload {0} not found")]
    NotFound(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{message}")]
    Unprocessable {
        message: String,
        columns: Vec<String>,
    },
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        limit: u64,
        upload_id: Option<String>,
        rows_read: i64,
    },
    #[error(
        "this instance is receiving as many uploads as it takes at once; retry in \
         {retry_after_secs} s"
    )]
    TooManyUploads { retry_after_secs: u64 },
    #[error("the request body sent nothing for {idle_secs} s")]
    BodyIdle { idle_secs: u64 },
    #[error("the service is shutting down; retry the upload")]
    ShuttingDown { upload_id: Option<String> },
    /// Redis or the database failed. The text before the first `": "` is
    /// what the client is told; the rest (the driver's message) is logged only.
    #[error("{0}")]
    Unavailable(String),
    /// The upload stopped for a reason of the service, not of the file: it
    /// is recorded `interrupted`, and the same POST resumes it. The answer
    /// keeps the cause's status and code.
    #[error(
        "{cause}; upload {upload_id} is interrupted: POST the same file with the same \
         Idempotency-Key to resume it"
    )]
    Interrupted {
        cause: Box<ApiError>,
        upload_id: String,
    },
    /// A retry of an upload that a live instance is still receiving.
    #[error(
        "upload {upload_id} is still being received by another request; retry once that \
         request has ended (if its instance is gone, the upload can be resumed within {lease_secs} s)"
    )]
    UploadInProgress { upload_id: String, lease_secs: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<rowpipe_core::store::StoreError> for ApiError {
    fn from(e: rowpipe_core::store::StoreError) -> Self {
        if e.is_transient() {
            ApiError::Unavailable(format!("database unavailable: {e}"))
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl ApiError {
    /// The message for the client (and for the upload record, which the
    /// client reads): the error's own text, but for the service's own
    /// failures only what is safe to show.
    pub fn public_message(&self) -> String {
        match self {
            ApiError::Internal(_) => {
                "internal error; it is logged with this request's trace id".to_string()
            }
            ApiError::Unavailable(detail) => {
                let public = detail.split(": ").next().unwrap_or(detail);
                format!("{public}; retry later")
            }
            ApiError::Interrupted { cause, upload_id } => format!(
                "{}; upload {upload_id} is interrupted: POST the same file with the same \
                 Idempotency-Key to resume it",
                cause.public_message()
            ),
            other => other.to_string(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::TooManyUploads { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BodyIdle { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::ShuttingDown { .. } | ApiError::Unavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Interrupted { cause, .. } => cause.status(),
            ApiError::UploadInProgress { .. } => StatusCode::CONFLICT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unprocessable { .. } => "unprocessable_file",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::TooManyUploads { .. } => "too_many_uploads",
            ApiError::BodyIdle { .. } => "body_idle",
            ApiError::ShuttingDown { .. } => "shutting_down",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Interrupted { cause, .. } => cause.code(),
            ApiError::UploadInProgress { .. } => "upload_in_progress",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut body =
            json!({ "error": { "code": self.code(), "message": self.public_message() } });
        match &self {
            ApiError::Unprocessable { columns, .. } => {
                body["error"]["columns"] = json!(columns);
            }
            ApiError::PayloadTooLarge {
                limit,
                upload_id,
                rows_read,
            } => {
                body["error"]["limit_bytes"] = json!(limit);
                body["error"]["upload_id"] = json!(upload_id);
                body["error"]["rows_read"] = json!(rows_read);
            }
            ApiError::ShuttingDown { upload_id } => {
                body["error"]["upload_id"] = json!(upload_id);
            }
            ApiError::Interrupted { upload_id, .. } => {
                body["error"]["upload_id"] = json!(upload_id);
                body["error"]["upload_status"] = json!("interrupted");
                body["error"]["resumable"] = json!(true);
            }
            ApiError::UploadInProgress { upload_id, .. } => {
                body["error"]["upload_id"] = json!(upload_id);
                body["error"]["upload_status"] = json!("receiving");
            }
            _ => {}
        }
        let retry_after = match &self {
            ApiError::TooManyUploads { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
