//! Turning a stream entry into a judged row (the consumer's half of the
//! validation; the rules themselves live in `rowpipe_core::validate`).

use rowpipe_core::row::RowFields;
use rowpipe_core::store::{JudgedRow, RowVerdict};
use rowpipe_core::stream::{EntryBody, StreamEntry};
use rowpipe_core::validate::{EmailPolicy, validate_email, validate_name};

/// Judge one entry. `upload_seq` is the entry's own, or the one looked up.
/// Takes the entry: its upload id moves into the row instead of being copied.
pub fn judge(entry: StreamEntry, upload_seq: i64, policy: EmailPolicy) -> JudgedRow {
    let verdict = match &entry.body {
        EntryBody::Rejected { rejection, .. } => RowVerdict::Reject {
            reason: rejection.reason,
            message: rejection.message.clone(),
            fields: entry.original_fields_json(),
        },
        EntryBody::Row(row) => judge_row(&entry, row, policy),
    };
    JudgedRow {
        upload_id: entry.upload_id,
        upload_seq,
        row_number: entry.row_number,
        verdict,
    }
}

fn judge_row(entry: &StreamEntry, row: &RowFields, policy: EmailPolicy) -> RowVerdict {
    let reject = |r: rowpipe_core::validate::Rejection| RowVerdict::Reject {
        reason: r.reason,
        message: r.message,
        fields: entry.original_fields_json(),
    };
    let raw = row.email.as_deref().unwrap_or("");
    let email = match validate_email(raw, policy) {
        Ok(e) => e,
        Err(r) => return reject(r),
    };
    let name = match validate_name(row.name.as_deref()) {
        Ok(n) => n,
        Err(r) => return reject(r),
    };
    let attributes = if row.attributes.is_empty() {
        None
    } else {
        let mut obj = serde_json::Map::new();
        for (k, v) in &row.attributes {
            obj.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        Some(serde_json::Value::Object(obj).to_string())
    };
    RowVerdict::Accept {
        email: email.normalized,
        email_raw: raw.trim().to_string(),
        name,
        attributes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rowpipe_core::validate::RejectReason;

    fn entry(email: Option<&str>) -> StreamEntry {
        StreamEntry {
            upload_id: "u".into(),
            upload_seq: Some(1),
            row_number: 9,
            body: EntryBody::Row(RowFields {
                email: email.map(str::to_string),
                name: Some("  Ann\u{0}  ".into()),
                attributes: vec![("city".into(), "Zürich".into())],
            }),
            trace: vec![],
        }
    }

    #[test]
    fn a_valid_row_is_normalized_and_cleaned() {
        let j = judge(entry(Some(" Ann@Example.COM ")), 1, EmailPolicy::default());
        match j.verdict {
            RowVerdict::Accept {
                email,
                email_raw,
                name,
                attributes,
            } => {
                assert_eq!(email, "ann@example.com");
                assert_eq!(email_raw, "Ann@Example.COM");
                assert_eq!(name.as_deref(), Some("Ann"));
                assert_eq!(attributes.as_deref(), Some("{\"city\":\"Zürich\"}"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_email_is_rejected_with_the_fields_as_written() {
        let j = judge(entry(None), 1, EmailPolicy::default());
        match j.verdict {
            RowVerdict::Reject { reason, fields, .. } => {
                assert_eq!(reason, RejectReason::MissingEmail);
                assert!(fields.contains("Zürich"));
            }
            other => panic!("{other:?}"),
        }
    }
}
