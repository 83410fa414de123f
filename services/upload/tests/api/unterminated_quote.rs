//! A quote that never closes costs its own row only: the row where it
//! opened is rejected as `unterminated_quote` and every later row is read,
//! whatever the chunking of the body.

use rowpipe_core::stream::EntryBody;
use rowpipe_testkit::file_with_an_unclosed_quote;
use rowpipe_upload::intake::{IntakeError, IntakeOptions, IntakeRow, Limits, read_all};

fn outcome(rows: &[IntakeRow]) -> (Vec<i64>, Vec<(i64, &'static str)>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for r in rows {
        match &r.body {
            EntryBody::Row(_) => good.push(r.row_number),
            EntryBody::Rejected { rejection, .. } => {
                bad.push((r.row_number, rejection.reason.code()))
            }
        }
    }
    (good, bad)
}

#[test]
fn an_unclosed_quote_in_row_2_of_20_002_rejects_row_2_and_every_other_row_is_read() {
    let file = file_with_an_unclosed_quote(20_002, 2);
    for chunk in [64 * 1024, 4096, 7] {
        let (rows, intake) = read_all(&file, IntakeOptions::default(), chunk).expect("rows");
        let (good, bad) = outcome(&rows);
        assert_eq!(intake.rows_read(), 20_002, "chunk {chunk}");
        assert_eq!(bad, vec![(2, "unterminated_quote")], "chunk {chunk}");
        let want: Vec<i64> = (1..=20_002).filter(|&n| n != 2).collect();
        assert_eq!(good, want, "chunk {chunk}");
    }
}

#[test]
fn the_rows_after_the_quote_keep_their_fields() {
    let file = file_with_an_unclosed_quote(3_000, 5);
    let (rows, _) = read_all(&file, IntakeOptions::default(), 1000).expect("rows");
    let row6 = rows.iter().find(|r| r.row_number == 6).expect("row 6");
    match &row6.body {
        EntryBody::Row(f) => {
            assert_eq!(f.email.as_deref(), Some("p6@example.com"));
            assert_eq!(f.name.as_deref(), Some("Person 6"));
        }
        other => panic!("row 6 is {other:?}"),
    }
    let row5 = rows.iter().find(|r| r.row_number == 5).expect("row 5");
    match &row5.body {
        EntryBody::Rejected { rejection, raw } => {
            assert!(
                rejection.message.contains("\"name\""),
                "{}",
                rejection.message
            );
            assert!(raw[0].starts_with("Unclosed 5"), "{raw:?}");
        }
        other => panic!("row 5 is {other:?}"),
    }
}

#[test]
fn a_quote_open_at_the_end_of_the_file_rejects_its_row_and_reads_the_lines_after_it() {
    let file = b"name,email\nA,a@example.com\n\"B,b@example.com\nC,c@example.com\n";
    for chunk in [1, 5, 100] {
        let (rows, _) = read_all(file, IntakeOptions::default(), chunk).expect("rows");
        assert_eq!(
            outcome(&rows),
            (vec![1, 3], vec![(2, "unterminated_quote")]),
            "chunk {chunk}"
        );
    }
}

#[test]
fn a_closed_quoted_field_spanning_lines_within_the_limit_is_one_field() {
    let options = IntakeOptions {
        limits: Limits {
            max_field_bytes: 64,
            ..Limits::DEFAULT
        },
        ..IntakeOptions::default()
    };
    let file = b"name,email\n\"Ann\nLee\",a@example.com\nB,b@example.com\n";
    let (rows, _) = read_all(file, options.clone(), 3).expect("rows");
    assert_eq!(outcome(&rows), (vec![1, 2], vec![]));
    // The same field past the limit is given up where it opened.
    let long = format!(
        "name,email\n\"Ann\n{}\",a@example.com\nB,b@example.com\n",
        "x".repeat(100)
    );
    let (rows, _) = read_all(long.as_bytes(), options, 3).expect("rows");
    let (_, bad) = outcome(&rows);
    assert_eq!(bad.first(), Some(&(1, "unterminated_quote")));
    assert!(
        rows.iter().any(
            |r| matches!(&r.body, EntryBody::Row(f) if f.email.as_deref() == Some("b@example.com"))
        ),
        "the row after the long field is read"
    );
}

#[test]
fn an_unclosed_quote_in_the_header_refuses_the_file() {
    let err = read_all(
        b"\"name,email\nA,a@example.com\n",
        IntakeOptions::default(),
        4,
    )
    .err()
    .expect("an intake error");
    assert_eq!(err, IntakeError::UnterminatedQuoteInHeader);
}

#[test]
fn nul_in_a_field_rejects_its_row_and_nul_in_the_header_refuses_the_file() {
    let (rows, _) = read_all(
        b"name,email\nA\0B,a@example.com\nC\x01\x1f,c@example.com\n",
        IntakeOptions::default(),
        3,
    )
    .expect("rows");
    assert_eq!(outcome(&rows), (vec![2], vec![(1, "bad_encoding")]));
    let err = read_all(
        b"na\0me,email\nA,a@example.com\n",
        IntakeOptions::default(),
        4,
    )
    .err()
    .expect("an intake error");
    assert_eq!(err, IntakeError::NulInHeader);
}
