//! Redis losing the queue: a primary that comes back empty (no persistence,
//! a failover to a replica that missed the last writes, a FLUSHALL by
//! mistake). The consumers must recreate the stream and group by
//! themselves, and new uploads must go through, without restarting rowpipe.

use std::time::Duration;

use redis::AsyncCommands;
use rowpipe_testkit::{
    AppOptions, Backend, OwnRedis, assert_every_row_counted_once, eventually, generate_contacts,
    spawn_app_with,
};

use crate::CONSUMER_BIN;

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
    let mut procs: Vec<_> = (0..2)
        .map(|_| app.spawn_consumer(CONSUMER_BIN, &[]))
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
