//! The consumer's guarantees under many processes, crashes and outages:
//! nothing lost, same result every time.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rowpipe_core::stream::StreamEntry;
use rowpipe_core::validate::EmailPolicy;
use rowpipe_core::verdict::judge;
use rowpipe_testkit::{
    Backend, Generated, TestApp, ToggleProxy, acknowledged, assert_every_row_counted_once,
    eventually, generate_contacts, spawn_app, via_port,
};

use crate::CONSUMER_BIN;
use crate::db_faults::dead_letters;
use crate::in_process::InProcessWorker;

/// Upload `a`, and `b` as soon as `a` has been accepted (so they overlap).
async fn two_overlapping_uploads(app: &TestApp, a: &Generated, b: &Generated) -> Vec<String> {
    let first = {
        let (app_ref, body) = (app, a.csv.clone());
        async move { app_ref.upload_ok(body).await }
    };
    let second = async {
        eventually(
            Duration::from_secs(30),
            "the first upload to be accepted",
            || async {
                app.store
                    .list_uploads(5)
                    .await
                    .map(|l| !l.is_empty())
                    .unwrap_or(false)
            },
        )
        .await;
        app.upload_ok(b.csv.clone()).await
    };
    let (ida, idb) = tokio::join!(first, second);
    vec![ida, idb]
}

async fn run_with_consumers(
    backend: Backend,
    consumers: usize,
    a: &Generated,
    b: &Generated,
) -> (
    BTreeMap<String, (usize, i64)>,
    Vec<(String, String, Option<String>, i64)>,
) {
    let app = spawn_app(backend).await;
    let mut procs: Vec<_> = (0..consumers)
        .map(|_| app.spawn_consumer(CONSUMER_BIN, &[("ROWPIPE_BATCH_SIZE", "500")]))
        .collect();
    let ids = two_overlapping_uploads(&app, a, b).await;
    for id in &ids {
        app.wait_completed(id, Duration::from_secs(600)).await;
    }
    let t = app.table_by_upload(&ids).await;
    // Counts stay exact across uploads, displacements included.
    let mut inserted = 0;
    for id in &ids {
        let s = app.status(id).await;
        let c = &s["counts"];
        let n = |k: &str| c[k].as_i64().unwrap_or(-1);
        assert_eq!(
            n("read"),
            n("inserted") + n("duplicates") + n("rejected"),
            "{s}"
        );
        inserted += n("inserted");
    }
    assert_eq!(
        inserted as usize,
        t.len(),
        "the uploads' inserted counts add up to the table"
    );
    let full: Vec<_> = app
        .contacts_dump()
        .await
        .into_iter()
        .map(|(email, raw, name, upload, row)| {
            let idx = ids.iter().position(|i| *i == upload).unwrap_or(99);
            (email, raw, name, (idx as i64) * 1_000_000_000 + row)
        })
        .collect();
    assert_eq!(app.pending().await, 0);
    app.cleanup_with(&mut procs).await;
    (t, full)
}

async fn one_and_six_consumers_leave_identical_tables(backend: Backend) {
    let a = generate_contacts(50_000, 20, 2, 1001);
    let b = generate_contacts(50_000, 20, 2, 1001 + 1);
    let expected = Generated::oracle(&[&a, &b]);
    let (one, one_full) = run_with_consumers(backend, 1, &a, &b).await;
    let (six, six_full) = run_with_consumers(backend, 6, &a, &b).await;
    assert_eq!(
        one, expected,
        "1 consumer: the table follows the first-row-wins rule"
    );
    assert_eq!(
        six, expected,
        "6 consumers: the table follows the first-row-wins rule"
    );
    assert!(
        one_full == six_full,
        "1 and 6 consumers left different tables"
    );
}

rowpipe_testkit::on_databases!(one_and_six_consumers_leave_identical_tables: Sqlite, Postgres, MySql);

