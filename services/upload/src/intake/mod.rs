//! Intake: the uploaded bytes → rows, synchronously and in bounded memory.
//!
//! ```text
//! bytes ─▶ decode (encoding detection) ─▶ sniff delimiter ─▶ csv_core records
//!       ─▶ header / column map ─▶ IntakeRow { row_number, body }
//! ```
//!
//! Nothing here does I/O, so the same code runs under the HTTP handler, the
//! tests and the fuzz target. Memory is bounded by the limits: a record
//! longer than `max_row_bytes` is not kept, only counted and rejected, and a
//! quote that does not close ([`quote`]) is rejected where it opened and
//! reading resumes on the next line, re-reading at most `max_field_bytes`.

pub mod decode;
pub mod quote;
pub mod sniff;

use std::borrow::Cow;

use csv_core::{ReadRecordResult, Reader, ReaderBuilder};
use rowpipe_core::row::{ColumnError, ColumnMap};
use rowpipe_core::stream::EntryBody;
use rowpipe_core::validate::{RejectReason, Rejection};

use decode::Utf8Decoder;
use quote::QuoteWatch;

/// Row-level limits. Exceeding one rejects that row only.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_field_bytes: usize,
    pub max_columns: usize,
    pub max_row_bytes: usize,
}

impl Limits {
    /// The defaults of `ROWPIPE_MAX_FIELD_BYTES`, `ROWPIPE_MAX_COLUMNS` and
    /// `ROWPIPE_MAX_ROW_BYTES` (the configuration takes them from here).
    pub const DEFAULT: Self = Self {
        max_field_bytes: 64 * 1024,
        max_columns: 512,
        max_row_bytes: 1024 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How to read one file (from the query string).
#[derive(Clone, Debug)]
pub struct IntakeOptions {
    pub delimiter: Option<u8>,
    pub encoding: Option<&'static encoding_rs::Encoding>,
    pub has_header: bool,
    pub email_column: Option<String>,
    pub name_column: Option<String>,
    pub limits: Limits,
}

impl Default for IntakeOptions {
    fn default() -> Self {
        Self {
            delimiter: None,
            encoding: None,
            has_header: true,
            email_column: None,
            name_column: None,
            limits: Limits::default(),
        }
    }
}

/// One data row, numbered from 1 (header and blank lines excluded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntakeRow {
    pub row_number: i64,
    pub body: EntryBody,
}

/// Problems with the file as a whole (the upload is refused with 422).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Columns(#[from] ColumnError),
    #[error("the header has {found} columns; at most {max} are accepted")]
    TooManyColumns { found: usize, max: usize },
    #[error(
        "no column of the first row looks like an email address; name it with ?email_column= (1-based position)"
    )]
    NoEmailInFirstRow,
    #[error("the file is empty: a header row with an email column is expected")]
    Empty,
    #[error("the first row opens a quoted field that does not close; check the file's quoting")]
    UnterminatedQuoteInHeader,
    #[error("the header row contains a NUL character; is this a CSV file?")]
    NulInHeader,
}

/// Longest original field kept in a reject entry (the ledger stays small).
const RAW_FIELD_KEEP: usize = 1024;

/// The intake state machine for one upload.
pub struct Intake {
    options: IntakeOptions,
    decoder: Utf8Decoder,
    text: String,
    parser: Option<Reader>,
    quotes: Option<QuoteWatch>,
    delimiter: Option<u8>,
    record: Vec<u8>,
    out: Vec<u8>,
    ends: Vec<usize>,
    ends_scratch: Vec<usize>,
    nends: usize,
    overflow: bool,
    too_many_fields: bool,
    columns: Option<ColumnMap>,
    rows: i64,
}

impl Intake {
    pub fn new(options: IntakeOptions) -> Self {
        let ends = vec![0; options.limits.max_columns + 1];
        Self {
            decoder: Utf8Decoder::new(options.encoding),
            delimiter: options.delimiter,
            options,
            text: String::new(),
            parser: None,
            quotes: None,
            record: Vec::new(),
            out: vec![0; 64 * 1024],
            ends,
            ends_scratch: Vec::new(),
            nends: 0,
            overflow: false,
            too_many_fields: false,
            columns: None,
            rows: 0,
        }
    }

