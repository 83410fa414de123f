//! The stream gauges (`rowpipe_stream_group_lag`, `_pending`, `_length`),
//! sampled by the upload service too.
//!
//! The consumers sample them in their housekeeping, but a consumer group
//! scaled to zero (KEDA `minReplicaCount: 0`) exports nothing, and then the
//! signal that rows are waiting would vanish exactly when nobody takes them.
//! The upload service already talks to the same stream and group, so it
//! exports the same gauges with the same labels; the alerts aggregate with
//! `max by (stream, group, shard)`, so several exporters read as one.

use std::time::Duration;

use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::stream;
use rowpipe_core::stream::Connection;
use rowpipe_core::stream::shards::Shards;

/// How often the gauges are sampled: as often as the consumers' housekeeping.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Sample each shard's group backlog once and set the gauges.
pub async fn sample(con: &mut Connection, shards: &Shards, group: &str) -> redis::RedisResult<()> {
    for shard in 0..shards.count() {
        stream::sample_backlog_gauges(con, shards, shard, group).await?;
    }
    Ok(())
}

/// Run [`sample`] every [`SAMPLE_EVERY`] until shutdown. A failed sample
/// keeps the last values (Redis errors are counted where requests meet them).
pub async fn run(mut con: Connection, shards: Shards, group: String, mut shutdown: Shutdown) {
    loop {
        if let Err(e) = sample(&mut con, &shards, &group).await {
            tracing::debug!(error = %e, "cannot sample the stream gauges; trying again later");
        }
        tokio::select! {
            _ = tokio::time::sleep(SAMPLE_EVERY) => {}
            _ = shutdown.requested() => return,
        }
    }
}
