//! The dead-letter stream: one entry per stream entry the consumer gave up
//! on, so that a person can see what it was and why it failed.
//!
//! | field | meaning |
//! |---|---|
//! | `source_id` | the entry's id in the main stream |
//! | `error` | why it was given up on |
//! | `upload_id`, `row_number` | the row it carried (decoded entries) |
//! | `fields` | the row's fields as JSON (decoded entries): an object by column ([`crate::row::RowFields::as_written_json`]), or, for a row the upload service rejected for its shape, the array of its raw values |
//! | the entry's own fields | as they came (entries that could not be decoded) |
//! | `dead_lettered_by` | the consumer that gave up |
//!
//! The stream's key is [`crate::config::StreamConfig::dead_letter_stream`].
//! An undecodable entry's own fields come first, in the order the read
//! returned them (sorted by name when the entry came back through
//! `XAUTOCLAIM`).

use std::borrow::Cow;

use redis::aio::ConnectionManager;
use redis::{AsyncTypedCommands, RedisResult};

use super::entry::{F_ROW_NUMBER, F_UPLOAD_ID};

pub const F_SOURCE_ID: &str = "source_id";
pub const F_ERROR: &str = "error";
pub const F_FIELDS: &str = "fields";
pub const F_DEAD_LETTERED_BY: &str = "dead_lettered_by";

/// What was given up on.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// An entry that decoded into a row.
    Row {
        upload_id: &'a str,
        row_number: i64,
        /// The row's fields as JSON (see the table above).
        fields: &'a str,
    },
    /// An entry that did not decode: its fields as they came.
    Undecodable(&'a [(String, String)]),
}

/// One dead letter.
#[derive(Clone, Copy, Debug)]
pub struct DeadLetter<'a> {
    /// The entry's id in the main stream.
    pub source_id: &'a str,
    pub error: &'a str,
    pub subject: Subject<'a>,
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
            } => {
                out.push((F_SOURCE_ID, b(self.source_id)));
                out.push((F_ERROR, b(self.error)));
                out.push((F_UPLOAD_ID, b(upload_id)));
                out.push((F_ROW_NUMBER, Cow::Owned(row_number.to_string())));
                out.push((F_FIELDS, b(fields)));
            }
            Subject::Undecodable(raw) => {
                out.extend(raw.iter().map(|(k, v)| (k.as_str(), b(v.as_str()))));
                out.push((F_SOURCE_ID, b(self.source_id)));
                out.push((F_ERROR, b(self.error)));
            }
        }
        out.push((F_DEAD_LETTERED_BY, b(by)));
        out
    }

    /// `XADD stream * …` with [`Self::fields`].
    pub async fn write(
        &self,
        con: &mut ConnectionManager,
        stream: &str,
        by: &'a str,
    ) -> RedisResult<()> {
        con.xadd(stream, "*", &self.fields(by)).await.map(drop)
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
    fn a_row_letter_says_which_row_and_its_fields() {
        let letter = DeadLetter {
            source_id: "1-0",
            error: "boom",
            subject: Subject::Row {
                upload_id: "u1",
                row_number: 7,
                fields: r#"["a@b.org"]"#,
            },
        };
        assert_eq!(
            pairs(&letter),
            owned(&[
                ("source_id", "1-0"),
                ("error", "boom"),
                ("upload_id", "u1"),
                ("row_number", "7"),
                ("fields", r#"["a@b.org"]"#),
                ("dead_lettered_by", "c-w0"),
            ])
        );
    }

    #[test]
    fn an_undecodable_letter_keeps_the_entry_as_it_came_first() {
        let raw = owned(&[("email", "x@y.org"), ("row_number", "z")]);
        let letter = DeadLetter {
            source_id: "2-0",
            error: "undecodable entry",
            subject: Subject::Undecodable(&raw),
        };
        assert_eq!(
            pairs(&letter),
            owned(&[
                ("email", "x@y.org"),
                ("row_number", "z"),
                ("source_id", "2-0"),
                ("error", "undecodable entry"),
                ("dead_lettered_by", "c-w0"),
            ])
        );
    }
}
