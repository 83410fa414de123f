//! Interrupted uploads and their resumes: what the service's fault leaves
//! (`interrupted`, with the row reached), what a retry with the same
//! `Idempotency-Key` gets (a resume, `409` while the upload is live, a
//! replay once it ended), and the sweep that names uploads of dead
//! instances.

use std::time::{Duration, Instant};

use rowpipe_core::store::{NewUpload, UploadRecord, UploadStatus};
use rowpipe_testkit::{AppOptions, Backend, TOKEN, TestApp, spawn_app_with};
use serde_json::Value;

/// `rows` rows in `chunk`-row pieces, one piece every `pause`; the header
/// comes first.
fn slow_body(
    rows: u64,
    chunk: u64,
    pause: Duration,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    futures::stream::unfold(0u64, move |i| async move {
        if i * chunk >= rows {
            return None;
        }
        tokio::time::sleep(pause).await;
        let mut text = if i == 0 {
            "name,email\n".to_string()
        } else {
            String::new()
        };
        for r in i * chunk..((i + 1) * chunk).min(rows) {
            text.push_str(&format!("P{r},p{r}@example.com\n"));
        }
        Some((Ok(text), i + 1))
    })
}

fn whole_file(rows: u64) -> Vec<u8> {
    let mut text = "name,email\n".to_string();
    for r in 0..rows {
        text.push_str(&format!("P{r},p{r}@example.com\n"));
    }
    text.into_bytes()
}

fn post_slow(app: &TestApp, key: &str, rows: u64, pause: Duration) -> reqwest::RequestBuilder {
    app.client
        .post(format!("{}/v1/uploads", app.address))
        .bearer_auth(TOKEN)
        .header("content-type", "text/csv")
        .header("idempotency-key", key)
        .body(reqwest::Body::wrap_stream(slow_body(rows, 100, pause)))
}

