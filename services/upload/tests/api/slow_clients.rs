//! Slow and greedy clients cannot hold the service: a header dribble is
//! closed within the header read timeout, connections and uploads at once
//! are capped (429 with Retry-After past the upload cap), a body that
//! stops sending is stopped, and multipart part headers are bounded.

use std::time::{Duration, Instant};

use rowpipe_testkit::{AppOptions, Backend, TOKEN, TestApp, spawn_app_with};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn app_with(args: &[&str]) -> TestApp {
    spawn_app_with(
        Backend::Sqlite,
        AppOptions {
            extra_args: args.iter().map(|a| a.to_string()).collect(),
            ..AppOptions::default()
        },
    )
    .await
}

fn host(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_string()
}

/// Read until the server closes the connection (or `limit` passes).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn a_client_dribbling_headers_is_closed_within_the_header_read_timeout() {
    let app = app_with(&["--header-read-timeout-secs", "2"]).await;
    let mut stream = TcpStream::connect(host(&app)).await.expect("connect");
    let dribble = async {
        let _ = stream.write_all(b"POST /v1/uploads HTTP/1.1\r\n").await;
        for i in 0..30 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if stream
                .write_all(format!("X-Dribble-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    };
    let started = Instant::now();
    // Written while the server may close: the dribble ends on the first
    // failed write, or after 15 s.
    let _ = tokio::time::timeout(Duration::from_secs(15), dribble).await;
    let closed = closed_within(&mut stream, Duration::from_secs(5)).await;
    let total = started.elapsed();
    println!("header dribble closed after {total:?}");
    assert!(closed.is_some(), "the connection stayed open");
    assert!(
        total < Duration::from_secs(5),
        "closed after {total:?}, timeout 2 s"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_and_the_service_still_answers_after() {
    let app = app_with(&["--max-connections", "3", "--header-read-timeout-secs", "30"]).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(host(&app)).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(host(&app)).await.expect("connect");
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let closed = closed_within(&mut extra, Duration::from_secs(3)).await;
    assert!(
        closed.is_some(),
        "a fourth connection was served past a cap of three"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resp = app
        .client
        .get(format!("{}/healthz", app.address))
        .send()
        .await
        .expect("healthz");
    assert_eq!(resp.status().as_u16(), 200);
    app.cleanup().await;
}

/// A header and 50 rows at once (past what is looked at to tell the file's
/// type), then one row every `pause`.
fn slow_rows(pause: Duration) -> reqwest::Body {
    let chunks = futures::stream::unfold(0u64, move |i| async move {
        if i >= 40 {
            return None;
        }
        let mut text = String::new();
        if i == 0 {
            text.push_str("name,email\n");
            for r in 0..50 {
                text.push_str(&format!("First {r},f{r}@example.com\n"));
            }
        } else {
            tokio::time::sleep(pause).await;
            text.push_str(&format!("P{i},p{i}@example.com\n"));
        }
        Some((Ok::<_, std::io::Error>(text), i + 1))
    });
    reqwest::Body::wrap_stream(chunks)
}

#[tokio::test]
async fn uploads_past_the_instance_cap_get_429_with_retry_after() {
    let app = app_with(&["--max-concurrent-uploads", "1"]).await;
    let first = app
        .client
        .post(format!("{}/v1/uploads", app.address))
        .bearer_auth(TOKEN)
        .header("content-type", "text/csv")
        .body(slow_rows(Duration::from_millis(50)))
        .send();
    let second = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        app.upload_csv(b"email\na@example.com\n".to_vec()).await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(second.status().as_u16(), 429);
    assert_eq!(
        second
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let body: Value = second.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_uploads");
    assert_eq!(first.expect("first upload").status().as_u16(), 202);
    // The permit is returned with the upload's end.
    let resp = app.upload_csv(b"email\nb@example.com\n".to_vec()).await;
    assert_eq!(resp.status().as_u16(), 202);
    app.cleanup().await;
}

#[tokio::test]
async fn a_body_that_stops_sending_is_stopped_and_the_upload_interrupted() {
    let app = app_with(&["--body-idle-timeout-secs", "1"]).await;
    let started = Instant::now();
    let resp = app
        .client
        .post(format!("{}/v1/uploads", app.address))
        .bearer_auth(TOKEN)
        .header("content-type", "text/csv")
        .body(slow_rows(Duration::from_secs(3)))
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status().as_u16(), 408);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "body_idle");
    let id = body["error"]["upload_id"].as_str().expect("upload id");
    let record = app.store.get_upload(id).await.expect("db").expect("record");
    assert_eq!(
        record.status,
        rowpipe_core::store::UploadStatus::Interrupted
    );
    app.cleanup().await;
}

#[tokio::test]
async fn multipart_part_headers_past_the_limit_are_refused_not_buffered() {
    let app = app_with(&["--max-part-header-bytes", "4096"]).await;
    let boundary = "XyZ";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.csv\"\r\n"
    );
    for i in 0..2_000 {
        body.push_str(&format!("X-Padding-{i}: {}\r\n", "p".repeat(100)));
    }
    body.push_str("\r\nemail\na@example.com\r\n");
    body.push_str(&format!("--{boundary}--\r\n"));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body
        .into_bytes()
        .chunks(1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let resp = app
        .client
        .post(format!("{}/v1/uploads", app.address))
        .bearer_auth(TOKEN)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("an answer");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("4096 bytes"),
        "{body}"
    );
    app.cleanup().await;
}
