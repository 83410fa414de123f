//! Appending rows to the stream: pipelined `XADD` in batches, with
//! backpressure on the consumer group's backlog.
//!
//! One `XADD` per row would cost one round trip per row; instead each batch
//! is one pipeline (one round trip). Before a batch is written, the stream's
//! length is compared with `max_backlog`; above it, the writer waits, the
//! bounded channel in front of it fills, and the HTTP body stops being read,
//! so Redis memory stays bounded however large or fast uploads are.
//!
//! The length, not only the unacknowledged part (lag + pending): entries
//! that every group has acknowledged still take memory until they are
//! trimmed, and at full speed the consumers' periodic trim left hundreds of
//! thousands of them. So a writer that finds the stream full first trims
//! what every group has acknowledged itself (`XTRIM MINID`, never past an
//! unacknowledged entry), and only waits for what is left.
//!
//! With `ROWPIPE_STREAM_SHARDS` > 1 each batch is split by shard (the hash
//! of each row's normalized email, see [`rowpipe_core::stream::shards`])
//! and each shard's part is one pipeline of its own, to that shard's key
//! (on a cluster, its primary), the parts written concurrently. The
//! backlog bounds are the whole stream's: each shard may hold its share
//! (the bound divided by the shard count), so no one primary holds more.
//!
//! With `ROWPIPE_REDIS_WAIT_REPLICAS=K` each pipeline ends with `WAIT K
//! timeout`, on the same connection as its `XADD`s: Redis replicates
//! asynchronously, and a primary that dies before its replica has the rows
//! would lose rows the upload had counted as enqueued. The rows are only
//! counted once K replicas confirm; when fewer do, `WAIT` is asked again
//! (after an error, the pipeline is written again: consumers record each
//! row once), and after its attempts the upload fails, resumable. Each
//! upload then has a connection of its own, since a blocked `WAIT` holds up
//! everything else sent on its connection.
//!
//! Entries are counted, and their bytes too (`ROWPIPE_MAX_BACKLOG_BYTES`,
//! read with `MEMORY USAGE … SAMPLES`): rows may be up to a mebibyte, so a
//! bound on entries alone does not bound memory. Both are measured before
//! every pipeline, the first one included, so concurrent uploads overshoot
//! the bounds by at most the one pipeline each is writing.

use std::time::{Duration, Instant};

use rowpipe_core::stream::Connection;
use rowpipe_core::stream::shards::Shards;
use rowpipe_core::stream::{self, EntryBody, StreamEntry};
use tracing::Instrument;

/// Attempts per batch before the upload fails: about 15 s of Redis outage,
/// or about 25 s of too few replicas confirming (with `WAIT`'s default
/// 1 s timeout per attempt).
const WRITE_ATTEMPTS: u32 = 10;

/// Where and how to write.
#[derive(Clone, Debug)]
pub struct EnqueueConfig {
    /// Where Redis is (for an upload's own connection, see
    /// [`Enqueuer::write`]).
    pub redis: rowpipe_core::stream::RedisTarget,
    /// The stream's shard keys (one: the stream key itself).
    pub shards: Shards,
    pub group: String,
    /// Entries the whole stream may hold before writers wait.
    pub max_backlog: u64,
    /// Bytes the whole stream may hold before writers wait.
    pub max_backlog_bytes: u64,
    /// Replicas that must confirm each pipeline (`WAIT`); 0: none.
    pub wait_replicas: u32,
    /// How long `WAIT` waits for them.
    pub wait_timeout: Duration,
}

impl EnqueueConfig {
    /// One shard's share of the bounds (entries, bytes).
    fn shard_bounds(&self) -> (u64, u64) {
        let n = self.shards.count().max(1) as u64;
        (
            self.max_backlog.div_ceil(n),
            self.max_backlog_bytes.div_ceil(n),
        )
    }
}

/// Nodes `MEMORY USAGE` samples to estimate the stream's bytes: enough for
/// a stable figure, few enough to stay a cheap call.
const MEMORY_SAMPLES: u32 = 16;

/// The stream's length and its memory in Redis (estimated), in one round
/// trip; 0 and 0 when it does not exist.
async fn measure(con: &mut Connection, stream: &str) -> redis::RedisResult<(u64, u64)> {
    let (length, bytes): (u64, Option<u64>) = redis::pipe()
        .cmd("XLEN")
        .arg(stream)
        .cmd("MEMORY")
        .arg("USAGE")
        .arg(stream)
        .arg("SAMPLES")
        .arg(MEMORY_SAMPLES)
        .query_async(con)
        .await?;
    Ok((length, bytes.unwrap_or(0)))
}

