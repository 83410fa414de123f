//! The Redis side of the pipeline.
//!
//! * [`entry`]: the on-the-wire format of one row.
//! * this module: connections, and the group-wide operations both programs
//!   need (create the group, measure its backlog, trim what it acknowledged).
//! * [`group`]: one consumer's side of the group protocol (read, claim,
//!   reclaim, acknowledge, leave).
//! * [`reader`]: the consumer's own `XREADGROUP` connection and decoder.
//! * [`dead_letter`]: the format of the dead-letter stream.
//! * [`replay`]: reading it back, and replaying its rows.
//! * [`range`]: whether anything of a range of ids is still to be processed (how loss detection knows an upload's entries
//!   are all done with).
//! * [`connection`]: one server or a Redis Cluster, behind one type.
//! * [`shards`]: the stream as N keys spread over a cluster, and which
//!   shard a row goes to.
//!
//! Two kinds of connection, on purpose: blocking reads (`XREADGROUP BLOCK`)
//! hold a connection for the whole block, so they get a dedicated one
//! ([`reader::GroupReader`]) whose reply timeout follows the block time;
//! everything else shares an auto-reconnecting [`Connection`] with a
//! short timeout.

pub mod connection;
pub mod dead_letter;
pub mod entry;
pub mod group;
pub mod range;
pub mod reader;
pub mod replay;
pub mod shards;

use std::time::Duration;

use redis::{AsyncTypedCommands, ErrorKind, IntoConnectionInfo, ServerErrorKind};

pub use connection::{Connection, RedisTarget};
pub use dead_letter::DeadLetter;
pub use entry::{EntryBody, EntryError, StreamEntry};
pub use group::ConsumerGroup;
pub use range::holds_range;

/// A client whose TCP connections send at once (`TCP_NODELAY`). redis-rs
/// leaves Nagle's algorithm on by default, and a pipeline of 500 `XADD`s is
/// bigger than a TCP segment: its tail would wait for Redis's delayed ACK.
/// Its connections also probe a quiet peer ([`keepalive`]).
pub(crate) fn client(url: &str) -> redis::RedisResult<redis::Client> {
    let info = url.into_connection_info()?;
    let tcp = info
        .tcp_settings()
        .clone()
        .set_nodelay(true)
        .set_keepalive(keepalive())
        .set_user_timeout(USER_TIMEOUT);
    redis::Client::open(info.set_tcp_settings(tcp))
}

/// TCP keepalive for every Redis connection: a peer that vanished without
/// a word (a node powered off, a NAT or a load balancer that dropped the
/// flow) is noticed within about a minute (30 s idle, then 3 probes 10 s
/// apart) instead of the system default of two hours, so a blocked read or
/// a pending reply fails and the connection is made again.
/// How long data sent may go unacknowledged by the peer before the
/// connection is dropped (`TCP_USER_TIMEOUT`): keepalive covers an idle
/// connection, this one a request sent into a path that went dark.
pub(crate) const USER_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn keepalive() -> redis::io::tcp::socket2::TcpKeepalive {
    redis::io::tcp::socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10))
        .with_retries(3)
}

/// [`ensure_group`] on every shard of the stream.
pub async fn ensure_groups(
    con: &mut Connection,
    shards: &shards::Shards,
    group: &str,
) -> redis::RedisResult<()> {
    for key in shards.keys() {
        ensure_group(con, key, group).await?;
    }
    Ok(())
}

