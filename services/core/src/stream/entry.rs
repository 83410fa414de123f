//! The stream entry: one CSV data row on the wire.
//!
//! An entry is a flat list of field/value pairs so that `XRANGE` in
//! `redis-cli` shows a row the way a person would read it:
//!
//! | field | meaning |
//! |---|---|
//! | `upload_id` | the upload the row belongs to |
//! | `row_number` | 1-based data-row number in the file, header excluded |
//! | `traceparent`, `tracestate` | W3C trace context of the producer span; rowpipe's upload sets them on the first entry of each `XADD` pipeline only |
//! | `email`, `name` | the detected email and name columns, as written |
//! | any other header | the row's other columns, by header name |
//! | `reject`, `reject_detail`, `raw` | set instead of columns when the CSV layer already rejected the row (`raw` is a JSON array of the fields as written) |
//!
//! A column whose header collides with one of these names travels as
//! `csv:<header>`.

use std::borrow::Cow;
use std::collections::HashMap;

use redis::Value;

use crate::row::{ColumnMap, RowFields};
use crate::validate::{RejectReason, Rejection};

pub const F_UPLOAD_ID: &str = "upload_id";
pub const F_UPLOAD_SEQ: &str = "upload_seq";
pub const F_ROW_NUMBER: &str = "row_number";
pub const F_TRACEPARENT: &str = "traceparent";
pub const F_TRACESTATE: &str = "tracestate";
pub const F_EMAIL: &str = "email";
pub const F_NAME: &str = "name";
pub const F_REJECT: &str = "reject";
pub const F_REJECT_DETAIL: &str = "reject_detail";
pub const F_RAW: &str = "raw";
const RESERVED: [&str; 10] = [
    F_UPLOAD_ID,
    F_UPLOAD_SEQ,
    F_ROW_NUMBER,
    F_TRACEPARENT,
    F_TRACESTATE,
    F_EMAIL,
    F_NAME,
    F_REJECT,
    F_REJECT_DETAIL,
    F_RAW,
];
const COLLISION_PREFIX: &str = "csv:";

/// What the row carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryBody {
    /// A row the CSV layer could split into columns.
    Row(RowFields),
    /// A row the CSV layer rejected; kept so the ledger can show it.
    Rejected {
        rejection: Rejection,
        raw: Vec<String>,
    },
}

/// One data row in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    pub upload_id: String,
    pub row_number: i64,
    pub body: EntryBody,
    /// W3C trace-context fields (`traceparent`, `tracestate`).
    pub trace: Vec<(String, String)>,
}