async fn consumers_killed_at_random_lose_nothing(backend: Backend) {
    let file = generate_contacts(100_000, 20, 2, 77);
    let expected = Generated::oracle(&[&file]);
    let app = spawn_app(backend).await;
    let env = [
        ("ROWPIPE_CLAIM_IDLE_MS", "1500"),
        ("ROWPIPE_BATCH_SIZE", "500"),
    ];
    // The whole file is in the stream before any consumer starts, and each
    // kill waits for a share of it to be processed, not for a time: however
    // fast the consumers are, the kills land while work remains.
    let id = app.upload_ok(file.csv.clone()).await;
    let mut procs: Vec<_> = (0..3)
        .map(|_| app.spawn_consumer(CONSUMER_BIN, &env))
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut kills = 0;
    for round in 1..=8u64 {
        let target = round * 10_000 + rng.random_range(0..5_000);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        let done = loop {
            let status = app.status(&id).await;
            if status["status"] == "completed" {
                break true;
            }
            if status["counts"]["processed"].as_u64().unwrap_or(0) >= target {
                break false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no progress to {target} rows: {status}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if done {
            break;
        }
        let victim = rng.random_range(0..procs.len());
        procs[victim].kill().await; // SIGKILL: no chance to finish or ack
        kills += 1;
        procs[victim] = app.spawn_consumer(CONSUMER_BIN, &env);
    }
    assert!(
        kills > 0,
        "the ingest finished before any consumer was killed"
    );
    let status = app.wait_completed(&id, Duration::from_secs(600)).await;
    let c = &status["counts"];
    assert_eq!(c["read"], 100_000);
    assert_every_row_counted_once(&status, 100_000);
    assert_eq!(c["rejected"].as_u64(), Some(file.invalid as u64));
    assert_eq!(
        app.table_by_upload(std::slice::from_ref(&id)).await,
        expected
    );
    eventually(Duration::from_secs(30), "nothing pending", || async {
        app.pending().await == 0
    })
    .await;
    app.cleanup_with(&mut procs).await;
}

rowpipe_testkit::on_databases!(consumers_killed_at_random_lose_nothing: Sqlite, Postgres, MySql);

async fn sigterm_drains_and_exits_zero_within_the_grace_period(backend: Backend) {
    let file = generate_contacts(30_000, 10, 2, 9);
    let expected = Generated::oracle(&[&file]);
    let app = spawn_app(backend).await;
    let env = [
        ("ROWPIPE_SHUTDOWN_GRACE_SECS", "10"),
        ("ROWPIPE_CLAIM_IDLE_MS", "1500"),
    ];
    let mut first = app.spawn_consumer(CONSUMER_BIN, &env);
    let id = app.upload_ok(file.csv.clone()).await;
    eventually(Duration::from_secs(60), "the ingest to start", || async {
        app.status(&id).await["counts"]["processed"]
            .as_i64()
            .unwrap_or(0)
            > 0
    })
    .await;
    let started = std::time::Instant::now();
    first.sigterm();
    let exit = tokio::time::timeout(Duration::from_secs(12), first.wait())
        .await
        .expect("exited within the grace period")
        .expect("wait");
    assert!(exit.success(), "SIGTERM exit status {exit:?}");
    assert!(started.elapsed() < Duration::from_secs(11));
    let mut second = app.spawn_consumer(CONSUMER_BIN, &env);
    app.wait_completed(&id, Duration::from_secs(300)).await;
    assert_eq!(
        app.table_by_upload(std::slice::from_ref(&id)).await,
        expected
    );
    assert_eq!(app.pending().await, 0);
    app.cleanup_with(std::slice::from_mut(&mut second)).await;
}

rowpipe_testkit::on_databases!(sigterm_drains_and_exits_zero_within_the_grace_period: Postgres, Sqlite);

async fn a_database_outage_acknowledges_nothing_and_recovers(backend: Backend) {
    let file = generate_contacts(40_000, 15, 2, 31);
    let expected = Generated::oracle(&[&file]);
    let app = spawn_app(backend).await;
    let proxy = ToggleProxy::start(rowpipe_testkit::host_port(&app.db.url))
        .await
        .expect("proxy");
    let url = via_port(&app.db.url, proxy.port);
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("ROWPIPE_BATCH_SIZE", "200"),
    ];
    let mut procs: Vec<_> = (0..2)
        .map(|_| app.spawn_consumer(CONSUMER_BIN, &env))
        .collect();
    let id = app.upload_ok(file.csv.clone()).await;
    eventually(Duration::from_secs(60), "the ingest to start", || async {
        app.status(&id).await["counts"]["processed"]
            .as_i64()
            .unwrap_or(0)
            > 2000
    })
    .await;
    proxy.down();
    // Batches committed just before the cut may still be acknowledged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut con = app.redis.clone();
    let acked_at_cut = acknowledged(&mut con, &app.stream, &app.group).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let acked_after = acknowledged(&mut con, &app.stream, &app.group).await;
    assert_eq!(
        acked_at_cut, acked_after,
        "entries were acknowledged while the database was down"
    );
    assert_ne!(app.status(&id).await["status"], "completed");
    proxy.up();
    app.wait_completed(&id, Duration::from_secs(300)).await;
    assert_eq!(
        app.table_by_upload(std::slice::from_ref(&id)).await,
        expected
    );
    assert_eq!(app.pending().await, 0);
    app.cleanup_with(&mut procs).await;
}

rowpipe_testkit::on_databases!(a_database_outage_acknowledges_nothing_and_recovers: Postgres, MySql);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_ingest_loses_no_acknowledged_row() {
    let mut redis = rowpipe_testkit::OwnRedis::start()
        .await
        .expect("own redis-server");
    let app = rowpipe_testkit::spawn_app_with(
        Backend::Sqlite,
        rowpipe_testkit::AppOptions {
            redis_url: Some(redis.url.clone()),
            ..Default::default()
        },
    )
    .await;
    let file = generate_contacts(60_000, 15, 2, 61);
    let expected = Generated::oracle(&[&file]);
    let mut procs: Vec<_> = (0..2)
        .map(|_| app.spawn_consumer(CONSUMER_BIN, &[("ROWPIPE_CLAIM_IDLE_MS", "1500")]))
        .collect();
    let upload = {
        let body = file.csv.clone();
        let app = &app;
        async move { app.upload_ok(body).await }
    };
    let restart = async {
        eventually(Duration::from_secs(60), "the ingest to start", || async {
            app.store
                .list_uploads(1)
                .await
                .ok()
                .and_then(|l| l.first().map(|u| u.counts.processed > 0))
                .unwrap_or(false)
        })
        .await;
        redis.restart().await.expect("restart redis");
    };
    let (id, ()) = tokio::join!(upload, restart);
    let status = app.wait_completed(&id, Duration::from_secs(300)).await;
    assert_eq!(status["counts"]["read"], 60_000);
    assert_eq!(
        app.table_by_upload(std::slice::from_ref(&id)).await,
        expected
    );
    eventually(Duration::from_secs(30), "nothing pending", || async {
        app.pending().await == 0
    })
    .await;
    app.cleanup_with(&mut procs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_group_makes_a_large_upload_wait_within_the_backlog_bound() {
    let app = rowpipe_testkit::spawn_app_with(
        Backend::Sqlite,
        rowpipe_testkit::AppOptions {
            max_backlog: 2_000,
            ..Default::default()
        },
    )
    .await;
    let file = generate_contacts(30_000, 5, 1, 3);
    let expected = Generated::oracle(&[&file]);
    let upload = tokio::spawn({
        let client = app.client.clone();
        let url = format!("{}/v1/uploads", app.address);
        let body = file.csv.clone();
        async move {
            client
                .post(url)
                .bearer_auth(rowpipe_testkit::TOKEN)
                .header("content-type", "text/csv")
                .body(body)
                .send()
                .await
                .expect("upload")
                .json::<serde_json::Value>()
                .await
                .expect("json")
        }
    });
    // No consumer yet: the stream fills up to the bound and the upload waits.
    let mut con = app.redis.clone();
    let mut peak = 0;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let b = rowpipe_core::stream::backlog(&mut con, &app.stream, &app.group)
            .await
            .expect("backlog");
        peak = peak.max(b.length);
    }
    assert!(
        peak > 0 && peak <= 2_000,
        "stream length {peak} outside (0, 2000]"
    );
    assert!(
        !upload.is_finished(),
        "the upload finished although nobody consumed"
    );
    let mut consumer = app.spawn_consumer(CONSUMER_BIN, &[]);
    // Consuming, the stream still never holds more than the bound: the
    // writer trims acknowledged entries itself instead of letting them pile
    // up until the consumers' periodic trim.
    let sampling = tokio::time::Instant::now();
    while !upload.is_finished() && sampling.elapsed() < Duration::from_secs(120) {
        let b = rowpipe_core::stream::backlog(&mut con, &app.stream, &app.group)
            .await
            .expect("backlog");
        assert!(
            b.length <= 2_000,
            "stream length {} above the bound 2000",
            b.length
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = tokio::time::timeout(Duration::from_secs(120), upload)
        .await
        .expect("upload resumed")
        .expect("join");
    let id = body["upload_id"].as_str().expect("id").to_string();
    assert_eq!(body["rows_enqueued"], 30_000);
    app.wait_completed(&id, Duration::from_secs(120)).await;
    assert_eq!(
        app.table_by_upload(std::slice::from_ref(&id)).await,
        expected
    );
    app.cleanup_with(std::slice::from_mut(&mut consumer)).await;
}

/// A batch held up in the database for many times `claim_idle` stays with
/// the consumer working on it: the others, idle and claiming every half
/// `claim_idle`, never take it over, and it is delivered once.
async fn a_slow_batch_is_not_taken_over_by_another_consumer(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut csv = String::from("email,name\n");
    for i in 1..=300 {
        csv.push_str(&format!("user{i}@example.com,User {i}\n"));
    }
    // An open transaction inserting one of the file's emails: the batch that
    // holds that email waits on its index entry until the rollback.
    let mut blocker = app.store.pool().begin().await.expect("begin");
    let insert = app.store.dialect().sql(
        "INSERT INTO contacts (email, email_raw, name, attributes, upload_id, upload_seq, \"row_number\", created_at_ms) \
         VALUES ('user1@example.com', 'user1@example.com', NULL, NULL, 'blocker', 0, 0, 0)",
    );
    sqlx::query(sqlx::AssertSqlSafe(insert))
        .execute(&mut *blocker)
        .await
        .expect("blocking insert");

    let env = [("ROWPIPE_CLAIM_IDLE_MS", "600")];
    let mut procs: Vec<_> = (0..2)
        .map(|_| app.spawn_consumer(CONSUMER_BIN, &env))
        .collect();
    let id = app.upload_ok(csv.into_bytes()).await;
    eventually(Duration::from_secs(60), "a batch to be in hand", || async {
        app.pending().await > 0
    })
    .await;
    // Ten times `claim_idle`: without the renewed claim, idle workers take
    // the batch over (and over) after 600 ms.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut con = app.redis.clone();
    let pending: redis::streams::StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&app.stream)
        .arg(&app.group)
        .arg("-")
        .arg("+")
        .arg(1000)
        .query_async(&mut con)
        .await
        .expect("XPENDING");
    assert!(!pending.ids.is_empty(), "the held-up batch is pending");
    let most = pending.ids.iter().map(|p| p.times_delivered).max();
    assert_eq!(
        most,
        Some(1),
        "entries of the held-up batch were taken over: {:?}",
        pending
            .ids
            .iter()
            .map(|p| (&p.consumer, p.times_delivered))
            .collect::<Vec<_>>()
    );

    blocker.rollback().await.expect("rollback");
    let status = app.wait_completed(&id, Duration::from_secs(120)).await;
    assert_eq!(status["counts"]["inserted"], 300, "{status}");
    assert_eq!(app.pending().await, 0);
    app.cleanup_with(&mut procs).await;
}

rowpipe_testkit::on_databases!(a_slow_batch_is_not_taken_over_by_another_consumer: Postgres, MySql);

/// What the consumer that stores an upload's last batch had done when it died.
#[derive(Clone, Copy, PartialEq)]
enum DiedAfter {
    /// Committed; neither the completion check nor the `XACK` ran.
    Commit,
    /// Committed and acknowledged, but never checked completion (the check
    /// failed, or a consumer built before the check came first).
    Acknowledgement,
}

/// Read every entry of the stream as a consumer, store them as one batch,
/// optionally acknowledge them, and "die": no completion check.
async fn store_as_a_consumer_that_dies(app: &TestApp, id: &str, died: DiedAfter) {
    let mut con = app.redis.clone();
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(&app.group)
        .arg("died-after-commit")
        .arg("COUNT")
        .arg(10_000)
        .arg("STREAMS")
        .arg(&app.stream)
        .arg(">")
        .query_async(&mut con)
        .await
        .expect("XREADGROUP");
    let seq = app
        .store
        .upload_seq(id)
        .await
        .expect("upload seq")
        .expect("the upload is recorded");
    let entries: Vec<_> = read.keys.iter().flat_map(|k| &k.ids).collect();
    let rows: Vec<_> = entries
        .iter()
        .map(|e| {
            let entry = StreamEntry::from_map(&e.map).expect("an entry the upload wrote");
            judge(entry, seq, EmailPolicy::default())
        })
        .collect();
    app.store
        .apply_batch(&rows)
        .await
        .expect("the batch commits");
    if died == DiedAfter::Acknowledgement {
        let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
        let acked: u64 = redis::cmd("XACK")
            .arg(&app.stream)
            .arg(&app.group)
            .arg(&ids)
            .query_async(&mut con)
            .await
            .expect("XACK");
        assert_eq!(acked as usize, ids.len());
    }
}

async fn an_upload_whose_last_batch_was_never_checked_is_completed(
    backend: Backend,
    died: DiedAfter,
) {
    let app = spawn_app(backend).await;
    let file = generate_contacts(400, 20, 2, 41);
    let expected = Generated::oracle(&[&file]);
    let id = app.upload_ok(file.csv.clone()).await;
    store_as_a_consumer_that_dies(&app, &id, died).await;
    let before = app.status(&id).await;
    assert_eq!(before["counts"]["processed"], 400, "{before}");
    assert_ne!(before["status"], "completed", "{before}");

    let mut procs = Vec::new();
    match died {
        // The entries are pending on the dead consumer: a live one takes
        // them over (stored already, so only replayed), and its check after
        // the commit completes the upload.
        DiedAfter::Commit => {
            let settings = ["--claim-idle-ms", "500"];
            let mut worker = InProcessWorker::start(&app, &settings).await;
            worker
                .run_until_completed(&id, Duration::from_secs(60))
                .await;
        }
        // Nothing is pending, so no batch will check again: a consumer
        // process finds the upload done in its periodic sweep.
        DiedAfter::Acknowledgement => {
            let env = [("ROWPIPE_CLAIM_IDLE_MS", "500")];
            procs.push(app.spawn_consumer(CONSUMER_BIN, &env));
        }
    }
    let status = app.wait_completed(&id, Duration::from_secs(60)).await;
    assert_every_row_counted_once(&status, 400);
    assert_eq!(
        app.table_by_upload(std::slice::from_ref(&id)).await,
        expected
    );
    eventually(Duration::from_secs(30), "nothing pending", || async {
        app.pending().await == 0
    })
    .await;
    app.cleanup_with(&mut procs).await;
}

async fn a_consumer_that_dies_between_commit_and_acknowledgement_still_completes_the_upload(
    backend: Backend,
) {
    an_upload_whose_last_batch_was_never_checked_is_completed(backend, DiedAfter::Commit).await;
}

rowpipe_testkit::on_databases!(a_consumer_that_dies_between_commit_and_acknowledgement_still_completes_the_upload: Sqlite, Postgres, MySql);

async fn an_acknowledged_batch_whose_completion_check_never_ran_is_completed_by_the_sweep(
    backend: Backend,
) {
    an_upload_whose_last_batch_was_never_checked_is_completed(backend, DiedAfter::Acknowledgement)
        .await;
}

rowpipe_testkit::on_databases!(an_acknowledged_batch_whose_completion_check_never_ran_is_completed_by_the_sweep: Sqlite, Postgres, MySql);

async fn an_entry_stored_but_never_acknowledged_is_not_failed_when_delivered_too_often(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let file = generate_contacts(400, 20, 2, 43);
    let expected = Generated::oracle(&[&file]);
    let id = app.upload_ok(file.csv.clone()).await;
    store_as_a_consumer_that_dies(&app, &id, DiedAfter::Commit).await;
    // As if its consumers had died before `XACK` ten times over.
    let mut con = app.redis.clone();
    let pending: Vec<String> = redis::cmd("XRANGE")
        .arg(&app.stream)
        .arg("-")
        .arg("+")
        .query_async::<redis::streams::StreamRangeReply>(&mut con)
        .await
        .expect("XRANGE")
        .ids
        .into_iter()
        .map(|e| e.id)
        .collect();
    let claimed: Vec<String> = redis::cmd("XCLAIM")
        .arg(&app.stream)
        .arg(&app.group)
        .arg("died-after-commit")
        .arg(0)
        .arg(&pending)
        .arg("RETRYCOUNT")
        .arg(10)
        .arg("JUSTID")
        .query_async(&mut con)
        .await
        .expect("XCLAIM");
    assert_eq!(claimed.len(), 400);

    let env = [
        ("ROWPIPE_MAX_DELIVERIES", "3"),
        ("ROWPIPE_CLAIM_IDLE_MS", "300"),
    ];
    let mut procs = vec![app.spawn_consumer(CONSUMER_BIN, &env)];
    let status = app.wait_completed(&id, Duration::from_secs(60)).await;
    eventually(Duration::from_secs(30), "nothing pending", || async {
        app.pending().await == 0
    })
    .await;
    let status_now = app.status(&id).await;
    assert_eq!(
        status_now["counts"], status["counts"],
        "counts moved after completion"
    );
    assert_every_row_counted_once(&status_now, 400);
    assert!(
        status_now["counts"]["rejected_by_reason"]
            .get("processing_failed")
            .is_none(),
        "stored rows recorded as failed: {status_now}"
    );
    assert_eq!(dead_letters(&app).await, 0, "stored entries dead-lettered");
    assert_eq!(
        app.table_by_upload(std::slice::from_ref(&id)).await,
        expected
    );
    app.cleanup_with(&mut procs).await;
}

rowpipe_testkit::on_databases!(an_entry_stored_but_never_acknowledged_is_not_failed_when_delivered_too_often: Sqlite, Postgres, MySql);
