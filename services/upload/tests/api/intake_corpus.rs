//! A corpus of tricky CSV files, each with the exact rows, rejects and
//! reasons it must produce. Every file is also fed in 1-byte and 7-byte
//! chunks, so chunk boundaries cannot change the result.

use rowpipe_core::row::RowFields;
use rowpipe_core::stream::EntryBody;
use rowpipe_upload::intake::{IntakeError, IntakeOptions, IntakeRow, read_all};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/csv/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Read a fixture in several chunkings; all must agree.
fn read(name: &str) -> (Vec<IntakeRow>, Option<&'static str>, Option<u8>) {
    let bytes = fixture(name);
    let (rows, intake) = read_all(&bytes, IntakeOptions::default(), 64 * 1024)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    for chunk in [1, 7] {
        let (again, _) = read_all(&bytes, IntakeOptions::default(), chunk).expect("rechunked");
        assert_eq!(again, rows, "{name} read in {chunk}-byte chunks differs");
    }
    (rows, intake.encoding(), intake.delimiter())
}

fn row(email: &str, name: Option<&str>) -> RowFields {
    RowFields {
        email: Some(email.into()),
        name: name.map(str::to_string),
        attributes: vec![],
    }
}

fn fields(rows: &[IntakeRow]) -> Vec<(i64, RowFields)> {
    rows.iter()
        .filter_map(|r| match &r.body {
            EntryBody::Row(f) => Some((r.row_number, f.clone())),
            _ => None,
        })
        .collect()
}

