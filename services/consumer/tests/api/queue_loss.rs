//! Redis losing the queue: a primary that comes back empty (no persistence,
//! a failover to a replica that missed the last writes, a FLUSHALL by
//! mistake), or with AOF `everysec` without its last second. The consumers
//! must recreate the stream and group by themselves, and new uploads must
//! go through, without restarting rowpipe; an upload whose entries were
//! lost must end naming exactly the rows that were, and a resume with its
//! `Idempotency-Key` must complete it with the table one clean pass leaves.

use std::time::Duration;

use redis::AsyncCommands;
use rowpipe_testkit::{
    AppOptions, Backend, ConsumerProcess, Generated, OwnRedis, TestApp,
    assert_every_row_counted_once, eventually, generate_contacts, spawn_app, spawn_app_with,
};
use serde_json::Value;

use crate::CONSUMER_BIN;
use crate::in_process::InProcessWorker;

/// True when `group` exists on `stream`.
async fn group_exists(
    con: &mut redis::aio::MultiplexedConnection,
    stream: &str,
    group: &str,
) -> bool {
    let groups: redis::RedisResult<redis::streams::StreamInfoGroupsReply> =
        con.xinfo_groups(stream).await;
    groups.is_ok_and(|g| g.groups.iter().any(|g| g.name == group))
}

/// A connection of the test's own to `redis`.
async fn connect(redis: &OwnRedis) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url.as_str()).expect("redis url");
    client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test's redis")
}

/// The test app on `redis`, with `options` otherwise.
async fn app_on(backend: Backend, redis: &OwnRedis, options: AppOptions) -> TestApp {
    spawn_app_with(
        backend,
        AppOptions {
            redis_url: Some(redis.url.clone()),
            ..options
        },
    )
    .await
}

/// Two consumer processes with `settings`.
fn two_consumers(app: &TestApp, settings: &[(&str, &str)]) -> Vec<ConsumerProcess> {
    (0..2)
        .map(|_| app.spawn_consumer(CONSUMER_BIN, settings))
        .collect()
}

/// How the queue is lost.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// `FLUSHALL` on a live server: blocked reads are woken with an error.
    Flushall,
    /// The server killed and started again with no data: every connection
    /// drops and comes back to a server without the stream.
    RestartEmpty,
}

/// Lose the queue on `redis`, the test's own server (never the shared one:
/// `OwnRedis` runs a redis-server of its own on a free port).
async fn lose_the_queue(redis: &mut OwnRedis, loss: Loss) {
    match loss {
        Loss::Flushall => {
            assert_ne!(
                redis.url,
                rowpipe_testkit::redis_url(),
                "FLUSHALL only on the test's own redis-server"
            );
            let mut con = connect(redis).await;
            let () = redis::cmd("FLUSHALL")
                .query_async(&mut con)
                .await
                .expect("FLUSHALL");
        }
        Loss::RestartEmpty => redis.restart_empty().await.expect("restart redis empty"),
    }
}