/// Why an entry could not be read back.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    #[error("entry has no {0} field")]
    Missing(&'static str),
    #[error("entry field {0} is not a valid number: {1:?}")]
    BadNumber(&'static str, String),
}

impl StreamEntry {
    /// Field/value pairs for `XADD`, in a stable order.
    pub fn to_fields(&self) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        self.to_fields_traced(&self.trace)
    }

    /// [`Self::to_fields`] with the trace context given instead of the
    /// entry's own: the upload writes a batch's entries under one context.
    pub fn to_fields_traced<'a>(
        &'a self,
        trace: &'a [(String, String)],
    ) -> Vec<(Cow<'a, str>, Cow<'a, str>)> {
        // Borrowed wherever possible: the upload writes one of these per
        // row, and they only live until the pipeline is encoded.
        let b = Cow::Borrowed;
        let mut out = Vec::with_capacity(8);
        out.push((b(F_UPLOAD_ID), b(self.upload_id.as_str())));
        out.push((b(F_ROW_NUMBER), Cow::Owned(self.row_number.to_string())));
        for (k, v) in trace {
            if !v.is_empty() {
                out.push((b(k.as_str()), b(v.as_str())));
            }
        }
        match &self.body {
            EntryBody::Row(row) => {
                if let Some(email) = &row.email {
                    out.push((b(F_EMAIL), b(email.as_str())));
                }
                if let Some(name) = &row.name {
                    out.push((b(F_NAME), b(name.as_str())));
                }
                for (k, v) in &row.attributes {
                    let key = if RESERVED.contains(&k.as_str()) || k.starts_with(COLLISION_PREFIX) {
                        Cow::Owned(format!("{COLLISION_PREFIX}{k}"))
                    } else {
                        b(k.as_str())
                    };
                    out.push((key, b(v.as_str())));
                }
            }
            EntryBody::Rejected { rejection, raw } => {
                out.push((b(F_REJECT), b(rejection.reason.code())));
                out.push((b(F_REJECT_DETAIL), b(rejection.message.as_str())));
                out.push((
                    b(F_RAW),
                    Cow::Owned(serde_json::to_string(raw).unwrap_or_else(|_| "[]".into())),
                ));
            }
        }
        out
    }

    /// Read an entry back from `XREADGROUP`/`XAUTOCLAIM` output.
    ///
    /// Entries written by other producers are accepted as long as they carry
    /// `upload_id` and `row_number`; their email column is then found by
    /// header name like a CSV header would be.
    pub fn from_map(map: &HashMap<String, Value>) -> Result<Self, EntryError> {
        Self::from_fields(fields_of_map(map)).map_err(|(e, _)| e)
    }

    /// Read an entry back from its fields in stream order (see
    /// [`super::reader::GroupReader`]), taking the strings over instead of
    /// copying them. On error the fields come back untouched, so an
    /// undecodable entry can be dead-lettered as it was.
    pub fn from_fields(
        mut fields: Vec<(String, String)>,
    ) -> Result<Self, (EntryError, Vec<(String, String)>)> {
        // Check the identity first, while the fields are still whole.
        let find =
            |fields: &[(String, String)], key: &str| fields.iter().position(|(k, _)| k == key);
        if find(&fields, F_UPLOAD_ID).is_none() {
            return Err((EntryError::Missing(F_UPLOAD_ID), fields));
        }
        let Some(ri) = find(&fields, F_ROW_NUMBER) else {
            return Err((EntryError::Missing(F_ROW_NUMBER), fields));
        };
        let Ok(row_number) = fields[ri].1.trim().parse::<i64>() else {
            let bad = fields[ri].1.clone();
            return Err((EntryError::BadNumber(F_ROW_NUMBER, bad), fields));
        };
        let take = |fields: &mut Vec<(String, String)>, key: &str| -> Option<String> {
            let i = fields.iter().position(|(k, _)| k == key)?;
            Some(fields.remove(i).1)
        };
        let upload_id = take(&mut fields, F_UPLOAD_ID).unwrap_or_default();
        take(&mut fields, F_ROW_NUMBER);
        // Written by earlier versions of the upload service. Never trusted:
        // the consumer reads each upload's sequence from its record.
        take(&mut fields, F_UPLOAD_SEQ);
        let mut trace = Vec::new();
        for key in [F_TRACEPARENT, F_TRACESTATE] {
            if let Some(v) = take(&mut fields, key) {
                trace.push((key.to_string(), v));
            }
        }
        let body = if let Some(code) = take(&mut fields, F_REJECT) {
            let detail = take(&mut fields, F_REJECT_DETAIL).unwrap_or_default();
            let raw = take(&mut fields, F_RAW)
                .and_then(|r| serde_json::from_str::<Vec<String>>(&r).ok())
                .unwrap_or_default();
            let reason = RejectReason::from_code(&code).unwrap_or(RejectReason::InvalidSyntax);
            EntryBody::Rejected {
                rejection: Rejection::new(reason, detail),
                raw,
            }
        } else {
            let email = take(&mut fields, F_EMAIL);
            let name = take(&mut fields, F_NAME);
            let attributes: Vec<(String, String)> = fields
                .into_iter()
                .map(|(k, v)| match k.strip_prefix(COLLISION_PREFIX) {
                    Some(orig) => (orig.to_string(), v),
                    None => (k, v),
                })
                .collect();
            if email.is_none() {
                // A foreign producer: find the email column by header name.
                let headers: Vec<String> = attributes.iter().map(|(k, _)| k.clone()).collect();
                let values: Vec<String> = attributes.iter().map(|(_, v)| v.clone()).collect();
                match ColumnMap::detect(&headers, None, None) {
                    Ok(map) => {
                        let mut row = map.split(&values);
                        if name.is_some() {
                            row.name = name;
                        }
                        EntryBody::Row(row)
                    }
                    Err(_) => EntryBody::Row(RowFields {
                        email: None,
                        name,
                        attributes,
                    }),
                }
            } else {
                EntryBody::Row(RowFields {
                    email,
                    name,
                    attributes,
                })
            }
        };
        Ok(Self {
            upload_id,
            row_number,
            body,
            trace,
        })
    }

    /// The fields as the third party wrote them, for the reject ledger.
    pub fn original_fields_json(&self) -> String {
        match &self.body {
            EntryBody::Rejected { raw, .. } => {
                serde_json::to_string(raw).unwrap_or_else(|_| "[]".into())
            }
            EntryBody::Row(row) => row.as_written_json(),
        }
    }
}

