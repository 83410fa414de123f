//! Guessing the delimiter from the first lines of a file.
//!
//! For each candidate (`,` `;` tab `|`) count its occurrences outside quotes
//! on each of the first lines. The best candidate appears on the header line
//! and the same number of times on the following lines; ties go to the
//! earlier candidate, so a one-column file is read as comma-separated.

pub const CANDIDATES: [u8; 4] = [b',', b';', b'\t', b'|'];

fn counts_per_line(sample: &str, delimiter: u8, max_lines: usize) -> Vec<usize> {
    let mut lines = Vec::new();
    let mut count = 0;
    let mut in_quotes = false;
    for b in sample.bytes() {
        match b {
            b'"' => in_quotes = !in_quotes,
            b'\n' | b'\r' if !in_quotes => {
                if count > 0 || !lines.is_empty() {
                    lines.push(count);
                }
                count = 0;
                if lines.len() >= max_lines {
                    break;
                }
            }
            _ if b == delimiter && !in_quotes => count += 1,
            _ => {}
        }
    }
    if count > 0 && lines.len() < max_lines {
        lines.push(count);
    }
    lines
}

/// The most likely delimiter of `sample` (the start of the decoded file).
pub fn detect_delimiter(sample: &str) -> u8 {
    let mut best = (b',', 0usize, 0usize);
    for &d in &CANDIDATES {
        let lines = counts_per_line(sample, d, 20);
        let Some(&header) = lines.first() else {
            continue;
        };
        if header == 0 {
            continue;
        }
        let consistent = lines.iter().filter(|&&c| c == header).count();
        // Prefer consistency across lines, then more columns.
        if (consistent, header) > (best.1, best.2) {
            best = (d, consistent, header);
        }
    }
    best.0
}

/// A printable name for a delimiter (`\t` for tab).
pub fn delimiter_name(d: u8) -> String {
    match d {
        b'\t' => "\\t".into(),
        other => (other as char).to_string(),
    }
}

/// Parse a `?delimiter=` value: one character, or `tab`/`\t`.
pub fn parse_delimiter(s: &str) -> Option<u8> {
    match s {
        "tab" | "\\t" | "\t" | "TAB" => Some(b'\t'),
        "comma" => Some(b','),
        "semicolon" => Some(b';'),
        "pipe" => Some(b'|'),
        s if s.len() == 1 && s.is_ascii() => s.bytes().next(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_delimiters_are_recognised() {
        assert_eq!(detect_delimiter("name;email\nA;a@x.de\n"), b';');
        assert_eq!(detect_delimiter("name\temail\nA\ta@x.de\n"), b'\t');
        assert_eq!(detect_delimiter("name|email\nA|a@x.de\n"), b'|');
        assert_eq!(detect_delimiter("name,email\n\"Doe; John\",a@x.de\n"), b',');
        assert_eq!(detect_delimiter("email\na@x.de\n"), b',');
    }
}
