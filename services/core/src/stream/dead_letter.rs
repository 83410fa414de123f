//! The dead-letter stream: one entry per stream entry the consumer gave up
//! on, so that a person can see what it was and why it failed, and replay
//! it once the cause is fixed (see [`super::replay`]).
//!
//! | field | meaning |
//! |---|---|
//! | `source_id` | the entry's id in the main stream |
//! | `cause` | why, as a stable code ([`Cause`]): `row_refused`, `unknown_upload`, `undecodable` |
//! | `error` | why, in words: for `row_refused`, the database's own error |
//! | `upload_id`, `row_number` | the row it carried (decoded entries) |
//! | `fields` | the row's fields as JSON (decoded entries): an object by column ([`crate::row::RowFields::as_written_json`]), or, for a row the upload service rejected for its shape, the array of its raw values |
//! | `entry` | the entry itself, as a JSON array of `[field, value]` pairs (decoded entries): what a replay writes back to the main stream |
//! | the entry's own fields | as they came (entries that could not be decoded) |
//! | `dead_lettered_by` | the consumer that gave up |
//!
//! The stream's key is [`crate::config::StreamConfig::dead_letter_stream`].
//! It is bounded: each write trims it to about `max_len` letters, oldest
//! first. A row dead-lettered is also recorded in the upload's reject
//! ledger (`processing_failed`, with its fields), which is never trimmed.
//! An undecodable entry's own fields come first, in the order the read
//! returned them (sorted by name when the entry came back through
//! `XAUTOCLAIM`).

use std::borrow::Cow;

use crate::stream::Connection;
use redis::streams::StreamMaxlen;
use redis::{AsyncTypedCommands, RedisResult};

use super::entry::{F_ROW_NUMBER, F_UPLOAD_ID};

pub const F_SOURCE_ID: &str = "source_id";
pub const F_CAUSE: &str = "cause";
pub const F_ERROR: &str = "error";
pub const F_FIELDS: &str = "fields";
pub const F_ENTRY: &str = "entry";
pub const F_DEAD_LETTERED_BY: &str = "dead_lettered_by";

/// Why an entry was given up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The database refuses the row itself (a constraint, a value), alone,
    /// delivery after delivery.
    RowRefused,
    /// The entry names an upload that has no record: it was not written by
    /// a rowpipe upload service of this database (or its record is gone).
    UnknownUpload,
    /// The entry lacks the fields every row has.
    Undecodable,
}

impl Cause {
    pub const ALL: [Cause; 3] = [Cause::RowRefused, Cause::UnknownUpload, Cause::Undecodable];

    /// The stable code, in the letter and in metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Cause::RowRefused => "row_refused",
            Cause::UnknownUpload => "unknown_upload",
            Cause::Undecodable => "undecodable",
        }
    }

    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// What was given up on.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// An entry that decoded into a row.
    Row {
        upload_id: &'a str,
        row_number: i64,
        /// The row's fields as JSON (see the table above).
        fields: &'a str,
        /// The entry, for a replay ([`encode_entry`]); `None` if it could
        /// not be read back.
        entry: Option<&'a str>,
    },
    /// An entry that did not decode: its fields as they came.
    Undecodable(&'a [(String, String)]),
}

/// One dead letter.
#[derive(Clone, Copy, Debug)]
pub struct DeadLetter<'a> {
    /// The entry's id in the main stream.
    pub source_id: &'a str,
    pub cause: Cause,
    pub error: &'a str,
    pub subject: Subject<'a>,
}

/// An entry's fields as the letter's `entry` field carries them.
pub fn encode_entry<K: AsRef<str>, V: AsRef<str>>(fields: &[(K, V)]) -> String {
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect();
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".into())
}

impl<'a> DeadLetter<'a> {
    /// The letter's field/value pairs for `XADD`, signed by consumer `by`.
    pub fn fields(&self, by: &'a str) -> Vec<(&'a str, Cow<'a, str>)> {
        let b = Cow::Borrowed;
        let mut out = Vec::new();
        match self.subject {
            Subject::Row {
                upload_id,
                row_number,
                fields,
                entry,
            } => {
                out.push((F_SOURCE_ID, b(self.source_id)));
                out.push((F_CAUSE, b(self.cause.code())));
                out.push((F_ERROR, b(self.error)));
                out.push((F_UPLOAD_ID, b(upload_id)));
                out.push((F_ROW_NUMBER, Cow::Owned(row_number.to_string())));
                out.push((F_FIELDS, b(fields)));
                if let Some(entry) = entry {
                    out.push((F_ENTRY, b(entry)));
                }
            }
            Subject::Undecodable(raw) => {
                out.extend(raw.iter().map(|(k, v)| (k.as_str(), b(v.as_str()))));
                out.push((F_SOURCE_ID, b(self.source_id)));
                out.push((F_CAUSE, b(self.cause.code())));
                out.push((F_ERROR, b(self.error)));
            }
        }
        out.push((F_DEAD_LETTERED_BY, b(by)));
        out
    }

    /// `XADD stream MAXLEN ~ max_len * …` with [`Self::fields`].
    pub async fn write(
        &self,
        con: &mut Connection,
        stream: &str,
        max_len: usize,
        by: &'a str,
    ) -> RedisResult<()> {
        con.xadd_maxlen(
            stream,
            StreamMaxlen::Approx(max_len.max(1)),
            "*",
            &self.fields(by),
        )
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(letter: &DeadLetter<'_>) -> Vec<(String, String)> {
        letter
            .fields("c-w0")
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_owned()))
            .collect()
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_row_letter_says_which_row_why_and_carries_the_entry() {
        let letter = DeadLetter {
            source_id: "1-0",
            cause: Cause::RowRefused,
            error: "boom",
            subject: Subject::Row {
                upload_id: "u1",
                row_number: 7,
                fields: r#"["a@b.org"]"#,
                entry: Some(r#"[["upload_id","u1"]]"#),
            },
        };
        assert_eq!(
            pairs(&letter),
            owned(&[
                ("source_id", "1-0"),
                ("cause", "row_refused"),
                ("error", "boom"),
                ("upload_id", "u1"),
                ("row_number", "7"),
                ("fields", r#"["a@b.org"]"#),
                ("entry", r#"[["upload_id","u1"]]"#),
                ("dead_lettered_by", "c-w0"),
            ])
        );
    }

    #[test]
    fn an_undecodable_letter_keeps_the_entry_as_it_came_first() {
        let raw = owned(&[("email", "x@y.org"), ("row_number", "z")]);
        let letter = DeadLetter {
            source_id: "2-0",
            cause: Cause::Undecodable,
            error: "undecodable entry",
            subject: Subject::Undecodable(&raw),
        };
        assert_eq!(
            pairs(&letter),
            owned(&[
                ("email", "x@y.org"),
                ("row_number", "z"),
                ("source_id", "2-0"),
                ("cause", "undecodable"),
                ("error", "undecodable entry"),
                ("dead_lettered_by", "c-w0"),
            ])
        );
    }

    #[test]
    fn cause_codes_read_back() {
        for cause in Cause::ALL {
            assert_eq!(Cause::from_code(cause.code()), Some(cause));
        }
        assert_eq!(Cause::from_code("other"), None);
    }
}
