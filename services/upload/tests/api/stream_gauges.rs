//! The upload service exports the stream gauges itself, so the signal that
//! rows are waiting exists while every consumer is scaled to zero (the
//! `RowpipeNoConsumers` alert reads it).

use std::time::{Duration, Instant};

use rowpipe_testkit::{Backend, spawn_app};

/// The value of `name{stream="<stream>",…}` in a Prometheus text body.
fn gauge(body: &str, name: &str, stream: &str) -> Option<f64> {
    let label = format!("stream=\"{stream}\"");
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn with_no_consumer_running_the_upload_service_exports_the_backlog() {
    let app = spawn_app(Backend::Sqlite).await;
    let rows = 37;
    let mut csv = String::from("email\n");
    for i in 0..rows {
        csv.push_str(&format!("gauge{i}@example.com\n"));
    }
    app.upload_ok(csv.into_bytes()).await;
    // Sampled every 5 s: two periods at most.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (lag, pending, length) = loop {
        let body = app.get_text("/metrics").await;
        let read = |name| gauge(&body, name, &app.stream);
        let seen = (
            read("rowpipe_stream_group_lag"),
            read("rowpipe_stream_pending"),
            read("rowpipe_stream_length"),
        );
        if seen.0 == Some(rows as f64) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(lag, Some(rows as f64), "group lag of {}", app.stream);
    assert_eq!(pending, Some(0.0), "pending of {}", app.stream);
    assert_eq!(length, Some(rows as f64), "length of {}", app.stream);
    app.cleanup().await;
}