fn rejects(rows: &[IntakeRow]) -> Vec<(i64, &'static str, String)> {
    rows.iter()
        .filter_map(|r| match &r.body {
            EntryBody::Rejected { rejection, .. } => Some((
                r.row_number,
                rejection.reason.code(),
                rejection.message.clone(),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn quoted_newlines_and_commas_stay_inside_their_field() {
    let (rows, enc, delim) = read("quoted_newlines.csv");
    assert_eq!(enc, Some("UTF-8"));
    assert_eq!(delim, Some(b','));
    assert_eq!(
        fields(&rows),
        vec![
            (1, row("ann@example.com", Some("Ann\r\nLee"))),
            (2, row("bo@example.com", Some("Lee, Bo"))),
        ]
    );
}

#[test]
fn doubled_quotes_are_unescaped() {
    let (rows, ..) = read("escaped_quotes.csv");
    assert_eq!(
        fields(&rows),
        vec![
            (1, row("bob@example.com", Some("Bob \"The Builder\""))),
            (2, row("q@example.com", Some("\"Quoted\""))),
        ]
    );
}

#[test]
fn a_utf8_bom_does_not_leak_into_the_first_header() {
    let (rows, enc, _) = read("bom_utf8.csv");
    assert_eq!(enc, Some("UTF-8"));
    assert_eq!(fields(&rows), vec![(1, row("z@example.com", Some("Zoë")))]);
}

#[test]
fn utf16_files_with_a_bom_are_decoded() {
    let (rows, enc, _) = read("utf16le_bom.csv");
    assert_eq!(enc, Some("UTF-16LE"));
    assert_eq!(
        fields(&rows),
        vec![
            (1, row("m@example.com", Some("Müller"))),
            (2, row("z@example.com", Some("Zoë"))),
        ]
    );
    let (rows, enc, delim) = read("utf16be_bom.csv");
    assert_eq!(enc, Some("UTF-16BE"));
    assert_eq!(delim, Some(b'\t'));
    assert_eq!(fields(&rows), vec![(1, row("asa@example.se", Some("Åsa")))]);
}

#[test]
fn windows_1252_with_semicolons_is_detected_and_decoded() {
    let (rows, enc, delim) = read("windows1252_semicolon.csv");
    assert_eq!(enc, Some("windows-1252"));
    assert_eq!(delim, Some(b';'));
    assert_eq!(
        fields(&rows),
        vec![
            (1, row("m@example.de", Some("Müller"))),
            (2, row("z@example.fr", Some("Zoë"))),
            (3, row("f@example.fr", Some("François"))),
        ]
    );
}

#[test]
fn tab_separated_files_keep_other_columns_as_attributes() {
    let (rows, _, delim) = read("tab_delimited.tsv");
    assert_eq!(delim, Some(b'\t'));
    let mut expected = row("ann@example.com", Some("Ann Lee"));
    expected.attributes = vec![("city".into(), "Oslo".into())];
    assert_eq!(fields(&rows), vec![(1, expected)]);
}

#[test]
fn first_and_last_name_columns_are_joined() {
    let (rows, _, delim) = read("pipe_first_last.csv");
    assert_eq!(delim, Some(b'|'));
    let mut ada = row("ada@example.com", Some("Ada Lovelace"));
    ada.attributes = vec![("Company".into(), "Analytical".into())];
    let mut solo = row("solo@example.com", Some("Solo"));
    solo.attributes = vec![("Company".into(), String::new())];
    assert_eq!(fields(&rows), vec![(1, ada), (2, solo)]);
}

#[test]
fn ragged_rows_are_rejected_with_their_row_number_and_nothing_else_is_lost() {
    let (rows, ..) = read("ragged.csv");
    assert_eq!(
        fields(&rows),
        vec![
            (1, row("a@example.com", Some("A"))),
            (4, row("d@example.com", Some("D"))),
        ]
    );
    assert_eq!(
        rejects(&rows),
        vec![
            (2, "ragged_row", "expected 2 fields, found 1".to_string()),
            (3, "ragged_row", "expected 2 fields, found 3".to_string()),
        ]
    );
    let raw = rows.iter().find_map(|r| match &r.body {
        EntryBody::Rejected { raw, .. } if r.row_number == 3 => Some(raw.clone()),
        _ => None,
    });
    assert_eq!(
        raw,
        Some(vec!["C".into(), "c@example.com".into(), "extra".into()])
    );
}

#[test]
fn an_empty_file_is_refused_and_a_header_only_file_has_no_rows() {
    let err = read_all(&fixture("empty.csv"), IntakeOptions::default(), 64)
        .err()
        .expect("an intake error");
    assert_eq!(err, IntakeError::Empty);
    let (rows, ..) = read("header_only.csv");
    assert!(rows.is_empty());
}

#[test]
fn blank_lines_and_cr_line_ends_are_handled() {
    let (rows, ..) = read("blank_lines_and_cr.csv");
    assert_eq!(
        fields(&rows),
        vec![
            (1, row("a@example.com", Some("A"))),
            (2, row("b@example.com", Some("B"))),
        ]
    );
}

#[test]
fn a_200_kb_field_rejects_its_row_only() {
    let (rows, ..) = read("big_field.csv");
    assert_eq!(
        fields(&rows),
        vec![(2, row("small@example.com", Some("Small")))]
    );
    let r = rejects(&rows);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].0, r[0].1), (1, "field_too_long"));
    assert!(r[0].2.contains("200000 bytes"), "{}", r[0].2);
}

#[test]
fn bytes_invalid_in_the_detected_encoding_reject_their_row() {
    let (rows, enc, _) = read("bad_utf8_row.csv");
    assert_eq!(enc, Some("UTF-8"));
    assert_eq!(fields(&rows).len(), 3001);
    assert_eq!(
        rejects(&rows)
            .iter()
            .map(|r| (r.0, r.1))
            .collect::<Vec<_>>(),
        vec![(3001, "bad_encoding")]
    );
}

#[test]
fn surrounding_whitespace_is_trimmed_from_headers_and_fields() {
    let (rows, ..) = read("whitespace_fields.csv");
    assert_eq!(
        fields(&rows),
        vec![(1, row("ann@example.com", Some("Ann")))]
    );
}

#[test]
fn binary_garbage_and_files_without_an_email_column_are_refused() {
    let err = read_all(
        &fixture("binary_garbage.bin"),
        IntakeOptions::default(),
        512,
    )
    .err()
    .expect("an intake error");
    assert!(
        matches!(
            err,
            IntakeError::Columns(_)
                | IntakeError::TooManyColumns { .. }
                | IntakeError::NulInHeader
                | IntakeError::UnterminatedQuoteInHeader
        ),
        "{err:?}"
    );
    let err = read_all(
        &fixture("no_email_column.csv"),
        IntakeOptions::default(),
        512,
    )
    .err()
    .expect("an intake error");
    assert_eq!(
        err.to_string(),
        "no email column found; the file's columns are: id, phone"
    );
}

#[test]
fn a_file_without_a_header_uses_positional_columns() {
    let options = IntakeOptions {
        has_header: false,
        ..IntakeOptions::default()
    };
    let (rows, _) =
        read_all(b"Ann,ann@example.com\nBo,bo@example.com\n", options, 3).expect("rows");
    let emails: Vec<_> = fields(&rows)
        .into_iter()
        .map(|(n, f)| (n, f.email))
        .collect();
    assert_eq!(
        emails,
        vec![
            (1, Some("ann@example.com".into())),
            (2, Some("bo@example.com".into()))
        ]
    );
}
