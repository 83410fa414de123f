//! A sharded stream on a real Redis Cluster the test starts (3 primaries,
//! one replica each, AOF on): the table and the counts are exact through
//! several consumer processes, and through a primary killed mid-ingest.

use std::time::Duration;

use rowpipe_testkit::{
    AppOptions, Backend, ConsumerProcess, Generated, RedisCluster, TestApp, eventually,
    generate_contacts, spawn_app_with,
};

use crate::CONSUMER_BIN;

const SHARDS: u16 = 3;

async fn app_on(cluster: &RedisCluster, options: AppOptions) -> TestApp {
    spawn_app_with(
        Backend::Postgres,
        AppOptions {
            redis_url: Some(cluster.urls()),
            redis_cluster: true,
            stream_shards: SHARDS,
            ..options
        },
    )
    .await
}

/// Entries each shard's group has read (`XINFO GROUPS` `entries-read`),
/// trimmed ones included.
async fn entries_read_per_shard(app: &TestApp) -> Vec<u64> {
    let mut con = app.redis.clone();
    let mut out = Vec::new();
    for key in app.stream_config.shards().keys() {
        let reply: redis::streams::StreamInfoGroupsReply =
            redis::AsyncTypedCommands::xinfo_groups(&mut con, key)
                .await
                .expect("XINFO GROUPS on a shard");
        let read = reply
            .groups
            .iter()
            .find(|g| g.name == app.group)
            .and_then(|g| g.entries_read)
            .unwrap_or(0);
        out.push(read as u64);
    }
    out
}

