//! An upload instance dying mid-upload (`kill -9`, OOM, node loss): its
//! upload must not stay `receiving` forever. The lease lapses, a live
//! instance or consumer marks it `interrupted`, the rows it put in the
//! stream are still processed and counted, and a POST of the same file
//! with the same `Idempotency-Key` to another instance finishes it with
//! the table one clean pass would have left.

use std::time::{Duration, Instant};

use futures::StreamExt;

use rowpipe_core::store::{UploadRecord, UploadStatus};
use rowpipe_testkit::{
    AppOptions, Backend, Generated, TOKEN, TestApp, assert_every_row_counted_once,
    generate_contacts, spawn_app_with,
};
use serde_json::Value;

use crate::CONSUMER_BIN;

const LEASE: Duration = Duration::from_secs(3);
const ROWS: usize = 200_000;
const KEY: &str = "killed-instance";

/// The file in 64 KiB pieces, one every `pause`, so the upload lasts
/// several lease renewals.
fn paced(csv: Vec<u8>, pause: Duration) -> reqwest::Body {
    let pieces: Vec<Vec<u8>> = csv.chunks(64 * 1024).map(<[u8]>::to_vec).collect();
    let stream = futures::stream::iter(pieces).then(move |piece| async move {
        tokio::time::sleep(pause).await;
        Ok::<_, std::io::Error>(piece)
    });
    reqwest::Body::wrap_stream(stream)
}

/// The POST of `file` under [`KEY`] to the instance at `address`, paced
/// (see [`paced`]), spawned.
fn spawn_paced_post(
    app: &TestApp,
    address: &str,
    file: &Generated,
    pause: Duration,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let request = app
        .client
        .post(format!("{address}/v1/uploads"))
        .bearer_auth(TOKEN)
        .header("content-type", "text/csv")
        .header("idempotency-key", KEY)
        .body(paced(file.csv.clone(), pause))
        .send();
    tokio::spawn(request)
}

async fn record(app: &TestApp) -> Option<UploadRecord> {
    app.store.upload_by_idempotency_key(KEY).await.expect("db")
}

