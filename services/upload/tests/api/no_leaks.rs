//! No input gets a 500 or a look inside the service: text a client
//! controls is stored fit for every database, a database outage is a 503
//! that names no host, driver or path, and every upload record ends in a
//! final state.

use rowpipe_core::store::UploadStatus;
use rowpipe_testkit::{Backend, TOKEN, ToggleProxy, host_port, spawn_app, via_port};
use serde_json::Value;

async fn control_characters_in_what_the_client_names_are_stored_fit_for_the_database(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let long_name = format!("a\u{0}b\u{1}c{}", "x".repeat(3_000));
    let resp = app
        .client
        .post(format!("{}/v1/uploads", app.address))
        .bearer_auth(TOKEN)
        .query(&[("filename", long_name.as_str())])
        .header("content-type", "text/csv")
        .body("email\na@example.com\n")
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 202);
    let v: Value = resp.json().await.expect("json");
    let stored = v["file_name"].as_str().expect("file name");
    assert!(stored.starts_with("a b c"), "{}", &stored[..20]);
    assert!(stored.chars().count() <= 256, "{}", stored.len());

    // A column named with a NUL: the file is refused (422) and the record,
    // whose error names the column, is stored failed.
    let resp = app
        .client
        .post(format!("{}/v1/uploads", app.address))
        .bearer_auth(TOKEN)
        .query(&[("email_column", "no\u{0}such")])
        .header("content-type", "text/csv")
        .body("email\na@example.com\n")
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 422);

    // A multipart file name with control characters: refused as a
    // malformed part header (400) or stored cleaned, never a 5xx.
    let resp = app
        .upload_part(
            "tab\there\u{7f}.csv",
            "text/csv",
            b"email\nb@example.com\n".to_vec(),
        )
        .await;
    assert!(
        matches!(resp.status().as_u16(), 202 | 400),
        "{}",
        resp.status()
    );
    for record in app.store.list_uploads(10).await.expect("list") {
        assert!(
            matches!(
                record.status,
                UploadStatus::Failed | UploadStatus::Queued | UploadStatus::Processing
            ),
            "{record:?}"
        );
    }
    app.cleanup().await;
}

rowpipe_testkit::on_databases!(control_characters_in_what_the_client_names_are_stored_fit_for_the_database: Sqlite, Postgres, MySql);

async fn a_database_outage_is_a_503_that_names_no_host_or_driver(backend: Backend) {
    let app = spawn_app(backend).await;
    let proxy = ToggleProxy::start(host_port(&app.db.url))
        .await
        .expect("proxy");
    let url = via_port(&app.db.url, proxy.port);
    let process = app
        .spawn_upload_process(&[
            ("DATABASE_URL", url.as_str()),
            ("ROWPIPE_DB_MAX_CONNECTIONS", "2"),
        ])
        .await;
    proxy.down();
    let resp = app
        .client
        .post(format!("{}/v1/uploads", process.address))
        .bearer_auth(TOKEN)
        .header("content-type", "text/csv")
        .body("email\na@example.com\n")
        .timeout(std::time::Duration::from_secs(60))
        .send()
        .await
        .expect("an answer");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    assert_eq!(status, 503, "{text}");
    for leak in [
        "127.0.0.1",
        &proxy.port.to_string(),
        "sqlx",
        "pool",
        "os error",
        "/",
    ] {
        assert!(!text.contains(leak), "the answer shows {leak:?}: {text}");
    }
    proxy.up();
    app.cleanup().await;
}

rowpipe_testkit::on_databases!(a_database_outage_is_a_503_that_names_no_host_or_driver: Postgres, MySql);
