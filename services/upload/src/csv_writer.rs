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

/// Write one CSV cell: neutralised against formula injection, then quoted
/// when it needs it (RFC 4180).
///
/// The exports are opened in spreadsheets, and their cells hold text a third
/// party wrote (`=cmd|calc!A0@example.com` is a valid address). A cell that
/// begins with `=`, `+`, `-`, `@`, tab or CR would be run as a formula, so it
/// gets a leading `'` (the OWASP rule), which spreadsheets show as text.
pub fn csv_field(s: &str, out: &mut String) {
    let neutralised;
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        neutralised = format!("'{s}");
        neutralised.as_str()
    } else {
        s
    };
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

#[cfg(test)]
mod tests {
    use super::csv_field;

    fn cell(s: &str) -> String {
        let mut out = String::new();
        csv_field(s, &mut out);
        out
    }

    #[test]
    fn cells_a_spreadsheet_would_run_as_formulas_are_neutralised() {
        assert_eq!(cell("+sum@example.com"), "'+sum@example.com");
        assert_eq!(
            cell("=cmd|calc!A0@example.com"),
            "'=cmd|calc!A0@example.com"
        );
        assert_eq!(cell("-1+2"), "'-1+2");
        assert_eq!(cell("@SUM(A1)"), "'@SUM(A1)");
        assert_eq!(cell("\t=1"), "'\t=1");
        assert_eq!(cell("\r=1"), "\"'\r=1\"");
        assert_eq!(cell("=1,2"), "\"'=1,2\"");
        assert_eq!(cell("a=b@example.com"), "a=b@example.com");
        assert_eq!(cell("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
