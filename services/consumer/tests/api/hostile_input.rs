//! Malformed and hostile files end to end, on each database: nothing is
//! silently lost, nothing reaches a database it cannot store, and the
//! upload ends in a final state with every row counted.

use std::time::Duration;

use rowpipe_testkit::{
    Backend, assert_every_row_counted_once, file_with_an_unclosed_quote, spawn_app,
};
use serde_json::Value;

use crate::CONSUMER_BIN;

async fn upload_id(resp: reqwest::Response) -> String {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.expect("json");
    assert_eq!(status, 202, "{body}");
    body["upload_id"].as_str().expect("upload id").to_string()
}

async fn twenty_thousand_rows_after_an_unclosed_quote_are_all_counted(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut consumer = app.spawn_consumer(CONSUMER_BIN, &[]);
    let id = upload_id(app.upload_csv(file_with_an_unclosed_quote(20_002, 2)).await).await;
    let status = app.wait_completed(&id, Duration::from_secs(180)).await;
    let c = &status["counts"];
    assert_eq!(c["read"], 20_002, "{status}");
    assert_eq!(c["inserted"], 20_001, "{status}");
    assert_eq!(c["rejected"], 1, "{status}");
    assert_eq!(
        c["rejected_by_reason"],
        serde_json::json!({"unterminated_quote": 1}),
        "{status}"
    );
    assert_every_row_counted_once(&status, 20_002);
    let rejects = app.get_text(&format!("/v1/uploads/{id}/rejects")).await;
    assert!(
        rejects
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("2,unterminated_quote,")),
        "{rejects}"
    );
    assert_eq!(app.count("contacts").await, 20_001);
    // The list shows the same breakdown as the status.
    let list: Value = serde_json::from_str(&app.get_text("/v1/uploads").await).expect("json");
    assert_eq!(
        list["uploads"][0]["counts"]["rejected_by_reason"],
        serde_json::json!({"unterminated_quote": 1}),
        "{list}"
    );
    app.cleanup_with(std::slice::from_mut(&mut consumer)).await;
}

rowpipe_testkit::on_databases!(twenty_thousand_rows_after_an_unclosed_quote_are_all_counted: Sqlite, Postgres, MySql);

async fn control_characters_are_stored_and_nul_is_rejected_with_a_reason(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut consumer = app.spawn_consumer(CONSUMER_BIN, &[]);
    let file = b"name,email,note\n\
        Bell\x07 Tab\tEnd,bell@example.com,esc\x1b[31m red\n\
        Nul\0Name,nul@example.com,x\n\
        Plain,plain@example.com,nul\0note\n\
        Del\x7f,del@example.com,\x01\x02\n"
        .to_vec();
    let id = upload_id(app.upload_csv(file).await).await;
    let status = app.wait_completed(&id, Duration::from_secs(60)).await;
    assert_every_row_counted_once(&status, 4);
    assert_eq!(status["counts"]["inserted"], 2, "{status}");
    assert_eq!(
        status["counts"]["rejected_by_reason"],
        serde_json::json!({"bad_encoding": 2}),
        "{status}"
    );
    // The name is cleaned of control characters (the name policy); the
    // rows are stored, on every database.
    let names: Vec<Option<String>> = app.contacts_dump().await.into_iter().map(|r| r.2).collect();
    assert_eq!(
        names,
        vec![Some("Bell Tab End".to_string()), Some("Del".to_string())]
    );
    let rejects = app.get_text(&format!("/v1/uploads/{id}/rejects")).await;
    assert!(rejects.contains("NUL"), "{rejects}");
    app.cleanup_with(std::slice::from_mut(&mut consumer)).await;
}

rowpipe_testkit::on_databases!(control_characters_are_stored_and_nul_is_rejected_with_a_reason: Sqlite, Postgres, MySql);

