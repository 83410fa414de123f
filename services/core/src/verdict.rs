//! The verdict on a row: what rowpipe decided about it, and why.
//!
//! A row is judged in two halves, by the program that can see each:
//!
//! * its **shape** (ragged, too many columns, an over-long field, bytes that
//!   do not decode) only the CSV parser can see, so the upload service
//!   decides it and sends the row on as an [`EntryBody::Rejected`] entry;
//! * its **content** (the email policy and the name) is decided here, in
//!   [`judge`], by the consumer, with the rules of [`crate::validate`].
//!
//! Either way the outcome is one [`RowVerdict`], and this is the only place
//! one is made from a stream entry. The store takes [`JudgedRow`]s and
//! records them; it never judges.

use crate::deliverability::Unverified;
use crate::row::RowFields;
use crate::stream::{EntryBody, StreamEntry};
use crate::suggest;
use crate::validate::{EmailPolicy, RejectReason, Rejection, validate_email, validate_name};

/// The verdict on one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowVerdict {
    Accept {
        /// Normalized email (the uniqueness key).
        email: String,
        /// The email as written.
        email_raw: String,
        name: Option<String>,
        /// Other columns as a JSON object.
        attributes: Option<String>,
    },
    Reject {
        reason: RejectReason,
        message: String,
        /// The fields as written, JSON.
        fields: String,
    },
}

impl RowVerdict {
    /// The row's fields as JSON for the reject ledger and dead letters: a
    /// reject's fields as written, and an accepted row's fields as they
    /// would be stored, in the same flat shape
    /// ([`RowFields::as_written_json`]).
    pub fn fields_json(&self) -> String {
        match self {
            RowVerdict::Reject { fields, .. } => fields.clone(),
            RowVerdict::Accept {
                email_raw,
                name,
                attributes,
                ..
            } => {
                let attributes: Vec<(String, String)> = attributes
                    .as_deref()
                    .and_then(|a| {
                        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(a).ok()
                    })
                    .map(|obj| {
                        obj.into_iter()
                            .map(|(k, v)| match v {
                                serde_json::Value::String(s) => (k, s),
                                other => (k, other.to_string()),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                RowFields {
                    email: Some(email_raw.clone()),
                    name: name.clone(),
                    attributes,
                }
                .as_written_json()
            }
        }
    }
}

/// A row with its identity and verdict, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JudgedRow {
    pub upload_id: String,
    pub upload_seq: i64,
    pub row_number: i64,
    pub verdict: RowVerdict,
    /// An accepted row whose mail domain the consumer's DNS check could not
    /// verify (see [`crate::deliverability`]); `None` when the check is off,
    /// passed, or the row is rejected.
    pub unverified: Option<Unverified>,
}

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
        unverified: None,
    }
}

fn judge_row(entry: &StreamEntry, row: &RowFields, policy: EmailPolicy) -> RowVerdict {
    let raw = row.email.as_deref().unwrap_or("");
    // Every reject whose domain is a typo of a common one says what was
    // probably meant (`crate::suggest`); only rejects pay for the search.
    let reject = |r: Rejection| RowVerdict::Reject {
        reason: r.reason,
        message: match suggest::suggest_address(raw, policy) {
            Some(address) => suggest::with_suggestion(&r.message, &address),
            None => r.message,
        },
        fields: entry.original_fields_json(),
    };
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

    fn entry(email: Option<&str>) -> StreamEntry {
        StreamEntry {
            upload_id: "u".into(),
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
    fn an_accepted_row_gives_its_fields_in_the_same_flat_shape_as_a_reject() {
        let accepted = judge(entry(Some("ann@example.com")), 1, EmailPolicy::default());
        let rejected = judge(entry(None), 1, EmailPolicy::default());
        assert_eq!(
            accepted.verdict.fields_json(),
            r#"{"city":"Zürich","email":"ann@example.com","name":"Ann"}"#
        );
        assert_eq!(
            rejected.verdict.fields_json(),
            r#"{"city":"Zürich","name":"  Ann\u0000  "}"#
        );
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
