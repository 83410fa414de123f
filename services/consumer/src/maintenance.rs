//! Periodic housekeeping, one task per process: put the group back if Redis
//! lost it, sample the stream gauges,
//! trim what every group has acknowledged, forget consumers that left
//! without saying goodbye (nothing pending, idle for a long time), sweep
//! the open uploads for any that are done (see [`crate::completion`]), and
//! for any that lost rows or their upload instance (see [`crate::loss`]).

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncTypedCommands;
use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::Store;
use rowpipe_core::stream;
use rowpipe_core::stream::Connection;
use rowpipe_core::stream::shards::Shards;

use crate::config::Config;

/// Consumers idle this long with nothing pending are removed from the group.
const FORGET_IDLE: Duration = Duration::from_secs(3600);

/// One round of housekeeping on shard `shard`.
pub async fn tick(
    con: &mut Connection,
    shards: &Shards,
    shard: usize,
    group: &str,
) -> redis::RedisResult<()> {
    let stream_key = shards.key(shard);
    // A Redis that lost the queue is healed here too, within one period,
    // whatever the workers are doing (BUSYGROUP, the usual answer, is free).
    stream::ensure_group(con, stream_key, group).await?;
    stream::sample_backlog_gauges(con, shards, shard, group).await?;
    let trimmed = stream::trim_acknowledged(con, stream_key).await?;
    if trimmed > 0 {
        metrics::counter!("rowpipe_stream_trimmed_total").increment(trimmed);
        tracing::debug!(trimmed, "trimmed acknowledged entries");
    }
    if let Ok(info) = con.xinfo_consumers(stream_key, group).await {
        for c in info.consumers {
            if c.pending == 0 && c.idle as u128 > FORGET_IDLE.as_millis() {
                let _ = con.xgroup_delconsumer(stream_key, group, &c.name).await;
                tracing::info!(consumer = %c.name, "removed idle consumer with nothing pending");
            }
        }
    }
    Ok(())
}

/// Run [`tick`], the completion sweep and the loss sweep (see
/// [`crate::loss`]) every `every` until shutdown.
pub async fn run(
    store: Store,
    mut con: Connection,
    config: Arc<Config>,
    every: Duration,
    mut shutdown: Shutdown,
) {
    let group = &config.stream.group;
    let shards = config.stream.shards();
    // Housekeeping of the shards this process serves; the sweeps below look
    // at every shard, since an upload's rows are in all of them.
    let served = config.served_shards().unwrap_or_default();
    loop {
        for &shard in &served {
            if let Err(e) = tick(&mut con, &shards, shard, group).await {
                tracing::debug!(error = %e, shard, "housekeeping failed");
            }
        }
        if let Err(e) = crate::completion::sweep(&store).await {
            metrics::counter!("rowpipe_db_errors_total").increment(1);
            tracing::warn!(error = %e, "could not sweep the open uploads");
        }
        if let Err(e) = rowpipe_core::store::leases::interrupt_lapsed(
            &store,
            &mut con,
            &shards,
            config.lease.lease_ms(),
        )
        .await
        {
            tracing::warn!(error = %format!("{e:#}"), "could not look for lapsed upload leases");
        }
        let mut losses = crate::loss::LossSweep {
            store: &store,
            con: &mut con,
            shards: &shards,
            group,
            stall: config.stall(),
        };
        if let Err(e) = losses.run().await {
            tracing::warn!(error = %format!("{e:#}"), "could not sweep the uploads for lost rows");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {},
            _ = shutdown.requested() => return,
        }
    }
}