/// Wait until `check` holds for the upload's record; return it.
async fn record_when(
    app: &TestApp,
    timeout: Duration,
    what: &str,
    check: impl Fn(&UploadRecord) -> bool,
) -> UploadRecord {
    let started = Instant::now();
    loop {
        let r = record(app).await;
        if let Some(r) = r.as_ref().filter(|r| check(r)) {
            return r.clone();
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The table as `(email, upload, row)`, against what one pass of `file`
/// as upload `id` leaves.
async fn assert_one_pass_table(app: &TestApp, file: &Generated, id: &str) {
    let dump: Vec<(String, String, i64)> = app
        .contacts_dump()
        .await
        .into_iter()
        .map(|(email, _, _, upload, row)| (email, upload, row))
        .collect();
    let expected: Vec<(String, String, i64)> = Generated::oracle(&[file])
        .into_iter()
        .map(|(email, (_, row))| (email, id.to_string(), row))
        .collect();
    assert_eq!(dump.len(), expected.len(), "one contact per distinct email");
    assert!(dump == expected, "the table equals the one-pass table");
}

async fn a_killed_upload_instance_is_interrupted_and_a_resume_completes_it(backend: Backend) {
    let lease_secs = LEASE.as_secs().to_string();
    // The in-process service is the other instance: it sweeps lapsed
    // leases and takes the resume.
    let app = spawn_app_with(
        backend,
        AppOptions {
            upload_lease_secs: LEASE.as_secs(),
            ..Default::default()
        },
    )
    .await;
    let lease_env = [("ROWPIPE_UPLOAD_LEASE_SECS", lease_secs.as_str())];
    let mut consumer = app.spawn_consumer(CONSUMER_BIN, &lease_env);
    let mut doomed = app.spawn_upload_process(&lease_env).await;
    let file = generate_contacts(ROWS, 10, 3, 14);

    let request = spawn_paced_post(&app, &doomed.address, &file, Duration::from_millis(40));

    // Kill once a renewal recorded rows in the stream: mid-upload, with
    // work to account for.
    let before = record_when(&app, Duration::from_secs(60), "rows enqueued", |r| {
        r.counts.enqueued > 0
    })
    .await;
    assert_eq!(before.status, UploadStatus::Receiving);
    doomed.kill().await;
    let killed = Instant::now();
    let answer = request.await.expect("join");
    assert!(answer.is_err(), "the killed instance answered: {answer:?}");

    let interrupted = record_when(
        &app,
        LEASE + Duration::from_secs(10),
        "the upload interrupted",
        |r| r.status == UploadStatus::Interrupted,
    )
    .await;
    let took = killed.elapsed();
    // The lease, plus one sweep period of the upload service (a third of
    // the lease) or the consumer (5 s).
    assert!(
        took <= LEASE + Duration::from_secs(6),
        "interrupted {took:?} after the kill"
    );
    eprintln!(
        "killed at {} rows enqueued (renewal), interrupted {took:?} after the kill at {} read / {} enqueued",
        before.counts.enqueued, interrupted.counts.read, interrupted.counts.enqueued
    );
    assert!(interrupted.counts.enqueued >= before.counts.enqueued);
    assert!(interrupted.counts.read < ROWS as i64, "{interrupted:?}");
    assert!(
        app.receiving_past_lease(LEASE + Duration::from_secs(6))
            .await
            .is_empty(),
        "no receiving upload outlives its lease"
    );
    // The rows that reached the stream are processed and counted, and once
    // nothing of the upload is left in the stream its `rows_enqueued` is
    // settled to what reached it: every row the dead instance wrote after
    // its last renewal included, none missing (this Redis lost nothing).
    let counted = record_when(
        &app,
        Duration::from_secs(120),
        "the interrupted upload's rows counted and settled",
        |r| {
            r.counts.processed >= interrupted.counts.enqueued
                && r.counts.processed + r.counts.missing == r.counts.enqueued
        },
    )
    .await;
    assert_eq!(counted.status, UploadStatus::Interrupted);
    let c = &counted.counts;
    assert_eq!(c.processed, c.inserted + c.duplicates + c.rejected);
    assert_eq!(c.missing, 0, "nothing was lost in Redis: {counted:?}");
    assert_eq!(c.enqueued, c.processed, "{counted:?}");

    // The resume, to another instance.
    let resumed = app.upload_csv_keyed(KEY, file.csv.clone()).await;
    let status = resumed.status().as_u16();
    let body: Value = resumed.json().await.expect("json");
    assert_eq!(status, 202, "{body}");
    let id = interrupted.upload_id.clone();
    assert_eq!(body["upload_id"], id.as_str());
    assert_eq!(body["attempts"], 2);
    let done = app.wait_completed(&id, Duration::from_secs(240)).await;
    assert_eq!(done["counts"]["read"], ROWS as i64);
    assert_every_row_counted_once(&done, ROWS as i64);
    assert_eq!(
        done["counts"]["rejected"].as_u64(),
        Some(file.invalid as u64)
    );
    assert_eq!(
        done["counts"]["inserted"].as_u64(),
        Some(file.distinct.len() as u64)
    );
    assert_one_pass_table(&app, &file, &id).await;
    assert!(
        app.receiving_past_lease(LEASE).await.is_empty(),
        "no receiving upload outlives its lease"
    );
    app.cleanup_with(std::slice::from_mut(&mut consumer)).await;
}

rowpipe_testkit::on_databases!(a_killed_upload_instance_is_interrupted_and_a_resume_completes_it: Postgres, MySql);

async fn a_retry_while_the_first_instance_is_live_gets_409_then_replays(backend: Backend) {
    let app = spawn_app_with(backend, AppOptions::default()).await;
    let mut consumer = app.spawn_consumer(CONSUMER_BIN, &[]);
    let file = generate_contacts(20_000, 10, 3, 15);
    let first = spawn_paced_post(&app, &app.address, &file, Duration::from_millis(100));
    record_when(&app, Duration::from_secs(30), "the upload's record", |_| {
        true
    })
    .await;

    let retry = app.upload_csv_keyed(KEY, file.csv.clone()).await;
    assert_eq!(retry.status().as_u16(), 409);
    let body: Value = retry.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upload_in_progress");

    let first = first.await.expect("join").expect("the first POST");
    assert_eq!(first.status().as_u16(), 202);
    let id = record(&app).await.expect("record").upload_id;
    app.wait_completed(&id, Duration::from_secs(120)).await;
    let replay = app.upload_csv_keyed(KEY, file.csv.clone()).await;
    assert_eq!(replay.status().as_u16(), 200);
    let body: Value = replay.json().await.expect("json");
    assert_eq!(body["replayed"], true);
    assert_eq!(body["status"], "completed");
    assert_one_pass_table(&app, &file, &id).await;
    app.cleanup_with(std::slice::from_mut(&mut consumer)).await;
}

rowpipe_testkit::on_databases!(a_retry_while_the_first_instance_is_live_gets_409_then_replays: Postgres);