/// The id of the upload recorded under `key`, once it exists.
async fn upload_under(app: &TestApp, key: &str) -> String {
    let started = Instant::now();
    loop {
        if let Some(record) = app.store.upload_by_idempotency_key(key).await.expect("db") {
            return record.upload_id;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no upload under {key}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The upload's record, which must exist.
async fn record_of(app: &TestApp, id: &str) -> UploadRecord {
    app.store.get_upload(id).await.expect("db").expect("record")
}

/// The upload's record once it has `status` (or fail after `timeout`).
async fn record_once(
    app: &TestApp,
    id: &str,
    status: UploadStatus,
    timeout: Duration,
) -> UploadRecord {
    let started = Instant::now();
    loop {
        let record = record_of(app, id).await;
        if record.status == status {
            return record;
        }
        assert!(
            started.elapsed() < timeout,
            "upload {id} not {status:?} after {timeout:?}: {record:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn no_receiving_upload_outlives_its_lease(app: &TestApp, lease: Duration) {
    // One sweep period past the lease is the longest a sweep may take.
    let late = app
        .receiving_past_lease(lease + Duration::from_secs(5))
        .await;
    assert!(
        late.is_empty(),
        "receiving uploads past their lease: {late:?}"
    );
}

#[tokio::test]
async fn a_retry_during_a_live_upload_gets_409_and_after_completion_it_replays() {
    let app = spawn_app_with(Backend::Sqlite, AppOptions::default()).await;
    let key = "retry-while-live";
    let first = tokio::spawn(post_slow(&app, key, 3_000, Duration::from_millis(50)).send());
    let id = upload_under(&app, key).await;

    let retry = app.upload_csv_keyed(key, whole_file(3_000)).await;
    assert_eq!(retry.status().as_u16(), 409);
    let body: Value = retry.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upload_in_progress");
    assert_eq!(body["error"]["upload_id"], id.as_str());
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("still being received"),
        "{body}"
    );

    let first = first.await.expect("join").expect("first POST");
    assert_eq!(first.status().as_u16(), 202);
    let replay = app.upload_csv_keyed(key, whole_file(3_000)).await;
    assert_eq!(replay.status().as_u16(), 200);
    let body: Value = replay.json().await.expect("json");
    assert_eq!(body["replayed"], true);
    assert_eq!(body["upload_id"], id.as_str());
    assert_eq!(body["attempts"], 1);
    no_receiving_upload_outlives_its_lease(&app, Duration::from_secs(30)).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_dropped_connection_interrupts_the_upload_and_the_same_key_resumes_it() {
    let app = spawn_app_with(Backend::Sqlite, AppOptions::default()).await;
    let key = "dropped-connection";
    let request = post_slow(&app, key, 100_000, Duration::from_millis(20)).send();
    // The client goes away mid-body.
    let _ = tokio::time::timeout(Duration::from_millis(1500), request).await;
    let id = upload_under(&app, key).await;
    let interrupted = record_once(
        &app,
        &id,
        UploadStatus::Interrupted,
        Duration::from_secs(15),
    )
    .await;
    assert!(interrupted.counts.read > 0, "{:?}", interrupted.counts);
    assert!(interrupted.error.is_some());

    let resumed = app.upload_csv_keyed(key, whole_file(5_000)).await;
    assert_eq!(resumed.status().as_u16(), 202);
    let body: Value = resumed.json().await.expect("json");
    assert_eq!(body["upload_id"], id.as_str(), "the same upload resumed");
    assert_eq!(body["attempts"], 2);
    assert_eq!(body["counts"]["read"], 5_000);
    assert_eq!(body["rows_enqueued"], 5_000);
    assert!(body["error"].is_null(), "{body}");
    assert!(matches!(
        body["status"].as_str(),
        Some("queued" | "processing")
    ));
    no_receiving_upload_outlives_its_lease(&app, Duration::from_secs(30)).await;
    app.cleanup().await;
}

#[tokio::test]
async fn an_upload_whose_instance_is_gone_is_interrupted_by_the_sweep_and_resumable() {
    let lease = Duration::from_secs(2);
    let app = spawn_app_with(
        Backend::Sqlite,
        AppOptions {
            upload_lease_secs: lease.as_secs(),
            ..Default::default()
        },
    )
    .await;
    // A record an instance that has died held, and one a live (other)
    // instance holds for a long lease.
    let dead = NewUpload {
        id: "dead-instance-upload".into(),
        file_name: None,
        idempotency_key: Some("dead-key".into()),
        tenant: None,
    };
    app.store
        .create_upload_leased(&dead, "a-dead-instance", lease.as_millis() as i64)
        .await
        .expect("create");
    let live = NewUpload {
        id: "live-instance-upload".into(),
        file_name: None,
        idempotency_key: Some("live-key".into()),
        tenant: None,
    };
    app.store
        .create_upload_leased(&live, "a-live-instance", 600_000)
        .await
        .expect("create");
    let created = Instant::now();

    let retry = app.upload_csv_keyed("live-key", whole_file(10)).await;
    assert_eq!(retry.status().as_u16(), 409, "a live lease is respected");

    record_once(
        &app,
        &dead.id,
        UploadStatus::Interrupted,
        Duration::from_secs(10),
    )
    .await;
    let took = created.elapsed();
    assert!(
        took < lease + Duration::from_secs(3),
        "interrupted {took:?} after creation, lease {lease:?}"
    );
    let record = record_of(&app, &dead.id).await;
    assert!(record.error.unwrap_or_default().contains("lease"));
    let live_now = record_of(&app, &live.id).await;
    assert_eq!(live_now.status, UploadStatus::Receiving);

    let resumed = app.upload_csv_keyed("dead-key", whole_file(1_000)).await;
    assert_eq!(resumed.status().as_u16(), 202);
    let body: Value = resumed.json().await.expect("json");
    assert_eq!(body["upload_id"], dead.id.as_str());
    assert_eq!(body["counts"]["read"], 1_000);
    assert_eq!(body["attempts"], 2);
    app.cleanup().await;
}

/// The first and last stream ids of an upload's entries, as recorded.
async fn recorded_range(app: &TestApp, id: &str) -> (Option<String>, Option<String>) {
    let sql = app
        .store
        .dialect()
        .sql("SELECT first_entry_id, last_entry_id FROM uploads WHERE id = ?");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_one(app.store.pool())
        .await
        .expect("read the upload's entry range")
}

#[tokio::test]
async fn an_upload_shorter_than_a_lease_renewal_records_the_id_range_of_its_entries() {
    use redis::AsyncTypedCommands;
    let app = spawn_app_with(Backend::Sqlite, AppOptions::default()).await;
    let id = app.upload_ok(whole_file(1_200)).await;
    let (first, last) = recorded_range(&app, &id).await;
    // The test's stream holds this upload's entries only.
    let mut con = app.redis.clone();
    let oldest = con
        .xrange_count(&app.stream, "-", "+", 1usize)
        .await
        .expect("XRANGE");
    let newest = con
        .xrevrange_count(&app.stream, "+", "-", 1usize)
        .await
        .expect("XREVRANGE");
    assert_eq!(first.as_deref(), oldest.ids.first().map(|e| e.id.as_str()));
    assert_eq!(last.as_deref(), newest.ids.first().map(|e| e.id.as_str()));
    assert!(first.is_some() && first != last, "{first:?} .. {last:?}");
    app.cleanup().await;
}
