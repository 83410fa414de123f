//! `ROWPIPE_REDIS_WAIT_REPLICAS`: rows count as enqueued only once that
//! many replicas confirmed them. (The cluster tests of the consumer's suite
//! run it through a failover, with a replica to confirm.)

use rowpipe_testkit::{AppOptions, Backend, spawn_app_with};

#[tokio::test]
async fn rows_no_replica_confirms_are_not_counted_and_the_upload_is_interrupted_saying_why() {
    // The shared Redis is a primary without replicas: WAIT 1 confirms none.
    let app = spawn_app_with(
        Backend::Sqlite,
        AppOptions {
            extra_args: [
                "--redis-wait-replicas",
                "1",
                "--redis-wait-timeout-ms",
                "20",
            ]
            .map(String::from)
            .to_vec(),
            ..AppOptions::default()
        },
    )
    .await;
    let mut csv = String::from("email\n");
    for i in 0..10 {
        csv.push_str(&format!("wait{i}@example.com\n"));
    }
    let response = app.upload_csv(csv.into_bytes()).await;
    assert_eq!(response.status(), 503);
    let body: serde_json::Value = response.json().await.expect("a JSON error");
    let error = &body["error"];
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("too few Redis replicas confirmed the rows (0 of the 1"),
        "the error says why: {body}"
    );
    assert_eq!(error["upload_status"], "interrupted", "{body}");
    assert_eq!(error["resumable"], true, "{body}");
    let id = error["upload_id"].as_str().expect("the upload's id");
    let status = app.status(id).await;
    assert_eq!(status["status"], "interrupted", "{status}");
    assert_eq!(
        status["counts"]["enqueued"], 0,
        "no unconfirmed row counts as enqueued: {status}"
    );
    // Unconfirmed rows are asked about again, not written again: the
    // stream holds each row once (no consumer runs here).
    assert_eq!(
        app.backlog().await.length,
        10,
        "a shortfall does not write the rows again"
    );
    app.cleanup().await;
}
