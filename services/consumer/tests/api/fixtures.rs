//! What the store tests ([`crate::accounting`], [`crate::ledger`]) build
//! their batches and uploads from.

use rowpipe_core::store::{NewUpload, Store};
use rowpipe_core::validate::RejectReason;
use rowpipe_core::verdict::{JudgedRow, RowVerdict};

/// Row `row` of `upload` (sequence number `seq`), accepted with `email`
/// (lower-cased as the email policy does) and `name`.
pub fn accepted(upload: &str, seq: i64, row: i64, email: &str, name: Option<String>) -> JudgedRow {
    JudgedRow {
        upload_id: upload.into(),
        upload_seq: seq,
        row_number: row,
        verdict: RowVerdict::Accept {
            email: email.to_lowercase(),
            email_raw: email.into(),
            name,
            attributes: None,
        },
        unverified: None,
    }
}

/// Row `row` of `upload` (sequence number `seq`), rejected as invalid
/// syntax with `message` and the row's `fields` (JSON).
pub fn rejected(upload: &str, seq: i64, row: i64, message: String, fields: String) -> JudgedRow {
    JudgedRow {
        upload_id: upload.into(),
        upload_seq: seq,
        row_number: row,
        verdict: RowVerdict::Reject {
            reason: RejectReason::InvalidSyntax,
            message,
            fields,
        },
        unverified: None,
    }
}

/// A new upload `id`; its sequence number.
pub async fn new_upload(store: &Store, id: &str) -> i64 {
    store
        .create_upload(&NewUpload {
            id: id.into(),
            ..Default::default()
        })
        .await
        .expect("create upload")
}
