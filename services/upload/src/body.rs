//! The request body as the file's bytes: decompressed, and refused when it
//! is not text at all.
//!
//! A file arrives compressed in two ways: the request says so
//! (`Content-Encoding: gzip` or `zstd`), or the file itself is a `.csv.gz`
//! or `.csv.zst` (told by its magic bytes, in a raw body or a multipart
//! part). Either way it is decompressed as a stream, chunk by chunk, so the
//! size limit the ingest applies counts decompressed bytes and a
//! decompression bomb is stopped at the limit, not after filling memory.
//!
//! Then the first decoded bytes are looked at: an Excel workbook, a PDF, an
//! image or other binary data is refused with a message naming what it looks
//! like, rather than parsed into garbage rows.

use std::pin::Pin;

use async_compression::tokio::bufread::{GzipDecoder, ZstdDecoder};
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::error::ApiError;

/// How many decoded bytes are looked at to tell what the file is (at
/// most: the first chunks that hold at least [`SNIFF_MIN`] are enough).
const SNIFF_BYTES: usize = 8 * 1024;

/// Decoded bytes waited for before telling what the file is: few, so a
/// slowly sent file starts flowing with its first chunk.
const SNIFF_MIN: usize = 512;

/// Size of the decompressed chunks handed to the ingest.
const DECODED_CHUNK: usize = 64 * 1024;

/// A compression the service decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// From the first bytes of a file.
    fn from_magic(prefix: &[u8]) -> Option<Self> {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// The request's `Content-Encoding`: none (or `identity`), gzip or zstd;
/// anything else is refused (415) before the body is read.
pub fn declared_compression(headers: &HeaderMap) -> Result<Option<Compression>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(None);
    };
    let value = value.to_str().unwrap_or("").trim().to_ascii_lowercase();
    match value.as_str() {
        "" | "identity" => Ok(None),
        "gzip" | "x-gzip" => Ok(Some(Compression::Gzip)),
        "zstd" => Ok(Some(Compression::Zstd)),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Encoding {other:?} is not supported: send the file as it is, or with gzip or zstd"
        ))),
    }
}

/// Why the body's bytes stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Reading the request failed (the connection dropped, a length
    /// limit, a malformed multipart body); the cause is kept as the source.
    #[error("{0}")]
    Transport(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The compressed data is not valid: the file's fault.
    #[error("the {compression} data is corrupt: {detail}")]
    Corrupt {
        compression: &'static str,
        detail: String,
    },
}

/// A transport error carried through the decompressor's `io::Error`, so it
/// comes out as the transport error it was, not as corrupt data.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct Carried(Box<dyn std::error::Error + Send + Sync>);

/// The file's bytes.
pub type FileStream<'a> = Pin<Box<dyn Stream<Item = Result<Bytes, BodyError>> + Send + 'a>>;

/// The file in a request body: decompressed if it is compressed (as
/// declared, or by its magic bytes), refused with 415 if it is not text.
/// Returns the decoded bytes and the compression found, if any.
pub async fn open<'a, S, E>(
    body: S,
    declared: Option<Compression>,
    idle: std::time::Duration,
) -> Result<(FileStream<'a>, Option<Compression>), ApiError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'a,
    E: std::error::Error + Send + Sync + 'static,
{
    let raw: FileStream<'a> = Box::pin(body.map_err(|e| BodyError::Transport(Box::new(e))));
    let (head, raw) = peek(raw, 4, idle).await?;
    let compression = declared.or_else(|| Compression::from_magic(&head));
    let decoded: FileStream<'a> = match compression {
        None => raw,
        Some(c) => decompress(raw, c),
    };
    let (head, decoded) = peek(decoded, SNIFF_MIN, idle).await?;
    if let Some(what) = not_text(&head) {
        return Err(ApiError::UnsupportedMediaType(what));
    }
    Ok((decoded, compression))
}

/// A body compressed with `compression`, decompressed without looking
/// at what it holds (a multipart body, whose parts are opened one by one).
pub fn open_compressed<'a, S, E>(
    body: S,
    compression: Compression,
) -> (FileStream<'a>, Option<Compression>)
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'a,
    E: std::error::Error + Send + Sync + 'static,
{
    let raw: FileStream<'a> = Box::pin(body.map_err(|e| BodyError::Transport(Box::new(e))));
    (decompress(raw, compression), Some(compression))
}

/// The first chunks of `stream` until they hold `want` bytes (fewer if it
/// ends), at most [`SNIFF_BYTES`] of them, and the stream with them put
/// back in front. A body that sends nothing for `idle` is stopped here too.
async fn peek<'a>(
    mut stream: FileStream<'a>,
    want: usize,
    idle: std::time::Duration,
) -> Result<(Vec<u8>, FileStream<'a>), ApiError> {
    let mut chunks: Vec<Result<Bytes, BodyError>> = Vec::new();
    let mut head = Vec::new();
    while head.len() < want {
        let next = tokio::time::timeout(idle, stream.next())
            .await
            .map_err(|_| ApiError::BodyIdle {
                idle_secs: idle.as_secs(),
            })?;
        match next {
            None => break,
            Some(Ok(chunk)) => {
                head.extend_from_slice(&chunk[..chunk.len().min(SNIFF_BYTES - head.len())]);
                chunks.push(Ok(chunk));
            }
            // The error is the ingest's to report (it knows the limit and
            // records the upload); it comes right after what was read.
            Some(Err(e)) => {
                chunks.push(Err(e));
                break;
            }
        }
    }
    let stream = futures::stream::iter(chunks).chain(stream);
    Ok((head, Box::pin(stream)))
}