/// The ids Redis gave the first and the last entry of one write: of one
/// pipeline, or over the pipelines of all shards (the least and the
/// greatest id, by number).
///
/// Only these two are kept: they bound the upload's entries in the stream
/// (what the consumers' loss check needs), and taking them out of the
/// reply moves two strings instead of converting one per row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryIds {
    pub first: String,
    pub last: String,
}

impl EntryIds {
    /// The range covering both.
    pub fn union(self, other: EntryIds) -> EntryIds {
        use std::cmp::{max_by, min_by};
        EntryIds {
            first: min_by(self.first, other.first, |a, b| stream::compare_ids(a, b)),
            last: max_by(self.last, other.last, |a, b| stream::compare_ids(a, b)),
        }
    }

    fn widen(range: &mut Option<EntryIds>, ids: EntryIds) {
        *range = Some(match range.take() {
            Some(range) => range.union(ids),
            None => ids,
        });
    }
}

/// A pipeline's reply: the ids of its `XADD`s, and how many replicas
/// confirmed them if it ended with `WAIT` (`waited`). Server errors in it
/// were turned into an error of the whole call before this.
fn pipeline_reply(
    mut items: Vec<redis::Value>,
    waited: bool,
) -> redis::RedisResult<(EntryIds, Option<i64>)> {
    let unexpected = |what: &str| {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "an XADD pipeline's reply",
            what.to_string(),
        ))
    };
    let replicas = if waited {
        match items.pop() {
            Some(redis::Value::Int(n)) => Some(n),
            other => return Err(unexpected(&format!("WAIT replied {other:?}"))),
        }
    } else {
        None
    };
    let last = items.pop().ok_or_else(|| unexpected("no ids"))?;
    let last: String = redis::from_redis_value(last)?;
    let first = if items.is_empty() {
        last.clone()
    } else {
        redis::from_redis_value(items.swap_remove(0))?
    };
    Ok((EntryIds { first, last }, replicas))
}

/// Writes batches to the stream, waiting while the backlog is too large.
pub struct Enqueuer {
    /// One writer per shard, each with its handle on the connection.
    writers: Vec<ShardWriter>,
    routing: Shards,
    config: EnqueueConfig,
    /// Whether the writers have their own connection for `WAIT` (see
    /// [`Enqueuer::write`]).
    own_connection: bool,
    /// The ids of every entry written so far, over all shards: failed
    /// writes that wrote some shards included.
    written: Option<EntryIds>,
}

/// The writer of one shard.
struct ShardWriter {
    con: Connection,
    config: EnqueueConfig,
    /// The shard's key.
    stream: String,
}

/// Why a batch could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("shutting down while waiting for consumers to catch up")]
    ShuttingDown,
    #[error(
        "too few Redis replicas confirmed the rows ({confirmed} of the {wanted} of ROWPIPE_REDIS_WAIT_REPLICAS within {timeout_ms} ms)"
    )]
    NotReplicated {
        confirmed: i64,
        wanted: u32,
        timeout_ms: u128,
    },
}

impl Enqueuer {
    pub fn new(con: Connection, config: EnqueueConfig) -> Self {
        let writers = config
            .shards
            .keys()
            .iter()
            .map(|key| ShardWriter {
                con: con.clone(),
                config: config.clone(),
                stream: key.clone(),
            })
            .collect();
        Self {
            writers,
            routing: config.shards.clone(),
            config,
            own_connection: false,
            written: None,
        }
    }

    /// The least and the greatest id of the entries written so far (over
    /// all shards, failed writes included: what the loss check must look
    /// through).
    pub fn written(&self) -> Option<&EntryIds> {
        self.written.as_ref()
    }

