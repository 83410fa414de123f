//! The backlog bound counts bytes as well as entries: with wide rows and no
//! consumer, concurrent uploads fill the stream up to
//! `ROWPIPE_MAX_BACKLOG_BYTES` and no more than one pipeline each past it,
//! then wait.

use std::time::Duration;

use rowpipe_testkit::{AppOptions, Backend, TOKEN, TestApp, spawn_app_with};

const MAX_BACKLOG_BYTES: u64 = 4 * 1024 * 1024;
const BATCH_BYTES: u64 = 256 * 1024;

/// `rows` rows of about 32 KiB each.
fn wide_file(tag: &str, rows: usize) -> Vec<u8> {
    let filler = "w".repeat(32 * 1024);
    let mut f = String::from("name,email,note\n");
    for r in 0..rows {
        f.push_str(&format!("{tag} {r},{tag}{r}@example.com,{filler}\n"));
    }
    f.into_bytes()
}

async fn stream_bytes(app: &TestApp) -> u64 {
    let mut con = app.redis.clone();
    let bytes: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&app.stream)
        .arg("SAMPLES")
        .arg(0)
        .query_async(&mut con)
        .await
        .expect("MEMORY USAGE");
    bytes.unwrap_or(0)
}

#[tokio::test]
async fn concurrent_uploads_of_wide_rows_stop_at_the_byte_bound_plus_one_pipeline_each() {
    let app = spawn_app_with(
        Backend::Sqlite,
        AppOptions {
            extra_args: vec![
                "--max-backlog-bytes".into(),
                MAX_BACKLOG_BYTES.to_string(),
                "--enqueue-batch-bytes".into(),
                BATCH_BYTES.to_string(),
            ],
            ..AppOptions::default()
        },
    )
    .await;
    let uploads = 3;
    let mut requests = Vec::new();
    for u in 0..uploads {
        let request = app
            .client
            .post(format!("{}/v1/uploads", app.address))
            .bearer_auth(TOKEN)
            .header("content-type", "text/csv")
            .body(wide_file(&format!("u{u}"), 600))
            .send();
        requests.push(tokio::spawn(request));
    }
    // No consumer runs: the uploads fill the stream and wait.
    let mut peak = 0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(stream_bytes(&app).await);
    }
    let bound = MAX_BACKLOG_BYTES + uploads * 2 * BATCH_BYTES;
    println!(
        "stream bytes with {uploads} waiting uploads: {} KiB (bound {} KiB + one pipeline each)",
        peak / 1024,
        MAX_BACKLOG_BYTES / 1024
    );
    assert!(
        peak > MAX_BACKLOG_BYTES / 2,
        "the uploads wrote little: {peak}"
    );
    assert!(peak <= bound, "{peak} bytes > {bound}");
    for r in &requests {
        assert!(!r.is_finished(), "an upload finished without a consumer");
    }
    for r in requests {
        r.abort();
    }
    app.cleanup().await;
}