fn decompress<'a>(raw: FileStream<'a>, compression: Compression) -> FileStream<'a> {
    let reader = StreamReader::new(raw.map_err(|e| match e {
        BodyError::Transport(cause) => std::io::Error::other(Carried(cause)),
        corrupt @ BodyError::Corrupt { .. } => std::io::Error::other(corrupt),
    }));
    let name = compression.name();
    let uncarry = move |e: std::io::Error| {
        if e.get_ref().is_some_and(|inner| inner.is::<Carried>()) {
            let inner = e.into_inner().and_then(|b| b.downcast::<Carried>().ok());
            if let Some(carried) = inner {
                return BodyError::Transport(carried.0);
            }
            return BodyError::Transport("the request body failed".into());
        }
        BodyError::Corrupt {
            compression: name,
            detail: e.to_string(),
        }
    };
    match compression {
        Compression::Gzip => {
            let mut decoder = GzipDecoder::new(reader);
            // `cat a.gz b.gz` is a valid gzip file.
            decoder.multiple_members(true);
            Box::pin(ReaderStream::with_capacity(decoder, DECODED_CHUNK).map_err(uncarry))
        }
        Compression::Zstd => {
            let mut decoder = ZstdDecoder::new(reader);
            decoder.multiple_members(true);
            Box::pin(ReaderStream::with_capacity(decoder, DECODED_CHUNK).map_err(uncarry))
        }
    }
}

/// What the start of a file looks like when it is not text: an answer for
/// the client naming it, or None for anything that may be CSV.
pub fn not_text(head: &[u8]) -> Option<String> {
    let export = "; export it as CSV (UTF-8) and upload that";
    let named = |what: &str| Some(format!("this is {what}, not a CSV file{export}"));
    if head.starts_with(b"PK\x03\x04") {
        let window = &head[..head.len().min(SNIFF_BYTES)];
        let has = |needle: &[u8]| window.windows(needle.len()).any(|w| w == needle);
        return if has(b"xl/") {
            named("an Excel workbook (xlsx)")
        } else if has(b"content.xml") || has(b"mimetype") {
            named("an OpenDocument file (ods or another)")
        } else if has(b"word/") {
            named("a Word document (docx)")
        } else {
            Some(
                "this is a zip archive, not a CSV file; unpack it and upload the CSV inside (or send it gzip-compressed)"
                    .to_string(),
            )
        };
    }
    if head.starts_with(&[0xd0, 0xcf, 0x11, 0xe0, 0xa1, 0xb1, 0x1a, 0xe1]) {
        return named("an Excel 97-2003 workbook (xls) or another legacy Office document");
    }
    if head.starts_with(b"%PDF-") {
        return named("a PDF document");
    }
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        return named("a PNG image");
    }
    if head.starts_with(&[0xff, 0xd8, 0xff]) {
        return named("a JPEG image");
    }
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        return named("a GIF image");
    }
    if head.starts_with(b"\x1f\x8b") || head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Some("this is compressed twice (a compressed file inside a compressed body); compress it once".into());
    }
    // UTF-16 text is full of NUL bytes; with its byte-order mark it is text.
    if head.starts_with(&[0xff, 0xfe]) || head.starts_with(&[0xfe, 0xff]) {
        return None;
    }
    let control = head
        .iter()
        .filter(|&&b| (b < 0x20 && !matches!(b, b'\t' | b'\n' | b'\r')) || b == 0x7f)
        .count();
    // Text has almost none; a few stray ones are rejected row by row.
    if !head.is_empty() && control * 10 > head.len() {
        return Some(format!(
            "this is binary data, not a CSV file ({control} of its first {} bytes are control \
             characters){export}",
            head.len()
        ));
    }
    None
}

/// A name for a media type that is certainly not CSV, for the 415 answer.
pub fn describe_media_type(essence: &str) -> Option<&'static str> {
    Some(match essence {
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => {
            "an Excel workbook (xlsx)"
        }
        "application/vnd.oasis.opendocument.spreadsheet" => "an OpenDocument spreadsheet (ods)",
        "application/pdf" => "a PDF document",
        "application/zip" | "application/x-zip-compressed" => "a zip archive",
        e if e.starts_with("image/") => "an image",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_text_are_named() {
        let xlsx = b"PK\x03\x04\x14\x00\x06\x00\x08\x00[Content_Types].xml....xl/workbook.xml";
        assert!(not_text(xlsx).is_some_and(|m| m.contains("Excel workbook (xlsx)")));
        assert!(not_text(b"%PDF-1.7\n").is_some_and(|m| m.contains("PDF")));
        assert!(not_text(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").is_some_and(|m| m.contains("PNG")));
        assert!(
            not_text(&[0u8, 1, 2, 3, 4, 5, 200, 9, 0, 0]).is_some_and(|m| m.contains("binary"))
        );
        assert_eq!(not_text(b"name,email\nA,a@example.com\n"), None);
        assert_eq!(not_text(b"\xff\xfen\0a\0m\0e\0"), None);
        assert_eq!(not_text("M\u{fc}ller;m@example.de\n".as_bytes()), None);
    }
}