    /// Write one batch, each shard's rows in one pipeline (the shards'
    /// pipelines at once), under a producer span each. On an error, the
    /// shards' parts that were written are still in [`Self::written`].
    ///
    /// With `WAIT`, the upload gets a connection of its own at its first
    /// batch: Redis answers nothing else on a connection while a `WAIT`
    /// blocks it, so on the instance's shared one every other upload's
    /// writes, the backlog measures and the probes would queue behind it.
    /// (If that connection cannot be made now, the shared one is used.)
    pub async fn write(
        &mut self,
        upload_id: &str,
        batch: &[StreamEntry],
        shutdown: &mut rowpipe_core::shutdown::Shutdown,
    ) -> Result<(), EnqueueError> {
        if batch.is_empty() {
            return Ok(());
        }
        if self.config.wait_replicas > 0 && !self.own_connection {
            match self.config.redis.connect().await {
                Ok(con) => {
                    for writer in &mut self.writers {
                        writer.con = con.clone();
                    }
                    self.own_connection = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no connection of the upload's own for WAIT; using the shared one")
                }
            }
        }
        let mut parts: Vec<Vec<&StreamEntry>> = vec![Vec::new(); self.writers.len()];
        for entry in batch {
            parts[shard_of(&self.routing, entry)].push(entry);
        }
        let writes = self
            .writers
            .iter_mut()
            .zip(parts)
            .filter(|(_, part)| !part.is_empty())
            .map(|(writer, part)| {
                let mut shutdown = shutdown.clone();
                async move { writer.write(upload_id, &part, &mut shutdown).await }
            });
        // Every shard's write runs to its end: one that fails does not
        // cancel the others, whose entries must be in the range.
        let mut failure = None;
        for (ids, result) in futures::future::join_all(writes).await {
            if let Some(ids) = ids {
                EntryIds::widen(&mut self.written, ids);
            }
            if let Err(e) = result {
                failure.get_or_insert(e);
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The shard of an entry: by its normalized email (see
/// [`Shards::for_raw_email`]); a row rejected at intake goes to shard 0.
fn shard_of(shards: &Shards, entry: &StreamEntry) -> usize {
    match &entry.body {
        EntryBody::Row(fields) => shards.for_raw_email(fields.email.as_deref()),
        EntryBody::Rejected { .. } => 0,
    }
}

impl ShardWriter {
    /// Wait until the backlog leaves room for `incoming` more rows of
    /// `incoming_bytes`. Measured every time: concurrent writers do not see
    /// each other's pipelines otherwise.
    async fn wait_for_room(
        &mut self,
        incoming: u64,
        incoming_bytes: u64,
        shutdown: &mut rowpipe_core::shutdown::Shutdown,
    ) -> Result<(), EnqueueError> {
        let mut delay = Duration::from_millis(20);
        let mut waited = false;
        let started = Instant::now();
        let (max, max_bytes) = self.config.shard_bounds();
        let mut failures = 0;
        loop {
            // A Redis that restarts or fails over is retried as the write
            // itself is (see `write`), not taken for the end of the upload.
            let (length, bytes) = match self.measure_with_trim(incoming, incoming_bytes).await {
                Ok(measured) => measured,
                Err(e) => {
                    failures += 1;
                    metrics::counter!("rowpipe_redis_errors_total", "program" => "upload")
                        .increment(1);
                    if failures >= WRITE_ATTEMPTS || shutdown.is_requested() {
                        return Err(e.into());
                    }
                    tracing::warn!(error = %e, attempt = failures, "measuring the backlog failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100) * 2u32.pow(failures.min(5)))
                        .await;
                    continue;
                }
            };
            // An empty stream takes any one pipeline, however large its rows.
            let room =
                length == 0 || (length + incoming <= max && bytes + incoming_bytes <= max_bytes);
            if room {
                if waited {
                    metrics::histogram!("rowpipe_upload_backpressure_wait_seconds")
                        .record(started.elapsed().as_secs_f64());
                }
                return Ok(());
            }
            if !waited {
                waited = true;
                metrics::counter!("rowpipe_upload_backpressure_waits_total").increment(1);
                tracing::info!(
                    stream = %self.stream,
                    backlog = length,
                    backlog_bytes = bytes,
                    max_backlog = max,
                    max_backlog_bytes = max_bytes,
                    "stream holds more than the backlog bound; waiting for consumers"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {},
                _ = shutdown.requested() => return Err(EnqueueError::ShuttingDown),
            }
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// The stream's length and bytes, after trimming what every group
    /// acknowledged if `incoming` more would not fit.
    async fn measure_with_trim(
        &mut self,
        incoming: u64,
        incoming_bytes: u64,
    ) -> redis::RedisResult<(u64, u64)> {
        let (max, max_bytes) = self.config.shard_bounds();
        let (length, bytes) = measure(&mut self.con, &self.stream).await?;
        if length + incoming <= max && bytes + incoming_bytes <= max_bytes {
            return Ok((length, bytes));
        }
        // Full: what every group acknowledged goes first (the group's
        // backlog is read only now, it costs round trips).
        let backlog = stream::backlog(&mut self.con, &self.stream, &self.config.group).await?;
        if backlog.length > backlog.unacknowledged() {
            let trimmed = stream::trim_acknowledged(&mut self.con, &self.stream).await?;
            if trimmed > 0 {
                metrics::counter!("rowpipe_stream_trimmed_total").increment(trimmed);
                return measure(&mut self.con, &self.stream).await;
            }
        }
        Ok((length, bytes))
    }

    /// Write one shard's part of a batch in one pipeline, under a producer
    /// span: the ids of the entries it wrote (if it wrote any), and whether
    /// the write succeeded (with `WAIT`: and was confirmed).
    async fn write(
        &mut self,
        upload_id: &str,
        batch: &[&StreamEntry],
        shutdown: &mut rowpipe_core::shutdown::Shutdown,
    ) -> (Option<EntryIds>, Result<(), EnqueueError>) {
        let bytes: u64 = batch.iter().map(|e| entry_bytes(e) as u64).sum();
        if let Err(e) = self
            .wait_for_room(batch.len() as u64, bytes, shutdown)
            .await
        {
            return (None, Err(e));
        }
        let first = batch.first().map(|e| e.row_number).unwrap_or(0);
        let last = batch.last().map(|e| e.row_number).unwrap_or(0);
        let span = tracing::info_span!(
            "rowpipe.enqueue",
            otel.name = format!("{} publish", self.stream),
            otel.kind = "producer",
            messaging.system = "redis",
            messaging.operation.type = "send",
            messaging.destination.name = %self.stream,
            messaging.batch.message_count = batch.len(),
            rowpipe.upload_id = %upload_id,
            rowpipe.row_number_start = first,
            rowpipe.row_number_end = last,
        );
        // The trace context goes on the pipeline's first entry only: the
        // consumer links its batch once per producer context it meets, and
        // a row is found by its upload id and row range, which both spans
        // carry (docs/runbook.md). On every entry, 55 bytes of
        // `traceparent` per row were most of tracing's cost in Redis
        // memory and CPU (docs/performance.md).
        let trace = rowpipe_core::telemetry::inject(&span);
        let mut pipe = redis::pipe();
        for (i, entry) in batch.iter().enumerate() {
            let trace: &[(String, String)] = if i == 0 { &trace } else { &[] };
            pipe.xadd(&self.stream, "*", &entry.to_fields_traced(trace));
        }
        let (wanted, timeout) = (self.config.wait_replicas, self.config.wait_timeout);
        if wanted > 0 {
            // On the connection of the XADDs (a cluster pipeline goes whole
            // to the node of its first key), so it waits for these writes.
            pipe.cmd("WAIT").arg(wanted).arg(timeout.as_millis() as u64);
        }
        // Written but not yet confirmed by enough replicas: then only WAIT
        // is asked again, on the same connection (its writes are these);
        // after an error the pipeline is written again, which is safe
        // because consumers record each (upload, row) once.
        let mut unconfirmed = false;
        let mut ids: Option<EntryIds> = None;
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let replicas = if unconfirmed {
                self.con.wait(&self.stream, wanted, timeout).await.map(Some)
            } else {
                pipe.query_async::<Vec<redis::Value>>(&mut self.con)
                    .instrument(span.clone())
                    .await
                    .and_then(|items| pipeline_reply(items, wanted > 0))
                    .map(|(written, replicas)| {
                        EntryIds::widen(&mut ids, written);
                        replicas
                    })
            };
            let error = match replicas {
                Ok(Some(confirmed)) if confirmed < wanted as i64 => {
                    unconfirmed = true;
                    metrics::counter!("rowpipe_upload_replication_shortfalls_total").increment(1);
                    EnqueueError::NotReplicated {
                        confirmed,
                        wanted,
                        timeout_ms: timeout.as_millis(),
                    }
                }
                Ok(_) => {
                    metrics::counter!("rowpipe_upload_rows_enqueued_total")
                        .increment(batch.len() as u64);
                    return (ids, Ok(()));
                }
                Err(e) => {
                    unconfirmed = false;
                    metrics::counter!("rowpipe_redis_errors_total", "program" => "upload")
                        .increment(1);
                    EnqueueError::Redis(e)
                }
            };
            if attempt >= WRITE_ATTEMPTS || shutdown.is_requested() {
                return (ids, Err(error));
            }
            tracing::warn!(error = %error, stream = %self.stream, attempt, "XADD batch failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }
}

/// About how many bytes an entry takes on the wire and in the stream: its
/// text, plus a little for the field names and numbers.
pub fn entry_bytes(entry: &StreamEntry) -> usize {
    const OVERHEAD: usize = 128;
    OVERHEAD
        + entry.upload_id.len()
        + match &entry.body {
            EntryBody::Row(fields) => {
                fields.email.as_ref().map_or(0, String::len)
                    + fields.name.as_ref().map_or(0, String::len)
                    + fields
                        .attributes
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 8)
                        .sum::<usize>()
            }
            EntryBody::Rejected { rejection, raw } => {
                rejection.message.len() + raw.iter().map(|f| f.len() + 8).sum::<usize>()
            }
        }
}
