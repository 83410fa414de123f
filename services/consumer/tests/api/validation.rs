//! One file mixing every reason a row can be rejected: the counts add up and
//! the rejects export lists exactly the rejected rows with their reasons.

use std::time::Duration;

use rowpipe_testkit::{Backend, spawn_app};

use crate::CONSUMER_BIN;

fn mixed_file() -> (Vec<u8>, Vec<(i64, &'static str)>) {
    let mut f: Vec<u8> = b"name,email,city\n".to_vec();
    let mut line = |s: &[u8]| {
        f.extend_from_slice(s);
        f.push(b'\n');
    };
    line(b"Ann,ann@example.com,Oslo"); // 1 inserted
    line(b"Ann Again,ANN@Example.com,Oslo"); // 2 duplicate
    line(b"No Mail,,Oslo"); // 3
    line(b"Syntax,not-an-email,Oslo"); // 4
    line(b"Multi,a@b@example.com,Oslo"); // 5
    line(b"Space,jo hn@example.com,Oslo"); // 6
    line(b"Domain,user@localhost,Oslo"); // 7
    line(b"Ip,user@[192.0.2.1],Oslo"); // 8
    line(b"Quoted,\"\"\"john\"\"@example.com\",Oslo"); // 9
    line(format!("Long,{}@example.com,Oslo", "a".repeat(65)).as_bytes()); // 10
    line(b"Ragged,r@example.com"); // 11
    line(format!("{},big@example.com,Oslo", "x".repeat(70_000)).as_bytes()); // 12
    line(b"Bad \xff byte,bad@example.com,Oslo"); // 13
    line(format!("Wide,w@example.com,Oslo{}", ",x".repeat(600)).as_bytes()); // 14
    line("Bücher,user@bücher.de,Köln".as_bytes()); // 15 inserted
    line(b"Puny,user@xn--bcher-kva.de,Koeln"); // 16 duplicate
    line(format!("{},longname@example.com,Oslo", "n".repeat(600)).as_bytes()); // 17
    line("Zoë,zoe@example.com,Zürich".as_bytes()); // 18 inserted
    line(format!("{},huge@example.com,Oslo", "h".repeat(1_100_000)).as_bytes()); // 19
    line(b"Comma,jane@gmail,com"); // 20 ragged (3 fields? no: name,email,city = 3) -> invalid_domain
    let expected = vec![
        (3, "missing_email"),
        (4, "invalid_syntax"),
        (5, "multiple_at"),
        (6, "whitespace_inside"),
        (7, "invalid_domain"),
        (8, "ip_literal_domain"),
        (9, "quoted_local_part"),
        (10, "too_long"),
        (11, "ragged_row"),
        (12, "field_too_long"),
        (13, "bad_encoding"),
        (14, "too_many_columns"),
        (17, "field_too_long"),
        (19, "row_too_long"),
        (20, "invalid_domain"),
    ];
    (f, expected)
}

async fn a_file_with_every_reason_is_fully_accounted_for(backend: Backend) {
    let app = spawn_app(backend).await;
    let (csv, expected) = mixed_file();
    let mut consumer = app.spawn_consumer(CONSUMER_BIN, &[]);
    let resp = app.upload_csv_with("?encoding=utf-8", csv).await;
    assert_eq!(resp.status().as_u16(), 202);
    let id = resp.json::<serde_json::Value>().await.expect("json")["upload_id"]
        .as_str()
        .expect("id")
        .to_string();
    let status = app.wait_completed(&id, Duration::from_secs(120)).await;
    let c = &status["counts"];
    assert_eq!(c["read"], 20, "{status}");
    assert_eq!(c["inserted"], 3, "{status}");
    assert_eq!(c["duplicates"], 2, "{status}");
    assert_eq!(
        c["rejected"].as_u64(),
        Some(expected.len() as u64),
        "{status}"
    );

    let csv = app.get_text(&format!("/v1/uploads/{id}/rejects")).await;
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("row_number,reason,message,fields,suggestion")
    );
    let got: Vec<(i64, String)> = lines
        .map(|l| {
            let mut parts = l.splitn(3, ',');
            let n = parts
                .next()
                .and_then(|n| n.parse().ok())
                .expect("row number");
            (n, parts.next().unwrap_or("").to_string())
        })
        .collect();
    let want: Vec<(i64, String)> = expected.iter().map(|(n, r)| (*n, r.to_string())).collect();
    assert_eq!(got, want);
    assert!(
        csv.contains("expected 3 fields, found 2"),
        "ragged row message"
    );
    assert!(csv.contains("Oslo"), "original fields are exported");

    let dups = app.get_text(&format!("/v1/uploads/{id}/duplicates")).await;
    assert_eq!(
        dups,
        "row_number,email\n2,ann@example.com\n16,user@xn--bcher-kva.de\n"
    );
    let dump = app.contacts_dump().await;
    let emails: Vec<(&str, &str, Option<&str>)> = dump
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str(), r.2.as_deref()))
        .collect();
    assert_eq!(
        emails,
        vec![
            ("ann@example.com", "ann@example.com", Some("Ann")),
            ("user@xn--bcher-kva.de", "user@bücher.de", Some("Bücher")),
            ("zoe@example.com", "zoe@example.com", Some("Zoë")),
        ]
    );
    app.cleanup_with(std::slice::from_mut(&mut consumer)).await;
}

rowpipe_testkit::on_databases!(a_file_with_every_reason_is_fully_accounted_for: Sqlite, Postgres, MySql);