    /// The encoding in use (once the first bytes were seen).
    pub fn encoding(&self) -> Option<&'static str> {
        self.decoder.encoding().map(|e| e.name())
    }

    /// The delimiter in use (once the first bytes were seen).
    pub fn delimiter(&self) -> Option<u8> {
        self.delimiter
    }

    /// Data rows produced so far.
    pub fn rows_read(&self) -> i64 {
        self.rows
    }

    /// Feed the next bytes of the body.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<IntakeRow>) -> Result<(), IntakeError> {
        let mut text = std::mem::take(&mut self.text);
        self.decoder.push(bytes, &mut text);
        let result = self.parse(&text, false, out);
        text.clear();
        self.text = text;
        result
    }

    /// The body ended.
    pub fn finish(&mut self, out: &mut Vec<IntakeRow>) -> Result<(), IntakeError> {
        let mut text = std::mem::take(&mut self.text);
        self.decoder.finish(&mut text);
        self.parse(&text, true, out)?;
        if self.columns.is_none() {
            return Err(IntakeError::Empty);
        }
        Ok(())
    }

    fn parse(
        &mut self,
        text: &str,
        eof: bool,
        out: &mut Vec<IntakeRow>,
    ) -> Result<(), IntakeError> {
        if self.parser.is_none() {
            if text.is_empty() && !eof {
                return Ok(());
            }
            let delimiter = *self
                .delimiter
                .get_or_insert_with(|| sniff::detect_delimiter(text));
            self.parser = Some(ReaderBuilder::new().delimiter(delimiter).build());
            self.quotes = Some(QuoteWatch::new(
                delimiter,
                self.options.limits.max_field_bytes,
            ));
        }
        // Borrowed until a resync replaces it with the bytes to read again.
        let mut input: Cow<[u8]> = Cow::Borrowed(text.as_bytes());
        let mut pos = 0;
        loop {
            let (Some(parser), Some(quotes)) = (self.parser.as_mut(), self.quotes.as_mut()) else {
                return Ok(());
            };
            if eof && pos == input.len() && quotes.in_quoted_field() {
                // The input ended inside a quoted field.
                let replay = self.give_up_quote(out)?;
                input = Cow::Owned(replay);
                pos = 0;
                continue;
            }
            let ends_start = self.nends.min(self.ends.len() - 1);
            let (res, nin, nout, nend) =
                parser.read_record(&input[pos..], &mut self.out, &mut self.ends[ends_start..]);
            if let Some(at) = quotes.feed(&input[pos..pos + nin]) {
                // A quoted field ran past a line end and the field limit.
                let mut replay = self.give_up_quote(out)?;
                replay.extend_from_slice(&input[pos + at..]);
                input = Cow::Owned(replay);
                pos = 0;
                continue;
            }
            pos += nin;
            if !self.overflow {
                if self.record.len() + nout > self.options.limits.max_row_bytes {
                    self.overflow = true;
                    self.record = Vec::new();
                } else {
                    self.record.extend_from_slice(&self.out[..nout]);
                }
            }
            self.nends = ends_start + nend;
            match res {
                ReadRecordResult::InputEmpty => {
                    if !eof {
                        return Ok(());
                    }
                    // At EOF, keep calling with empty input until `End`.
                }
                ReadRecordResult::OutputFull => {}
                ReadRecordResult::OutputEndsFull => {
                    // More fields than we track: remember it, and keep
                    // reusing the last slot until the record ends.
                    self.too_many_fields = true;
                    self.nends = self.ends.len() - 1;
                }
                ReadRecordResult::Record => {
                    let result = self.on_record(out);
                    self.record.clear();
                    self.nends = 0;
                    self.overflow = false;
                    self.too_many_fields = false;
                    result?;
                }
                ReadRecordResult::End => return Ok(()),
            }
        }
    }

    /// The open quoted field does not close: reject the row it opened in,
    /// start a fresh parser at the line after the opening one, and return
    /// the bytes from there that were already given to the old parser.
    fn give_up_quote(&mut self, out: &mut Vec<IntakeRow>) -> Result<Vec<u8>, IntakeError> {
        let Some(columns) = &self.columns else {
            return Err(IntakeError::UnterminatedQuoteInHeader);
        };
        let quotes = self.quotes.as_mut();
        let past_line_end = quotes.as_ref().is_some_and(|q| q.past_line_end());
        let replay = quotes.map(|q| {
            let replay = q.take_replay();
            q.reset();
            replay
        });
        let nends = self.nends.min(self.ends.len());
        let completed = &self.ends[..nends];
        let mut raw: Vec<String> = Vec::with_capacity(nends + 1);
        let mut start = 0;
        for &end in completed.iter().chain(std::iter::once(&self.record.len())) {
            let bytes = self.record.get(start..end).unwrap_or_default();
            raw.push(keep_prefix(&String::from_utf8_lossy(bytes)));
            start = end;
        }
        let column = columns
            .headers
            .get(nends)
            .map(|h| format!("{h:?}"))
            .unwrap_or_else(|| format!("number {}", nends + 1));
        let limit = self.options.limits.max_field_bytes;
        let message = if past_line_end {
            format!(
                "the quoted field {column} opened in this row does not close within {limit} bytes \
                 or before the end of the file; reading resumed on the next line"
            )
        } else {
            format!(
                "the quoted field {column} opened in this row does not close before the end of the file"
            )
        };
        self.rows += 1;
        out.push(IntakeRow {
            row_number: self.rows,
            body: EntryBody::Rejected {
                rejection: Rejection::new(RejectReason::UnterminatedQuote, message),
                raw,
            },
        });
        let delimiter = self.delimiter.unwrap_or(b',');
        self.parser = Some(ReaderBuilder::new().delimiter(delimiter).build());
        self.record.clear();
        self.nends = 0;
        self.overflow = false;
        self.too_many_fields = false;
        Ok(replay.unwrap_or_default())
    }

    fn on_record(&mut self, out: &mut Vec<IntakeRow>) -> Result<(), IntakeError> {
        // Borrow the record buffers out of `self` while fields point into them.
        let record = std::mem::take(&mut self.record);
        let mut ends = std::mem::take(&mut self.ends_scratch);
        ends.clear();
        ends.extend_from_slice(&self.ends[..self.nends.min(self.ends.len())]);
        let result = self.on_fields(&record, &ends, out);
        self.record = record;
        self.ends_scratch = ends;
        result
    }

    fn on_fields(
        &mut self,
        record: &[u8],
        ends: &[usize],
        out: &mut Vec<IntakeRow>,
    ) -> Result<(), IntakeError> {
        let limits = self.options.limits;
        if self.overflow || self.too_many_fields {
            if self.columns.is_none() {
                return Err(IntakeError::TooManyColumns {
                    found: self.nends,
                    max: limits.max_columns,
                });
            }
            self.rows += 1;
            let rejection = if self.overflow {
                Rejection::new(
                    RejectReason::RowTooLong,
                    format!("the row is longer than {} bytes", limits.max_row_bytes),
                )
            } else {
                Rejection::new(
                    RejectReason::TooManyColumns,
                    format!("the row has more than {} fields", limits.max_columns),
                )
            };
            out.push(IntakeRow {
                row_number: self.rows,
                body: EntryBody::Rejected {
                    rejection,
                    raw: Vec::new(),
                },
            });
            return Ok(());
        }
        let mut fields: Vec<&str> = Vec::with_capacity(ends.len());
        let mut start = 0;
        for &end in ends {
            let bytes = record.get(start..end).unwrap_or_default();
            // Fields are split on ASCII bytes of valid UTF-8, so this holds.
            let s = std::str::from_utf8(bytes).unwrap_or("\u{FFFD}");
            fields.push(s.trim());
            start = end;
        }
        if fields.iter().all(|f| f.is_empty()) {
            return Ok(()); // a blank line (or a row of empty cells)
        }
        let Some(columns) = &self.columns else {
            return self.on_header(&fields, record, ends, out);
        };
        self.rows += 1;
        let row_number = self.rows;
        let expected = columns.headers.len();
        let reject = |reason, message: String, fields: &[&str]| IntakeRow {
            row_number,
            body: EntryBody::Rejected {
                rejection: Rejection::new(reason, message),
                raw: fields.iter().map(|f| keep_prefix(f)).collect(),
            },
        };
        if fields.len() != expected {
            out.push(reject(
                RejectReason::RaggedRow,
                format!("expected {expected} fields, found {}", fields.len()),
                &fields,
            ));
            return Ok(());
        }
        if let Some(i) = fields.iter().position(|f| f.len() > limits.max_field_bytes) {
            out.push(reject(
                RejectReason::FieldTooLong,
                format!(
                    "field {:?} is {} bytes; at most {} are accepted",
                    columns.headers[i],
                    fields[i].len(),
                    limits.max_field_bytes
                ),
                &fields,
            ));
            return Ok(());
        }
        if let Some(i) = fields.iter().position(|f| f.contains('\u{FFFD}')) {
            out.push(reject(
                RejectReason::BadEncoding,
                format!(
                    "field {:?} has bytes that are not valid {}",
                    columns.headers[i],
                    self.decoder.encoding().map(|e| e.name()).unwrap_or("text")
                ),
                &fields,
            ));
            return Ok(());
        }
        // PostgreSQL text cannot hold NUL; no database should be handed one.
        if let Some(i) = fields.iter().position(|f| f.contains('\0')) {
            out.push(reject(
                RejectReason::BadEncoding,
                format!(
                    "field {:?} contains a NUL character (0x00)",
                    columns.headers[i]
                ),
                &fields,
            ));
            return Ok(());
        }
        out.push(IntakeRow {
            row_number,
            body: EntryBody::Row(columns.split(&fields)),
        });
        Ok(())
    }

    fn on_header(
        &mut self,
        fields: &[&str],
        record: &[u8],
        ends: &[usize],
        out: &mut Vec<IntakeRow>,
    ) -> Result<(), IntakeError> {
        let limits = self.options.limits;
        if self.options.has_header && fields.iter().any(|f| f.contains('\0')) {
            return Err(IntakeError::NulInHeader);
        }
        if fields.len() > limits.max_columns {
            return Err(IntakeError::TooManyColumns {
                found: fields.len(),
                max: limits.max_columns,
            });
        }
        if !self.options.has_header {
            let headers = ColumnMap::positional_headers(fields.len());
            let email = match &self.options.email_column {
                Some(c) => Some(c.clone()),
                None => fields
                    .iter()
                    .position(|f| f.contains('@'))
                    .map(|i| (i + 1).to_string()),
            };
            let Some(email) = email else {
                return Err(IntakeError::NoEmailInFirstRow);
            };
            self.columns = Some(ColumnMap::detect(
                &headers,
                Some(&email),
                self.options.name_column.as_deref(),
            )?);
            // The first record is data: run it through again.
            return self.on_fields(record, ends, out);
        }
        let headers = unique_headers(fields);
        self.columns = Some(ColumnMap::detect(
            &headers,
            self.options.email_column.as_deref(),
            self.options.name_column.as_deref(),
        )?);
        Ok(())
    }
}

/// Empty header names become `column_N`; repeated ones get `_2`, `_3`….
fn unique_headers(fields: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(fields.len());
    for (i, f) in fields.iter().enumerate() {
        let base = if f.is_empty() {
            format!("column_{}", i + 1)
        } else {
            f.to_string()
        };
        let mut name = base.clone();
        let mut n = 2;
        while out.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        out.push(name);
    }
    out
}

fn keep_prefix(field: &str) -> String {
    if field.len() <= RAW_FIELD_KEEP {
        return field.to_string();
    }
    let mut cut = RAW_FIELD_KEEP;
    while !field.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…[{} more bytes]", &field[..cut], field.len() - cut)
}

/// Run a whole body through an intake (tests, fuzzing, small files).
pub fn read_all(
    bytes: &[u8],
    options: IntakeOptions,
    chunk: usize,
) -> Result<(Vec<IntakeRow>, Intake), IntakeError> {
    let mut intake = Intake::new(options);
    let mut rows = Vec::new();
    for c in bytes.chunks(chunk.max(1)) {
        intake.push(c, &mut rows)?;
    }
    intake.finish(&mut rows)?;
    Ok((rows, intake))
}