/// Create the consumer group (and the stream) if missing. Idempotent.
///
/// The group starts at `0` so entries written before the first consumer
/// existed are still delivered.
pub async fn ensure_group(
    con: &mut Connection,
    stream: &str,
    group: &str,
) -> redis::RedisResult<()> {
    match con.xgroup_create_mkstream(stream, group, "0").await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// The stream's last generated id (`XINFO STREAM`), `"0-0"` when the stream
/// is missing. Every entry ever added is at or below it, trimmed and
/// deleted ones included, so it bounds the entries of a producer that has
/// stopped writing.
pub async fn tip(con: &mut Connection, stream: &str) -> redis::RedisResult<String> {
    let reply: redis::Value = match redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(con)
        .await
    {
        Ok(v) => v,
        Err(e) if is_missing_key(&e) => return Ok("0-0".into()),
        Err(e) => return Err(e),
    };
    // RESP2 replies with a flat array of names and values, RESP3 with a map.
    let pairs: Vec<(&redis::Value, &redis::Value)> = match &reply {
        redis::Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        redis::Value::Array(items) => items.chunks_exact(2).map(|kv| (&kv[0], &kv[1])).collect(),
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .find(|(k, _)| entry::value_to_string(k) == "last-generated-id")
        .map(|(_, v)| entry::value_to_string(v))
        .ok_or_else(|| {
            redis::RedisError::from((
                ErrorKind::UnexpectedReturnType,
                "XINFO STREAM has no last-generated-id",
            ))
        })
}

/// The greatest of the shards' tips ([`tip`]): it bounds every entry
/// ever added to any of them.
pub async fn tip_of_shards(
    con: &mut Connection,
    shards: &shards::Shards,
) -> redis::RedisResult<String> {
    let mut greatest = String::from("0-0");
    for key in shards.keys() {
        let tip = tip(con, key).await?;
        greatest = std::cmp::max_by(greatest, tip, |a, b| compare_ids(a, b));
    }
    Ok(greatest)
}

/// Entry ids in stream order: by number, not text (`10-0` is after
/// `9-0`); an id that does not parse counts as `0-0`.
pub fn compare_ids(a: &str, b: &str) -> std::cmp::Ordering {
    parse_id(a)
        .unwrap_or((0, 0))
        .cmp(&parse_id(b).unwrap_or((0, 0)))
}

/// The group's view of the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupBacklog {
    /// Entries not yet delivered to any consumer of the group.
    pub lag: u64,
    /// Entries delivered but not acknowledged.
    pub pending: u64,
    /// Entries in the stream (acknowledged ones not yet trimmed included).
    pub length: u64,
}

impl std::ops::AddAssign for GroupBacklog {
    /// The backlog of two shards together.
    fn add_assign(&mut self, other: Self) {
        self.lag += other.lag;
        self.pending += other.pending;
        self.length += other.length;
    }
}

impl GroupBacklog {
    /// Everything not yet acknowledged.
    pub fn unacknowledged(&self) -> u64 {
        self.lag + self.pending
    }
}

/// Measure the group's backlog and set the stream gauges from it
/// (`rowpipe_stream_length`, `_group_lag`, `_pending`, labelled by the
/// logical stream's name, the group and the shard's index), as both
/// programs export them: the consumers in their
/// housekeeping, the upload service so that the signal outlives a group
/// scaled to zero.
pub async fn sample_backlog_gauges(
    con: &mut Connection,
    shards: &shards::Shards,
    shard: usize,
    group: &str,
) -> redis::RedisResult<GroupBacklog> {
    let backlog = backlog(con, shards.key(shard), group).await?;
    let labels = [
        ("stream", shards.stream().to_string()),
        ("group", group.to_string()),
        ("shard", shard.to_string()),
    ];
    metrics::gauge!("rowpipe_stream_length", &labels).set(backlog.length as f64);
    metrics::gauge!("rowpipe_stream_group_lag", &labels).set(backlog.lag as f64);
    metrics::gauge!("rowpipe_stream_pending", &labels).set(backlog.pending as f64);
    Ok(backlog)
}

/// Lag and pending count of `group` (lag needs Redis ≥ 7; older servers fall
/// back to the stream length, which over-estimates and so stays safe).
pub async fn backlog(
    con: &mut Connection,
    stream: &str,
    group: &str,
) -> redis::RedisResult<GroupBacklog> {
    let length = con.xlen(stream).await? as u64;
    let groups = match con.xinfo_groups(stream).await {
        Ok(g) => g.groups,
        Err(e) if is_missing_key(&e) => Vec::new(),
        Err(e) => return Err(e),
    };
    let Some(info) = groups.into_iter().find(|g| g.name == group) else {
        return Ok(GroupBacklog {
            lag: length,
            pending: 0,
            length,
        });
    };
    Ok(GroupBacklog {
        lag: info.lag.map(|l| l as u64).unwrap_or(length),
        pending: info.pending as u64,
        length,
    })
}

/// One entry of a read reply: its id and its fields in stream order.
pub type RawEntry = (String, Vec<(String, String)>);

/// Parse `"<ms>-<seq>"`.
pub fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Remove entries every group has acknowledged, and nothing else.
///
/// The safe point is the smallest of, over all groups: the oldest pending
/// entry, and the entry right after the last one delivered. Everything below
/// it has been delivered and acknowledged by every group. Returns the number
/// of entries removed.
pub async fn trim_acknowledged(con: &mut Connection, stream: &str) -> redis::RedisResult<u64> {
    let groups = match con.xinfo_groups(stream).await {
        Ok(g) => g.groups,
        Err(_) => return Ok(0),
    };
    if groups.is_empty() {
        return Ok(0);
    }
    let mut safe: Option<(u64, u64)> = None;
    let mut lower = |candidate: (u64, u64)| {
        safe = Some(match safe {
            Some(s) if s <= candidate => s,
            _ => candidate,
        });
    };
    for g in &groups {
        let Some((ms, seq)) = parse_id(&g.last_delivered_id) else {
            return Ok(0);
        };
        lower((ms, seq.saturating_add(1)));
        if g.pending > 0 {
            let reply: redis::Value = redis::cmd("XPENDING")
                .arg(stream)
                .arg(&g.name)
                .query_async(con)
                .await?;
            // [count, smallest id, greatest id, consumers]
            if let redis::Value::Array(items) = reply
                && let Some(first) = items.get(1)
            {
                match parse_id(&entry::value_to_string(first)) {
                    Some(id) => lower(id),
                    None => return Ok(0),
                }
            } else {
                return Ok(0);
            }
        }
    }
    let Some((ms, seq)) = safe else { return Ok(0) };
    if ms == 0 && seq == 0 {
        return Ok(0);
    }
    let removed: u64 = redis::cmd("XTRIM")
        .arg(stream)
        .arg("MINID")
        .arg(format!("{ms}-{seq}"))
        .query_async(con)
        .await?;
    Ok(removed)
}

/// `ERR no such key`: a missing stream is the one generic error the
/// `XINFO` commands reply with (a key of another type is `WRONGTYPE`).
pub(crate) fn is_missing_key(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
}