/// The fields of a typed reply's map (e.g. `XAUTOCLAIM`'s), sorted by name
/// because map order is arbitrary and attribute order should not be.
pub fn fields_of_map(map: &HashMap<String, Value>) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = map
        .iter()
        .map(|(k, v)| (k.clone(), value_to_string(v)))
        .collect();
    fields.sort();
    fields
}

/// Any Redis value as text, taking a bulk string's bytes over when they are
/// valid UTF-8 (the norm) instead of copying them.
pub fn value_into_string(v: Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8(b)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        Value::SimpleString(s) => s,
        other => value_to_string(&other),
    }
}

/// Any Redis value as text (bulk strings are the norm; others are rare).
pub fn value_to_string(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        Value::Double(d) => d.to_string(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::Nil => String::new(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_map(fields: Vec<(Cow<'_, str>, Cow<'_, str>)>) -> HashMap<String, Value> {
        fields
            .into_iter()
            .map(|(k, v)| {
                (
                    k.into_owned(),
                    Value::BulkString(v.into_owned().into_bytes()),
                )
            })
            .collect()
    }

    #[test]
    fn a_row_survives_the_round_trip_even_with_colliding_headers() {
        let entry = StreamEntry {
            upload_id: "u1".into(),
            row_number: 42,
            body: EntryBody::Row(RowFields {
                email: Some(" A@Example.com".into()),
                name: Some("Zoë".into()),
                attributes: vec![
                    ("company".into(), "ACME, Inc".into()),
                    ("row_number".into(), "x".into()),
                ],
            }),
            trace: vec![("traceparent".into(), "00-abc-def-01".into())],
        };
        let back = StreamEntry::from_map(&to_map(entry.to_fields())).expect("decode");
        assert_eq!(back, entry);
    }

    #[test]
    fn foreign_entries_find_their_email_by_header_name() {
        let map = to_map(vec![
            ("upload_id".into(), "ext".into()),
            ("row_number".into(), "3".into()),
            ("E-Mail".into(), "x@example.com".into()),
        ]);
        let entry = StreamEntry::from_map(&map).expect("decode");
        match entry.body {
            EntryBody::Row(row) => assert_eq!(row.email.as_deref(), Some("x@example.com")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn an_upload_seq_written_by_an_earlier_producer_is_not_a_column() {
        let map = to_map(vec![
            ("upload_id".into(), "u1".into()),
            ("upload_seq".into(), "-1".into()),
            ("row_number".into(), "3".into()),
            ("email".into(), "x@example.com".into()),
        ]);
        let entry = StreamEntry::from_map(&map).expect("decode");
        match entry.body {
            EntryBody::Row(row) => assert!(row.attributes.is_empty(), "{row:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn entries_without_keys_are_refused() {
        let map = to_map(vec![("email".into(), "x@example.com".into())]);
        assert_eq!(
            StreamEntry::from_map(&map),
            Err(EntryError::Missing("upload_id"))
        );
    }
}
