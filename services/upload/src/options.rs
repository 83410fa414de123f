//! What a client says about its file: the query parameters of
//! `POST /v1/uploads` and the media types accepted as CSV.
//!
//! Parsing them is separate from the upload itself so that a bad option is a
//! 400 or 415 before any record is created or byte is read.

use serde::Deserialize;

use crate::config::Config;
use crate::error::ApiError;
use crate::intake::{IntakeOptions, Limits, decode, sniff};

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

/// The intake's options from the query parameters and the configured row
/// limits; an empty parameter counts as absent.
pub fn intake_options(params: &UploadParams, config: &Config) -> Result<IntakeOptions, ApiError> {
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
            max_field_bytes: config.max_field_bytes,
            max_columns: config.max_columns,
            max_row_bytes: config.max_row_bytes,
        },
    })
}

/// Whether a request's or a multipart part's Content-Type may hold CSV.
/// Clients and browsers label CSV files in many ways (or not at all), so
/// every label seen for CSV in practice is accepted.
pub fn is_csv_type(content_type: &str) -> bool {
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
            // A `.csv.gz` or `.csv.zst` (decompressed by `body`).
            | "application/gzip"
            | "application/x-gzip"
            | "application/zstd"
            | ""
    )
}