/// The upload's end state: exactly the serial first-row-wins table, every
/// row counted once, nothing pending in any shard.
async fn assert_exact(app: &TestApp, id: &str, file: &Generated, status: &serde_json::Value) {
    let c = &status["counts"];
    assert_eq!(c["read"].as_u64(), Some(file.rows as u64), "{status}");
    rowpipe_testkit::assert_every_row_counted_once(status, file.rows as i64);
    assert_eq!(
        c["inserted"].as_u64(),
        Some(file.distinct.len() as u64),
        "{status}"
    );
    assert_eq!(
        c["rejected"].as_u64(),
        Some(file.invalid as u64),
        "{status}"
    );
    assert_eq!(
        c["duplicates"].as_u64(),
        Some((file.rows - file.invalid - file.distinct.len()) as u64),
        "{status}"
    );
    assert_eq!(
        app.table_by_upload(&[id.to_string()]).await,
        Generated::oracle(&[file]),
        "the table is the serial first-row-wins table"
    );
    eventually(
        Duration::from_secs(30),
        "nothing pending in any shard",
        || async { app.pending().await == 0 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sharded_stream_on_a_cluster_gives_the_serial_table_through_four_consumers() {
    let cluster = RedisCluster::start(3, 1)
        .await
        .expect("a Redis Cluster of 3 + 3");
    let app = app_on(&cluster, AppOptions::default()).await;
    // The shards' keys lie on the three primaries, one each.
    let mut primaries = Vec::new();
    for key in app.stream_config.shards().keys() {
        primaries.push(cluster.primary_of(key).await.expect("the shard's primary"));
    }
    primaries.sort_unstable();
    primaries.dedup();
    assert_eq!(primaries.len(), 3, "3 shards on 3 distinct primaries");

    let file = generate_contacts(200_000, 20, 2, 1818);
    let mut consumers: Vec<ConsumerProcess> = (0..4)
        .map(|_| app.spawn_consumer(CONSUMER_BIN, &[]))
        .collect();
    let id = app.upload_ok(file.csv.clone()).await;
    let status = app.wait_completed(&id, Duration::from_secs(600)).await;
    assert_exact(&app, &id, &file, &status).await;

    // Every shard carried its share (routing by email spreads the rows).
    let read = entries_read_per_shard(&app).await;
    assert_eq!(read.iter().sum::<u64>(), 200_000, "{read:?}");
    assert!(read.iter().all(|&n| n > 50_000), "uneven shards: {read:?}");
    app.cleanup_with(&mut consumers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_killed_mid_ingest_fails_over_and_the_table_is_still_exact() {
    let mut cluster = RedisCluster::start(3, 1)
        .await
        .expect("a Redis Cluster of 3 + 3");
    // Each pipeline waits for its replica before its rows count as
    // enqueued; a small backlog bound keeps the upload writing while the
    // consumers work, so the kill lands on both.
    let app = app_on(
        &cluster,
        AppOptions {
            max_backlog: 30_000,
            extra_args: vec!["--redis-wait-replicas".into(), "1".into()],
            ..AppOptions::default()
        },
    )
    .await;
    let file = generate_contacts(200_000, 20, 2, 1819);
    let env = [("ROWPIPE_CLAIM_IDLE_MS", "2000")];
    let mut consumers: Vec<ConsumerProcess> = (0..2)
        .map(|_| app.spawn_consumer(CONSUMER_BIN, &env))
        .collect();

    let body = file.csv.clone();
    let upload = {
        let client = app.client.clone();
        let address = app.address.clone();
        tokio::spawn(async move {
            client
                .post(format!("{address}/v1/uploads"))
                .bearer_auth(rowpipe_testkit::TOKEN)
                .header("content-type", "text/csv")
                .body(body)
                .send()
                .await
                .expect("POST /v1/uploads")
        })
    };
    // Mid-ingest: a share of the rows is stored, most are still to come.
    eventually(Duration::from_secs(120), "30,000 rows stored", || async {
        app.count("contacts").await >= 30_000
    })
    .await;
    assert!(!upload.is_finished(), "the upload ended before the kill");
    let victim_key = app.stream_config.shards().key(1).to_string();
    let killed = cluster
        .kill_primary_of(&victim_key)
        .await
        .expect("SIGKILL the primary");
    let promoted = cluster
        .wait_for_failover(&victim_key, killed, Duration::from_secs(30))
        .await
        .expect("the replica takes over");
    assert_ne!(killed, promoted);
    // The orchestrator brings the node back; it rejoins as the replica the
    // new primary's WAIT needs.
    cluster
        .restart_node(killed)
        .await
        .expect("the old primary comes back");

    let response = upload.await.expect("the upload task");
    assert_eq!(
        response.status(),
        202,
        "the upload went through the failover"
    );
    let body: serde_json::Value = response.json().await.expect("an upload's answer");
    let id = body["upload_id"]
        .as_str()
        .expect("an upload id")
        .to_string();
    let status = app.wait_completed(&id, Duration::from_secs(600)).await;
    assert_exact(&app, &id, &file, &status).await;
    // The programs were not restarted: the same processes finished the job.
    for consumer in consumers.iter_mut() {
        assert!(
            consumer.is_running(),
            "a consumer exited during the failover"
        );
    }
    app.cleanup_with(&mut consumers).await;
}

/// Each shard's group backlog (lag + pending).
async fn unacknowledged_per_shard(app: &TestApp) -> Vec<u64> {
    let mut con = app.redis.clone();
    let mut out = Vec::new();
    for key in app.stream_config.shards().keys() {
        let backlog = rowpipe_core::stream::backlog(&mut con, key, &app.group)
            .await
            .expect("a shard's backlog");
        out.push(backlog.unacknowledged());
    }
    out
}

#[tokio::test]
async fn consumers_pinned_to_shards_serve_only_theirs_and_together_finish_the_upload() {
    // Three shards on the one shared Redis (no cluster): sharding works
    // without one too.
    let app = spawn_app_with(
        Backend::Postgres,
        AppOptions {
            stream_shards: SHARDS,
            ..AppOptions::default()
        },
    )
    .await;
    let file = generate_contacts(9_000, 20, 2, 1820);
    let mut consumers = vec![app.spawn_consumer(CONSUMER_BIN, &[("ROWPIPE_SHARDS", "0")])];
    let id = app.upload_ok(file.csv.clone()).await;
    eventually(Duration::from_secs(60), "shard 0 drained", || async {
        unacknowledged_per_shard(&app).await[0] == 0
    })
    .await;
    let left = unacknowledged_per_shard(&app).await;
    assert!(
        left[1] > 0 && left[2] > 0,
        "shards 1 and 2 wait for a consumer of theirs: {left:?}"
    );
    assert_ne!(app.status(&id).await["status"], "completed");

    consumers.push(app.spawn_consumer(CONSUMER_BIN, &[("ROWPIPE_SHARDS", "1-2")]));
    let status = app.wait_completed(&id, Duration::from_secs(120)).await;
    assert_exact(&app, &id, &file, &status).await;
    app.cleanup_with(&mut consumers).await;
}