/// POST `body` once the upload service answers again after the loss: its
/// shared connection fails the first command after Redis went away (503,
/// `unavailable`, as a client would be told to retry) and reconnects.
async fn upload_after_the_loss(app: &TestApp, body: Vec<u8>) -> String {
    let started = std::time::Instant::now();
    loop {
        let resp = app.upload_csv(body.clone()).await;
        let code = resp.status().as_u16();
        let json: Value = resp.json().await.expect("json body");
        if code == 202 {
            return json["upload_id"].as_str().expect("upload_id").to_string();
        }
        assert!(
            code == 503 && started.elapsed() < Duration::from_secs(10),
            "upload refused: {code} {json}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// After the loss: the consumers put the group back by themselves within
/// 10 s, and a new upload of 3,000 rows (`seed`) completes with every row
/// counted once; that file and its upload id.
async fn the_group_heals_and_a_new_upload_completes(
    app: &TestApp,
    con: &redis::aio::MultiplexedConnection,
    seed: u64,
) -> (Generated, String) {
    // Nobody restarts anything: the consumers put the group back.
    eventually(Duration::from_secs(10), "the group to be recreated", || {
        let mut con = con.clone();
        let (stream, group) = (app.stream.clone(), app.group.clone());
        async move { group_exists(&mut con, &stream, &group).await }
    })
    .await;
    let second = generate_contacts(3_000, 10, 2, seed);
    let id = upload_after_the_loss(app, second.csv.clone()).await;
    let status = app.wait_completed(&id, Duration::from_secs(60)).await;
    assert_every_row_counted_once(&status, 3_000);
    (second, id)
}

async fn the_group_heals_and_new_uploads_complete(backend: Backend, loss: Loss) {
    let mut redis = OwnRedis::start().await.expect("own redis-server");
    let app = app_on(backend, &redis, AppOptions::default()).await;
    // A claim idle time below the read's 1 s block makes a reclaim turn due
    // on every turn of the loop, so the heal has to work from the reclaim
    // path too (the read path is never reached while the reclaim fails).
    // One worker per process: a second one would read while the first
    // holds the reclaim turn, and heal by luck.
    let settings = [("ROWPIPE_CLAIM_IDLE_MS", "500"), ("ROWPIPE_WORKERS", "1")];
    let mut procs = two_consumers(&app, &settings);
    let first = generate_contacts(3_000, 10, 2, 71);
    let id = app.upload_ok(first.csv.clone()).await;
    app.wait_completed(&id, Duration::from_secs(120)).await;

    lose_the_queue(&mut redis, loss).await;
    let mut con = connect(&redis).await;
    the_group_heals_and_a_new_upload_completes(&app, &con, 72).await;
    eventually(Duration::from_secs(30), "nothing pending", || async {
        app.pending().await == 0
    })
    .await;
    let _: redis::RedisResult<()> = con.del(&app.stream).await;
    app.cleanup_with(&mut procs).await;
}

async fn a_flushed_redis_is_healed_and_new_uploads_complete(backend: Backend) {
    the_group_heals_and_new_uploads_complete(backend, Loss::Flushall).await;
}

rowpipe_testkit::on_databases!(a_flushed_redis_is_healed_and_new_uploads_complete: Sqlite, Postgres);

async fn a_redis_restarted_empty_is_healed_and_new_uploads_complete(backend: Backend) {
    the_group_heals_and_new_uploads_complete(backend, Loss::RestartEmpty).await;
}

rowpipe_testkit::on_databases!(a_redis_restarted_empty_is_healed_and_new_uploads_complete: Sqlite, Postgres);

/// A worker whose every turn starts with a reclaim (the claim idle time is
/// below the read's block, and a failed reclaim turn is due again at once)
/// still puts a vanished group back and goes on by itself: the heal does not
/// depend on reaching the read.
async fn a_reclaim_turn_that_meets_nogroup_heals_the_group(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut worker = InProcessWorker::start(&app, &["--claim-idle-ms", "500"]).await;
    let client = redis::Client::open(app.redis_url.as_str()).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    assert!(group_exists(&mut con, &app.stream, &app.group).await);
    let _: () = con.del(&app.stream).await.expect("DEL the stream");
    // Past the reclaim interval: the next turn is a reclaim turn.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut errors = Vec::new();
    for _ in 0..5 {
        if let Err(e) = worker.turn().await {
            errors.push(e.to_string());
        }
        if group_exists(&mut con, &app.stream, &app.group).await {
            break;
        }
    }
    assert!(
        group_exists(&mut con, &app.stream, &app.group).await,
        "the group is still missing after five turns: {errors:?}"
    );
    let data = generate_contacts(500, 10, 2, 73);
    let id = app.upload_ok(data.csv.clone()).await;
    worker
        .run_until_completed(&id, Duration::from_secs(60))
        .await;
    let status = app.status(&id).await;
    assert_every_row_counted_once(&status, 500);
    app.cleanup().await;
}

rowpipe_testkit::on_databases!(a_reclaim_turn_that_meets_nogroup_heals_the_group: Sqlite);

/// The rows of `upload` no ledger holds, out of `1..=upto`, as inclusive
/// ranges: read straight from the test's database, not through the store.
async fn unaccounted(app: &TestApp, upload: &str, upto: i64) -> Vec<[i64; 2]> {
    let mut held = std::collections::BTreeSet::new();
    for table in ["contacts", "accepted_rows", "rejected_rows"] {
        let sql = app.store.dialect().sql(&format!(
            "SELECT \"row_number\" FROM {table} WHERE upload_id = ?"
        ));
        let rows: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(upload)
            .fetch_all(app.store.pool())
            .await
            .expect("read a ledger");
        held.extend(rows);
    }
    let mut ranges: Vec<[i64; 2]> = Vec::new();
    for row in (1..=upto).filter(|r| !held.contains(r)) {
        match ranges.last_mut() {
            Some(last) if last[1] + 1 == row => last[1] = row,
            _ => ranges.push([row, row]),
        }
    }
    ranges
}

/// Poll until `id`'s status is one of `wanted`; the status body.
async fn wait_status(app: &TestApp, id: &str, wanted: &[&str], timeout: Duration) -> Value {
    let started = std::time::Instant::now();
    loop {
        let s = app.status(id).await;
        if wanted.iter().any(|w| s["status"] == *w) {
            return s;
        }
        assert!(
            started.elapsed() < timeout,
            "upload {id} not {wanted:?} after {timeout:?}: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// POST `body` under `key` (the first attempt or a resume); the upload id.
async fn post_keyed(app: &TestApp, key: &str, body: Vec<u8>) -> String {
    let resp = app.upload_csv_keyed(key, body).await;
    let code = resp.status().as_u16();
    let json: Value = resp.json().await.expect("json body");
    assert_eq!(code, 202, "upload refused: {json}");
    json["upload_id"].as_str().expect("upload_id").to_string()
}

/// An upload that ended for want of rows (`incomplete` or `interrupted`)
/// names exactly the rows no ledger holds, and counts them.
async fn assert_losses_named(app: &TestApp, id: &str, status: &Value) {
    let enqueued = status["counts"]["enqueued"].as_i64().expect("enqueued");
    let expected = unaccounted(app, id, enqueued).await;
    let named: Vec<[i64; 2]> =
        serde_json::from_value(status["missing_rows"].clone()).expect("missing_rows");
    assert_eq!(
        named, expected,
        "the missing rows are the unaccounted ones: {status}"
    );
    let count: i64 = expected.iter().map(|[a, b]| b - a + 1).sum();
    assert_eq!(
        status["counts"]["missing"].as_i64(),
        Some(count),
        "{status}"
    );
}

const LOSS_SETTINGS: [(&str, &str); 4] = [
    ("ROWPIPE_CLAIM_IDLE_MS", "500"),
    ("ROWPIPE_WORKERS", "1"),
    ("ROWPIPE_STALL_SECS", "2"),
    ("ROWPIPE_BATCH_SIZE", "50"),
];

/// Redis restarted empty while the consumers are half way through an
/// upload: the group comes back, a new upload completes, the first one
/// becomes `incomplete` naming exactly the rows that were lost, and the
/// resume POST with its key completes it with the one-pass table.
async fn rows_lost_in_an_emptied_redis_are_named_and_resumed(backend: Backend) {
    let mut redis = OwnRedis::start().await.expect("own redis-server");
    let app = app_on(backend, &redis, AppOptions::default()).await;
    let first = generate_contacts(30_000, 10, 2, 81);
    // Every row in the stream before any consumer runs, so the loss is
    // certain to catch some of them there.
    let key = format!("loss-{}", uuid::Uuid::new_v4().simple());
    let id = post_keyed(&app, &key, first.csv.clone()).await;
    wait_status(&app, &id, &["queued"], Duration::from_secs(60)).await;
    let mut procs = two_consumers(&app, &LOSS_SETTINGS);
    eventually(
        Duration::from_secs(60),
        "the consumers to be under way",
        || async {
            app.status(&id).await["counts"]["processed"]
                .as_i64()
                .is_some_and(|p| p >= 1_000)
        },
    )
    .await;
    redis.restart_empty().await.expect("restart redis empty");
    let processed_then = app.status(&id).await["counts"]["processed"]
        .as_i64()
        .unwrap_or(0);
    assert!(
        processed_then < 30_000,
        "the loss came too late to lose anything"
    );

    let mut con = connect(&redis).await;
    let (second, id2) = the_group_heals_and_a_new_upload_completes(&app, &con, 82).await;

    let status = wait_status(&app, &id, &["incomplete"], Duration::from_secs(60)).await;
    assert_losses_named(&app, &id, &status).await;
    assert!(
        status["counts"]["missing"].as_i64().unwrap_or(0) > 0,
        "entries were in the stream when it was emptied: {status}"
    );

    // The resume: same key, same upload, only the missing rows enqueued.
    assert_eq!(post_keyed(&app, &key, first.csv.clone()).await, id);
    let done = app.wait_completed(&id, Duration::from_secs(120)).await;
    assert_every_row_counted_once(&done, 30_000);
    assert_eq!(done["counts"]["missing"].as_i64(), Some(0), "{done}");
    assert_eq!(
        app.table_by_upload(&[&id, &id2]).await,
        Generated::oracle(&[&first, &second]),
        "the table is the one-pass table"
    );
    assert!(app.receiving_past_lease(Duration::ZERO).await.is_empty());
    let _: redis::RedisResult<()> = con.del(&app.stream).await;
    app.cleanup_with(&mut procs).await;
}

rowpipe_testkit::on_databases!(rows_lost_in_an_emptied_redis_are_named_and_resumed: Sqlite, Postgres);

/// Redis with AOF `everysec` killed with SIGKILL, with its host, while an
/// upload is being processed, right after its last write: it comes back
/// without the last second of writes it had acknowledged. Whatever that lost is named (the upload ends
/// `incomplete`, or `interrupted` if the upload service met the outage,
/// with exactly the unaccounted rows), and the resume POST completes it
/// with the one-pass table; if nothing was lost it simply completes.
async fn writes_an_everysec_redis_lost_are_named_and_resumable(backend: Backend) {
    let mut redis = OwnRedis::start_everysec().await.expect("own redis-server");
    let app = app_on(
        backend,
        &redis,
        AppOptions {
            upload_lease_secs: 3,
            ..Default::default()
        },
    )
    .await;
    let mut procs = two_consumers(&app, &LOSS_SETTINGS);
    let file = generate_contacts(60_000, 10, 2, 83);
    let key = format!("aof-{}", uuid::Uuid::new_v4().simple());
    // The host crashes right after the upload's last write was
    // acknowledged, while the consumers are far behind: the AOF's last
    // second, never fsynced, is gone (about the last tenth of the upload's
    // entries, and the group's last moves).
    let id = post_keyed(&app, &key, file.csv.clone()).await;
    let before = app.status(&id).await;
    redis
        .crash_losing_tail(600_000)
        .await
        .expect("kill -9 and restart redis without its AOF's tail");
    let status = wait_status(
        &app,
        &id,
        &["completed", "incomplete", "interrupted"],
        Duration::from_secs(120),
    )
    .await;
    // An interrupted upload is named once its counts add up.
    let status = if status["status"] == "interrupted" {
        let mut settled = status;
        let started = std::time::Instant::now();
        loop {
            let c = &settled["counts"];
            let n = |k: &str| c[k].as_i64().unwrap_or(-1);
            if n("processed") + n("missing") == n("enqueued") {
                break settled;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "not settled: {settled}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            settled = app.status(&id).await;
        }
    } else {
        status
    };
    eprintln!(
        "aof everysec crash: processed {} of 60000 at the crash; upload {}, missing {}",
        before["counts"]["processed"], status["status"], status["counts"]["missing"]
    );
    if status["status"] != "completed" {
        assert_losses_named(&app, &id, &status).await;
        assert_eq!(post_keyed(&app, &key, file.csv.clone()).await, id);
    }
    let done = app.wait_completed(&id, Duration::from_secs(180)).await;
    assert_every_row_counted_once(&done, 60_000);
    assert_eq!(
        app.table_by_upload(&[&id]).await,
        Generated::oracle(&[&file])
    );
    assert!(
        app.receiving_past_lease(Duration::from_secs(3))
            .await
            .is_empty()
    );
    app.cleanup_with(&mut procs).await;
}

rowpipe_testkit::on_databases!(writes_an_everysec_redis_lost_are_named_and_resumable: Sqlite, Postgres);
