//! Redis losing the queue: a primary that comes back empty (no persistence,
//! a failover to a replica that missed the last writes, a FLUSHALL by
//! mistake). The consumers must recreate the stream and group by
//! themselves, and new uploads must go through, without restarting rowpipe.

use std::time::Duration;

use redis::AsyncCommands;
use rowpipe_testkit::{
    AppOptions, Backend, OwnRedis, assert_every_row_counted_once, eventually, generate_contacts,
    spawn_app, spawn_app_with,
};

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

/// How the queue is lost.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// `FLUSHALL` on a live server: blocked reads are woken with an error.
    Flushall,
    /// The server killed and started again with no data: every connection
    /// drops and comes back to a server without the stream.
    RestartEmpty,
}

async fn lose_the_queue(redis: &mut OwnRedis, loss: Loss) {
    match loss {
        Loss::Flushall => {
            let client = redis::Client::open(redis.url.as_str()).expect("redis url");
            let mut con = client
                .get_multiplexed_async_connection()
                .await
                .expect("connect to the test's redis");
            let () = redis::cmd("FLUSHALL")
                .query_async(&mut con)
                .await
                .expect("FLUSHALL");
        }
        Loss::RestartEmpty => redis.restart_empty().await.expect("restart redis empty"),
    }
}

async fn the_group_heals_and_new_uploads_complete(backend: Backend, loss: Loss) {
    let mut redis = OwnRedis::start().await.expect("own redis-server");
    let app = spawn_app_with(
        backend,
        AppOptions {
            redis_url: Some(redis.url.clone()),
            ..Default::default()
        },
    )
    .await;
    // A claim idle time below the read's 1 s block makes a reclaim turn due
    // on every turn of the loop, so the heal has to work from the reclaim
    // path too (the read path is never reached while the reclaim fails).
    // One worker per process: a second one would read while the first
    // holds the reclaim turn, and heal by luck.
    let settings = [("ROWPIPE_CLAIM_IDLE_MS", "500"), ("ROWPIPE_WORKERS", "1")];
    let mut procs: Vec<_> = (0..2)
        .map(|_| app.spawn_consumer(CONSUMER_BIN, &settings))
        .collect();
    let first = generate_contacts(3_000, 10, 2, 71);
    let id = app.upload_ok(first.csv.clone()).await;
    app.wait_completed(&id, Duration::from_secs(120)).await;

    lose_the_queue(&mut redis, loss).await;
    let client = redis::Client::open(redis.url.as_str()).expect("redis url");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test's redis");

    // Nobody restarts anything: the consumers put the group back.
    eventually(Duration::from_secs(10), "the group to be recreated", || {
        let mut con = con.clone();
        let (stream, group) = (app.stream.clone(), app.group.clone());
        async move { group_exists(&mut con, &stream, &group).await }
    })
    .await;

    let second = generate_contacts(3_000, 10, 2, 72);
    let id = app.upload_ok(second.csv.clone()).await;
    let status = app.wait_completed(&id, Duration::from_secs(60)).await;
    assert_every_row_counted_once(&status, 3_000);
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
