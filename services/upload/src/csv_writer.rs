//! CSV out: the exports' bodies, written by hand.
//!
//! The exports write a fixed, small set of columns (row numbers and text), so
//! quoting per RFC 4180 is all a writer has to do; the body streams one
//! database page at a time so that an export of any size stays in bounded
//! memory.

use axum::body::Body;
use rowpipe_core::store::StoreError;

/// Rows per database page of an export. A page shorter than this is the last.
pub const PAGE: i64 = 1000;

/// Quote a CSV field when it needs it (RFC 4180).
pub fn csv_field(s: &str, out: &mut String) {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// A CSV body streamed one database page at a time. `page(after)` returns up
/// to [`PAGE`] rows after the given row number, each with its row number and
/// its other CSV fields; the body is `header` then one line per row.
pub fn paged_csv<F, Fut>(header: &'static str, page: F) -> Body
where
    F: Fn(i64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<(i64, Vec<String>)>, StoreError>> + Send,
{
    let page = std::sync::Arc::new(page);
    let stream = futures::stream::unfold(Some(0i64), move |after| {
        let page = page.clone();
        async move {
            let after = after?;
            let mut out = String::new();
            if after == 0 {
                out.push_str(header);
                out.push('\n');
            }
            match page(after).await {
                Ok(rows) => {
                    let next = if rows.len() < PAGE as usize {
                        None
                    } else {
                        rows.last().map(|r| r.0)
                    };
                    for (row_number, fields) in rows {
                        out.push_str(&row_number.to_string());
                        for f in fields {
                            out.push(',');
                            csv_field(&f, &mut out);
                        }
                        out.push('\n');
                    }
                    Some((Ok::<_, std::io::Error>(out), next))
                }
                Err(e) => Some((Err(std::io::Error::other(e.to_string())), None)),
            }
        }
    });
    Body::from_stream(stream)
}
