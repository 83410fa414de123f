//! The HTTP API's error contract and its OpenAPI document.

use rowpipe_testkit::{AppOptions, Backend, TOKEN, spawn_app, spawn_app_with};
use serde_json::Value;

#[tokio::test]
async fn requests_without_a_valid_token_get_401_but_health_stays_open() {
    let app = spawn_app(Backend::Sqlite).await;
    let resp = app
        .client
        .post(format!("{}/v1/uploads", app.address))
        .header("content-type", "text/csv")
        .body("email\na@example.com\n")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");
    let resp = app
        .client
        .get(format!("{}/v1/uploads", app.address))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    for path in ["/healthz", "/metrics", "/openapi.json"] {
        let resp = app
            .client
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn non_csv_bodies_get_415() {
    let app = spawn_app(Backend::Sqlite).await;
    let resp = app
        .client
        .post(format!("{}/v1/uploads", app.address))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 415);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unsupported_media_type");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("text/csv")
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_file_without_an_email_column_gets_422_naming_its_columns() {
    let app = spawn_app(Backend::Sqlite).await;
    let resp = app.upload_csv(b"id,phone\n1,555\n".to_vec()).await;
    assert_eq!(resp.status().as_u16(), 422);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unprocessable_file");
    assert_eq!(body["error"]["columns"], serde_json::json!(["id", "phone"]));
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("id, phone")
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_the_upload_is_marked_failed() {
    let app = spawn_app_with(
        Backend::Sqlite,
        AppOptions {
            max_body_bytes: 64 * 1024,
            ..AppOptions::default()
        },
    )
    .await;
    let mut csv = String::from("name,email\n");
    for i in 0..10_000 {
        csv.push_str(&format!("Person {i},p{i}@example.com\n"));
    }
    // Streamed without a length, so the limit is hit mid-body.
    let body = reqwest::Body::wrap_stream(futures::stream::iter(
        csv.into_bytes()
            .chunks(8 * 1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    ));
    let resp = app
        .client
        .post(format!("{}/v1/uploads", app.address))
        .bearer_auth(TOKEN)
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 413);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "payload_too_large");
    let id = body["error"]["upload_id"]
        .as_str()
        .expect("upload id")
        .to_string();
    let rows_read = body["error"]["rows_read"].as_i64().expect("rows read");
    assert!(rows_read > 0 && rows_read < 10_000, "{body}");
    let status = app.status(&id).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["counts"]["read"].as_i64(), Some(rows_read));
    app.cleanup().await;
}

#[tokio::test]
async fn multipart_uploads_are_accepted_and_replays_return_the_first_upload() {
    let app = spawn_app(Backend::Sqlite).await;
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"email,name\na@example.com,A\n".to_vec())
            .file_name("people.csv")
            .mime_str("text/csv")
            .expect("mime"),
    );
    let resp = app
        .client
        .post(format!("{}/v1/uploads", app.address))
        .bearer_auth(TOKEN)
        .header("idempotency-key", "batch-2026-11-28")
        .multipart(form)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 202);
    let first: Value = resp.json().await.expect("json");
    assert_eq!(first["rows_enqueued"], 1);
    assert_eq!(first["file_name"], "people.csv");
    let resp = app
        .client
        .post(format!("{}/v1/uploads", app.address))
        .bearer_auth(TOKEN)
        .header("idempotency-key", "batch-2026-11-28")
        .header("content-type", "text/csv")
        .body("email\nb@example.com\n")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    let replay: Value = resp.json().await.expect("json");
    assert_eq!(replay["upload_id"], first["upload_id"]);
    assert_eq!(replay["replayed"], true);
    app.cleanup().await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_and_status_the_service_uses() {
    let app = spawn_app(Backend::Sqlite).await;
    let doc: Value = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(doc["openapi"], "3.1.0");
    let expected: &[(&str, &str, &[&str])] = &[
        (
            "/v1/uploads",
            "post",
            &[
                "202", "200", "401", "408", "409", "413", "415", "422", "429", "503",
            ],
        ),
        ("/v1/uploads", "get", &["200", "401"]),
        ("/v1/uploads/{id}", "get", &["200", "401", "404"]),
        ("/v1/uploads/{id}/rejects", "get", &["200", "404"]),
        ("/v1/uploads/{id}/duplicates", "get", &["200", "404"]),
        ("/v1/uploads/{id}/unverified", "get", &["200", "404"]),
        ("/healthz", "get", &["200"]),
        ("/readyz", "get", &["200", "503"]),
        ("/metrics", "get", &["200"]),
        ("/openapi.json", "get", &["200"]),
    ];
    for (path, method, codes) in expected {
        let op = &doc["paths"][path][method];
        assert!(
            op.is_object(),
            "{method} {path} missing from the OpenAPI document"
        );
        for code in *codes {
            assert!(
                op["responses"][code].is_object(),
                "{method} {path} lacks {code}"
            );
        }
    }
    let served: std::collections::BTreeSet<&str> = expected.iter().map(|(p, _, _)| *p).collect();
    let documented: std::collections::BTreeSet<&str> = doc["paths"]
        .as_object()
        .map(|p| p.keys().map(String::as_str).collect())
        .unwrap_or_default();
    assert_eq!(
        documented, served,
        "documented paths differ from the routes served"
    );
    // The documented status schema matches what the service returns.
    let id = app.upload_ok(b"email\na@example.com\n".to_vec()).await;
    let status = app.status(&id).await;
    for field in doc["components"]["schemas"]["Upload"]["required"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let f = field.as_str().unwrap_or("");
        assert!(
            !status[f].is_null(),
            "status lacks required field {f}: {status}"
        );
    }
    for field in doc["components"]["schemas"]["Counts"]["required"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let f = field.as_str().unwrap_or("");
        assert!(!status["counts"][f].is_null(), "counts lack {f}: {status}");
    }
    let missing = app
        .client
        .get(format!("{}/v1/uploads/nope", app.address))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status().as_u16(), 404);
    app.cleanup().await;
}

#[tokio::test]
async fn shutdown_interrupts_an_in_flight_upload_cleanly_with_the_row_reached() {
    let app = spawn_app(Backend::Sqlite).await;
    // A client that keeps sending rows slowly and never finishes.
    let chunks = futures::stream::unfold(0u64, |i| async move {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut chunk = if i == 0 {
            "name,email\n".to_string()
        } else {
            String::new()
        };
        for r in i * 100..(i + 1) * 100 {
            chunk.push_str(&format!("P{r},p{r}@example.com\n"));
        }
        Some((Ok::<_, std::io::Error>(chunk), i + 1))
    });
    let request = app
        .client
        .post(format!("{}/v1/uploads", app.address))
        .bearer_auth(TOKEN)
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(chunks))
        .send();
    let shutdown = async {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        app.shut_down();
    };
    let (resp, ()) = tokio::join!(request, shutdown);
    let resp = resp.expect("a response, not a dropped connection");
    assert_eq!(resp.status().as_u16(), 503);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "shutting_down");
    let id = body["error"]["upload_id"]
        .as_str()
        .expect("upload id")
        .to_string();
    let record = app
        .store
        .get_upload(&id)
        .await
        .expect("db")
        .expect("record");
    assert_eq!(
        record.status,
        rowpipe_core::store::UploadStatus::Interrupted
    );
    assert_eq!(body["error"]["resumable"], true);
    assert!(
        record.counts.read > 0,
        "the row reached is recorded: {:?}",
        record.counts
    );
    assert!(record.error.unwrap_or_default().contains("shutting down"));
    app.cleanup().await;
}