async fn exported_cells_that_would_run_as_formulas_are_neutralised(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut consumer = app.spawn_consumer(CONSUMER_BIN, &[]);
    let file = b"name,email\n\
        A,+sum@example.com\n\
        B,+sum@example.com\n\
        C,=cmd|calc!A0@example.com\n\
        D,=cmd|calc!A0@example.com\n\
        =HYPERLINK(\"x\"),not-an-email\n\
        @SUM(A1),\n"
        .to_vec();
    let id = upload_id(app.upload_csv(file).await).await;
    let status = app.wait_completed(&id, Duration::from_secs(60)).await;
    assert_every_row_counted_once(&status, 6);
    let duplicates = app.get_text(&format!("/v1/uploads/{id}/duplicates")).await;
    assert_eq!(
        duplicates,
        "row_number,email\n2,'+sum@example.com\n4,'=cmd|calc!a0@example.com\n"
    );
    let rejects = app.get_text(&format!("/v1/uploads/{id}/rejects")).await;
    for line in rejects.lines().skip(1) {
        for cell in line.split(',') {
            assert!(
                !cell.starts_with(['=', '+', '-', '@']),
                "a cell of the rejects export would run as a formula: {line}"
            );
        }
    }
    app.cleanup_with(std::slice::from_mut(&mut consumer)).await;
}

rowpipe_testkit::on_databases!(exported_cells_that_would_run_as_formulas_are_neutralised: Sqlite, Postgres, MySql);

async fn gzip(bytes: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    async_compression::tokio::bufread::GzipEncoder::new(bytes)
        .read_to_end(&mut out)
        .await
        .expect("gzip");
    out
}

async fn a_gzip_body_and_a_csv_gz_part_give_the_table_of_the_plain_file(backend: Backend) {
    let mut plain = String::from("name,email\n");
    for r in 0..3_000 {
        // Every tenth address repeats an earlier one: duplicates count too.
        let n = if r % 10 == 9 { r - 5 } else { r };
        plain.push_str(&format!("Person {r},p{n}@example.com\n"));
    }
    let plain = plain.into_bytes();
    let compressed = gzip(&plain).await;
    let mut tables = Vec::new();
    for how in ["plain", "Content-Encoding: gzip", ".csv.gz part"] {
        let app = spawn_app(backend).await;
        let mut consumer = app.spawn_consumer(CONSUMER_BIN, &[]);
        let request = app
            .client
            .post(format!("{}/v1/uploads", app.address))
            .bearer_auth(rowpipe_testkit::TOKEN);
        let request = match how {
            "plain" => request
                .header("content-type", "text/csv")
                .body(plain.clone()),
            "Content-Encoding: gzip" => request
                .header("content-type", "text/csv")
                .header("content-encoding", "gzip")
                .body(compressed.clone()),
            _ => request.multipart(
                reqwest::multipart::Form::new().part(
                    "file",
                    reqwest::multipart::Part::bytes(compressed.clone())
                        .file_name("people.csv.gz")
                        .mime_str("application/gzip")
                        .expect("mime"),
                ),
            ),
        };
        let id = upload_id(request.send().await.expect("POST")).await;
        let status = app.wait_completed(&id, Duration::from_secs(120)).await;
        assert_every_row_counted_once(&status, 3_000);
        let table: Vec<(String, Option<String>, i64)> = app
            .contacts_dump()
            .await
            .into_iter()
            .map(|(email, _, name, _, row)| (email, name, row))
            .collect();
        tables.push((how, status["counts"].clone(), table));
        app.cleanup_with(std::slice::from_mut(&mut consumer)).await;
    }
    let (_, counts, table) = &tables[0];
    assert_eq!(table.len(), 2_700);
    for (how, c, t) in &tables[1..] {
        assert_eq!(c, counts, "{how}");
        assert_eq!(t, table, "{how}: the table differs from the plain file's");
    }
}

rowpipe_testkit::on_databases!(a_gzip_body_and_a_csv_gz_part_give_the_table_of_the_plain_file: Sqlite, Postgres, MySql);
