//! One consumer-group member: read a batch, judge it, store it in one
//! transaction, acknowledge it.
//!
//! Delivery is at-least-once (`XACK` only after the commit) and the effect is
//! exactly-once (the store passes over rows it already recorded). Failures are
//! sorted into three kinds:
//!
//! * the database is unreachable or a transaction lost a deadlock: retry the
//!   same batch with exponential backoff and jitter, acknowledge nothing,
//!   report not-ready;
//! * the batch fails for a data reason: retry its rows one at a time so a
//!   single bad entry cannot block the others;
//! * an entry keeps failing (or cannot be decoded at all): after
//!   `max_deliveries` it goes to the dead-letter stream and the reject ledger
//!   (`processing_failed`), and is acknowledged; unless an earlier delivery
//!   stored it after all (its consumer died before `XACK`), then it is only
//!   acknowledged.
//!
//! Entries pending on a consumer longer than `claim_idle` are taken over by
//! another one (`XAUTOCLAIM`, one worker per process at a time: see
//! [`crate::reclaim`]), as if their consumer had died. So that a live
//! consumer's slow batch (lock waits, a database outage being waited out) is
//! not taken over, stored twice and counted as delivered again each time,
//! the worker renews its claim on the batch in hand while it works on it.
//!
//! Tests drive a worker one batch at a time with [`Worker::run_once`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt;
use redis::AsyncTypedCommands;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimOptions, StreamId};
use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::{Store, StoreError};
use rowpipe_core::stream::reader::{GroupReader, ReadGroup};
use rowpipe_core::stream::{self, StreamEntry};
use rowpipe_core::validate::RejectReason;
use rowpipe_core::verdict::{JudgedRow, RowVerdict, judge};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::Config;
use crate::reclaim::ReclaimTurns;

/// What readiness reports: the last known state of each dependency.
#[derive(Debug)]
pub struct Health {
    pub redis_ok: AtomicBool,
    pub db_ok: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            redis_ok: AtomicBool::new(true),
            db_ok: AtomicBool::new(true),
        }
    }
}

impl Health {
    pub fn ready(&self) -> bool {
        self.redis_ok.load(Ordering::Relaxed) && self.db_ok.load(Ordering::Relaxed)
    }

    fn set_db(&self, ok: bool) {
        self.db_ok.store(ok, Ordering::Relaxed);
        metrics::gauge!("rowpipe_consumer_ready").set(if self.ready() { 1.0 } else { 0.0 });
    }

    fn set_redis(&self, ok: bool) {
        self.redis_ok.store(ok, Ordering::Relaxed);
        metrics::gauge!("rowpipe_consumer_ready").set(if self.ready() { 1.0 } else { 0.0 });
    }
}

/// One entry as delivered.
struct Delivered {
    id: String,
    entry: Result<StreamEntry, String>,
    /// The fields as they came, kept only when the entry could not be
    /// decoded (for the dead-letter stream).
    raw: Vec<(String, String)>,
}

impl Delivered {
    fn from_raw((id, fields): stream::RawEntry) -> Self {
        match StreamEntry::from_fields(fields) {
            Ok(entry) => Self {
                id,
                entry: Ok(entry),
                raw: Vec::new(),
            },
            Err((e, raw)) => Self {
                id,
                entry: Err(e.to_string()),
                raw,
            },
        }
    }

    /// From `XAUTOCLAIM` output (rare: only entries of consumers that died).
    fn from_stream_id(s: StreamId) -> Self {
        let fields = stream::entry::fields_of_map(&s.map);
        Self::from_raw((s.id, fields))
    }
}

/// What one batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub entries: usize,
    pub acknowledged: usize,
    pub replayed: u64,
    pub dead_lettered: usize,
    /// Entries left pending (to be retried or reclaimed).
    pub left_pending: usize,
    pub completed_uploads: Vec<String>,
}

/// A group member.
pub struct Worker {
    name: String,
    config: Arc<Config>,
    store: Store,
    redis: ConnectionManager,
    reader: GroupReader,
    health: Arc<Health>,
    seq_cache: HashMap<String, i64>,
    reclaim_turns: Arc<ReclaimTurns>,
}

const FIRST_READ_BLOCK: Duration = Duration::from_millis(1000);

impl Worker {
    pub async fn new(
        name: String,
        config: Arc<Config>,
        store: Store,
        redis: ConnectionManager,
        health: Arc<Health>,
        reclaim_turns: Arc<ReclaimTurns>,
    ) -> anyhow::Result<Self> {
        let reader = GroupReader::connect(
            &config.stream.redis_url,
            FIRST_READ_BLOCK.max(config.batch_timeout()),
        )
        .await?;
        Ok(Self {
            name,
            config,
            store,
            redis,
            reader,
            health,
            seq_cache: HashMap::new(),
            reclaim_turns,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read one batch (waiting up to about a second for its first entry) and
    /// process it. `Ok(None)` when nothing arrived.
    pub async fn run_once(&mut self, shutdown: &Shutdown) -> anyhow::Result<Option<BatchReport>> {
        if let Some(start) = self.reclaim_turns.take() {
            let claimed = match self.reclaim(&start).await {
                Ok(claimed) => claimed,
                Err(e) => {
                    // The turn did nothing: the next worker (after the run
                    // loop's backoff) tries again instead of a whole interval later.
                    self.reclaim_turns.again();
                    return Err(e.into());
                }
            };
            if !claimed.is_empty() {
                return Ok(Some(self.process(claimed, shutdown, true).await?));
            }
        }
        let delivered = self.read_batch().await?;
        if delivered.is_empty() {
            return Ok(None);
        }
        Ok(Some(self.process(delivered, shutdown, false).await?))
    }

    async fn xreadgroup(
        &mut self,
        count: usize,
        block: Duration,
    ) -> anyhow::Result<Vec<stream::RawEntry>> {
        let request = ReadGroup {
            stream: &self.config.stream.stream,
            group: &self.config.stream.group,
            consumer: &self.name,
            count,
            block,
        };
        match self.reader.read(request).await {
            Ok(entries) => Ok(entries),
            Err(e) if e.is_no_group() => {
                // The stream or group vanished (e.g. a Redis without
                // persistence restarted): recreate and read again next time.
                tracing::warn!("consumer group missing; recreating it");
                stream::ensure_group(
                    &mut self.redis,
                    &self.config.stream.stream,
                    &self.config.stream.group,
                )
                .await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Up to `batch_size` entries: flushed when full or `batch_timeout` after
    /// the first one arrived.
    async fn read_batch(&mut self) -> anyhow::Result<Vec<Delivered>> {
        let size = self.config.batch_size;
        let mut ids = self.xreadgroup(size, FIRST_READ_BLOCK).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let timeout = self.config.batch_timeout();
        while ids.len() < size {
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            let more = self.xreadgroup(size - ids.len(), left).await?;
            if more.is_empty() {
                break;
            }
            ids.extend(more);
        }
        Ok(ids.into_iter().map(Delivered::from_raw).collect())
    }

    /// One turn's scan, from `start`, for entries left pending by consumers
    /// that died (see [`crate::reclaim`]); entries delivered too often go
    /// straight to the dead-letter stream.
    async fn reclaim(&mut self, start: &str) -> redis::RedisResult<Vec<Delivered>> {
        let opts = StreamAutoClaimOptions::default().count(self.config.batch_size);
        let reply = self
            .redis
            .xautoclaim_options(
                &self.config.stream.stream,
                &self.config.stream.group,
                &self.name,
                self.config.claim_idle().as_millis() as u64,
                start,
                opts,
            )
            .await?;
        self.reclaim_turns.finish(
            &reply.next_stream_id,
            reply.claimed.len() >= self.config.batch_size,
        );
        if reply.claimed.is_empty() {
            return Ok(Vec::new());
        }
        metrics::counter!("rowpipe_consumer_reclaimed_total").increment(reply.claimed.len() as u64);
        tracing::info!(
            count = reply.claimed.len(),
            "reclaimed entries from idle consumers"
        );
        Ok(reply
            .claimed
            .into_iter()
            .map(Delivered::from_stream_id)
            .collect())
    }

    /// How many times each entry (pending on this consumer) was delivered.
    async fn delivery_counts(
        &mut self,
        ids: &[String],
    ) -> redis::RedisResult<HashMap<String, usize>> {
        let (Some(first), Some(last)) = (
            ids.iter().min_by_key(|i| stream::parse_id(i)),
            ids.iter().max_by_key(|i| stream::parse_id(i)),
        ) else {
            return Ok(HashMap::new());
        };
        let reply = self
            .redis
            .xpending_consumer_count(
                &self.config.stream.stream,
                &self.config.stream.group,
                first,
                last,
                ids.len().max(1) * 4,
                &self.name,
            )
            .await?;
        Ok(reply
            .ids
            .into_iter()
            .map(|p| (p.id, p.times_delivered))
            .collect())
    }

    fn upload_seq_of(&self, entry: &StreamEntry) -> Option<i64> {
        entry
            .upload_seq
            .or_else(|| self.seq_cache.get(&entry.upload_id).copied())
    }

    async fn resolve_seqs(&mut self, delivered: &[Delivered]) {
        for d in delivered {
            if let Ok(e) = &d.entry
                && e.upload_seq.is_none()
                && !self.seq_cache.contains_key(&e.upload_id)
            {
                // Entries from other producers: use the upload's own sequence
                // if it is known, else order them after every known upload.
                let seq = self
                    .store
                    .upload_seq(&e.upload_id)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or(i64::MAX / 2);
                self.seq_cache.insert(e.upload_id.clone(), seq);
            }
        }
    }

    async fn process(
        &mut self,
        delivered: Vec<Delivered>,
        shutdown: &Shutdown,
        reclaimed: bool,
    ) -> anyhow::Result<BatchReport> {
        let mut report = BatchReport {
            entries: delivered.len(),
            ..Default::default()
        };
        self.resolve_seqs(&delivered).await;
        let policy = self.config.policy();
        // Fresh entries were delivered once; only reclaimed ones need counting.
        let deliveries = if reclaimed {
            self.delivery_counts(&delivered.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
                .await
                .unwrap_or_default()
        } else {
            HashMap::new()
        };

        let span = tracing::info_span!(
            "rowpipe.consume_batch",
            otel.name = format!("{} process", self.config.stream.stream),
            otel.kind = "consumer",
            messaging.system = "redis",
            messaging.operation.type = "process",
            messaging.destination.name = %self.config.stream.stream,
            messaging.consumer.group.name = %self.config.stream.group,
            messaging.batch.message_count = delivered.len(),
            rowpipe.consumer = %self.name,
            rowpipe.upload_id = tracing::field::Empty,
            rowpipe.row_number_start = tracing::field::Empty,
            rowpipe.row_number_end = tracing::field::Empty,
            rowpipe.rows_accepted = tracing::field::Empty,
            rowpipe.rows_rejected = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        rowpipe_core::telemetry::record_trace_ids(&span);
        let mut linked: HashSet<String> = HashSet::new();
        let mut ids: Vec<String> = Vec::with_capacity(delivered.len());
        let mut rows: Vec<JudgedRow> = Vec::with_capacity(delivered.len());
        let mut poison: Vec<(Delivered, String)> = Vec::new();
        for d in delivered {
            let times = deliveries.get(&d.id).copied().unwrap_or(1);
            match d.entry {
                Ok(entry) if times <= self.config.max_deliveries => {
                    // One link per producer batch: its entries share a traceparent.
                    if let Some(tp) = entry.trace.iter().find(|(k, _)| k == "traceparent")
                        && !linked.contains(&tp.1)
                        && linked.insert(tp.1.clone())
                    {
                        let cx = rowpipe_core::telemetry::extract(&entry.trace);
                        let sc = cx.span().span_context().clone();
                        if sc.is_valid() {
                            span.add_link_with_attributes(
                                sc,
                                vec![
                                    KeyValue::new("messaging.message.id", d.id.clone()),
                                    KeyValue::new("rowpipe.upload_id", entry.upload_id.clone()),
                                ],
                            );
                        }
                    }
                    let seq = self.upload_seq_of(&entry).unwrap_or(i64::MAX / 2);
                    ids.push(d.id);
                    rows.push(judge(entry, seq, policy));
                }
                Ok(entry) => {
                    let why = format!("delivered {times} times without success");
                    poison.push((
                        Delivered {
                            entry: Ok(entry),
                            ..d
                        },
                        why,
                    ));
                }
                Err(e) => {
                    let why = format!("undecodable entry: {e}");
                    poison.push((Delivered { entry: Err(e), ..d }, why));
                }
            }
        }
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            span.record("rowpipe.upload_id", first.upload_id.as_str());
            span.record("rowpipe.row_number_start", first.row_number);
            span.record("rowpipe.row_number_end", last.row_number);
        }

        let held: Vec<String> = ids
            .iter()
            .cloned()
            .chain(poison.iter().map(|(d, _)| d.id.clone()))
            .collect();
        let keep_claimed = self.keep_claimed(held);
        let work = async {
            let result = self
                .store_rows(ids, rows, shutdown, &mut report)
                .instrument(span.clone())
                .await;
            for (d, why) in poison {
                self.dead_letter(d, &why, &mut report)
                    .instrument(span.clone())
                    .await?;
            }
            result
        };
        tokio::select! {
            result = work => result?,
            never = keep_claimed => match never {},
        }
        Ok(report)
    }

    /// Renew this consumer's claim on `ids` every third of `claim_idle`
    /// until dropped. `XCLAIM … JUSTID` resets an entry's idle time without
    /// counting a delivery; its minimum idle time (half the period) leaves
    /// alone an entry another consumer has only just claimed.
    fn keep_claimed(
        &self,
        ids: Vec<String>,
    ) -> impl std::future::Future<Output = std::convert::Infallible> + 'static {
        let mut redis = self.redis.clone();
        let stream = self.config.stream.stream.clone();
        let group = self.config.stream.group.clone();
        let name = self.name.clone();
        let period = self.config.claim_idle() / 3;
        async move {
            loop {
                tokio::time::sleep(period).await;
                if ids.is_empty() {
                    continue;
                }
                let renewed: redis::RedisResult<Vec<String>> = redis::cmd("XCLAIM")
                    .arg(&stream)
                    .arg(&group)
                    .arg(&name)
                    .arg((period / 2).as_millis() as u64)
                    .arg(&ids)
                    .arg("JUSTID")
                    .query_async(&mut redis)
                    .await;
                match renewed {
                    Ok(renewed) => {
                        tracing::debug!(
                            renewed = renewed.len(),
                            "claim on the batch in hand renewed"
                        )
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not renew the claim on the batch in hand")
                    }
                }
            }
        }
    }

    /// Store rows with the retry rules from the module docs, then acknowledge.
    /// `ids[i]` is the stream entry of `rows[i]`.
    async fn store_rows(
        &mut self,
        ids: Vec<String>,
        rows: Vec<JudgedRow>,
        shutdown: &Shutdown,
        report: &mut BatchReport,
    ) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        match self.apply_with_retry(&rows, shutdown).await {
            Ok(Some(outcome)) => {
                report.replayed += outcome.replayed;
                self.after_commit(&outcome, report).await;
                self.ack(&ids).await?;
                report.acknowledged += ids.len();
                Ok(())
            }
            Ok(None) => {
                // Shutting down with the database away: leave it all pending.
                report.left_pending += ids.len();
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, rows = rows.len(), "batch failed; retrying its rows one by one");
                for (id, row) in ids.into_iter().zip(rows) {
                    match self.store.apply_batch(std::slice::from_ref(&row)).await {
                        Ok(outcome) => {
                            self.after_commit(&outcome, report).await;
                            self.ack(std::slice::from_ref(&id)).await?;
                            report.acknowledged += 1;
                        }
                        Err(e) => {
                            metrics::counter!("rowpipe_db_errors_total").increment(1);
                            let times = self
                                .delivery_counts(std::slice::from_ref(&id))
                                .await
                                .unwrap_or_default()
                                .get(&id)
                                .copied()
                                .unwrap_or(1);
                            if !e.is_transient() && times >= self.config.max_deliveries {
                                self.reject_as_failed(&id, row, &e.to_string(), report)
                                    .await?;
                            } else {
                                tracing::warn!(entry = %id, deliveries = times, error = %e, "row failed; left pending for a later attempt");
                                report.left_pending += 1;
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// `Ok(None)`: gave up because of shutdown; `Err`: a non-transient error.
    async fn apply_with_retry(
        &mut self,
        rows: &[JudgedRow],
        shutdown: &Shutdown,
    ) -> Result<Option<rowpipe_core::store::BatchOutcome>, StoreError> {
        let mut delay = Duration::from_millis(100);
        let mut failing_since: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let dialect = self.store.dialect().name();
            let span = tracing::info_span!(
                "rowpipe.db.insert",
                otel.name = "INSERT contacts",
                otel.kind = "client",
                db.system.name = dialect,
                db.operation.name = "INSERT",
                db.collection.name = "contacts",
                db.operation.batch.size = rows.len(),
            );
            let result = self.store.apply_batch(rows).instrument(span).await;
            match result {
                Ok(outcome) => {
                    metrics::histogram!("rowpipe_consumer_insert_duration_seconds")
                        .record(started.elapsed().as_secs_f64());
                    metrics::histogram!("rowpipe_consumer_batch_size").record(rows.len() as f64);
                    if failing_since.is_some() {
                        tracing::info!("database reachable again");
                    }
                    self.health.set_db(true);
                    return Ok(Some(outcome));
                }
                Err(e) if e.is_transient() => {
                    metrics::counter!("rowpipe_db_errors_total").increment(1);
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(2) {
                        self.health.set_db(false);
                    }
                    if shutdown.is_requested() {
                        return Ok(None);
                    }
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database unavailable; batch kept, nothing acknowledged");
                    let jitter = rand::random_range(0..=delay.as_millis() as u64 / 2);
                    let mut s = shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay + Duration::from_millis(jitter)) => {},
                        _ = s.requested() => return Ok(None),
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    metrics::counter!("rowpipe_db_errors_total").increment(1);
                    return Err(e);
                }
            }
        }
    }

    /// Metrics for a committed batch, and the completion check of every
    /// upload it held. The check runs before the `XACK`, so that a consumer
    /// dying in between leaves the entries pending and their redelivery
    /// (stored already, so only replayed) checks again. A check that fails
    /// is left to the sweep (see [`crate::completion`]); the entries are
    /// stored and are acknowledged all the same.
    async fn after_commit(
        &mut self,
        outcome: &rowpipe_core::store::BatchOutcome,
        report: &mut BatchReport,
    ) {
        let span = tracing::Span::current();
        span.record("rowpipe.rows_accepted", outcome.accepted);
        span.record("rowpipe.rows_rejected", outcome.rejected);
        metrics::counter!("rowpipe_consumer_rows_processed_total")
            .increment(outcome.accepted + outcome.rejected);
        if outcome.reruns > 0 {
            metrics::counter!("rowpipe_consumer_batch_reruns_total").increment(outcome.reruns);
        }
        for (reason, n) in &outcome.rejected_by_reason {
            metrics::counter!("rowpipe_consumer_rows_rejected_total", "reason" => reason.code())
                .increment(*n);
        }
        for upload in &outcome.uploads {
            match crate::completion::check(&self.store, upload).await {
                Ok(true) => report.completed_uploads.push(upload.clone()),
                Ok(false) => {}
                Err(e) => {
                    metrics::counter!("rowpipe_db_errors_total").increment(1);
                    tracing::warn!(upload_id = %upload, error = %e, "could not check upload completion; the sweep will")
                }
            }
        }
    }

    async fn ack(&mut self, ids: &[String]) -> anyhow::Result<()> {
        // The rows are committed; losing the ack only means a harmless
        // redelivery, but try hard anyway.
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=5 {
            match self
                .redis
                .xack(&self.config.stream.stream, &self.config.stream.group, ids)
                .await
            {
                Ok(_) => {
                    self.health.set_redis(true);
                    return Ok(());
                }
                Err(e) if attempt < 5 => {
                    metrics::counter!("rowpipe_redis_errors_total", "program" => "consumer")
                        .increment(1);
                    tracing::warn!(error = %e, attempt, "XACK failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Record a row that kept failing as rejected (`processing_failed`),
    /// copy it to the dead-letter stream, acknowledge it.
    async fn reject_as_failed(
        &mut self,
        id: &str,
        row: JudgedRow,
        error: &str,
        report: &mut BatchReport,
    ) -> anyhow::Result<()> {
        // An entry delivered too often may have been stored by an earlier
        // delivery whose consumer died before `XACK`: it is done, not failed.
        if self.store.holds_row(&row).await? {
            return self.ack_stored(id, report).await;
        }
        let fields = row.verdict.fields_json();
        let failed = JudgedRow {
            verdict: RowVerdict::Reject {
                reason: RejectReason::ProcessingFailed,
                message: format!("processing failed repeatedly: {error}"),
                fields: fields.clone(),
            },
            ..row
        };
        let outcome = self
            .store
            .apply_batch(std::slice::from_ref(&failed))
            .await?;
        self.after_commit(&outcome, report).await;
        if outcome.replayed > 0 {
            // Already in a ledger (a duplicate, a reject): stored before.
            return self.ack_stored(id, report).await;
        }
        let mut dl = vec![
            ("source_id".to_string(), id.to_string()),
            ("error".to_string(), error.to_string()),
            ("upload_id".to_string(), failed.upload_id.clone()),
            ("row_number".to_string(), failed.row_number.to_string()),
            ("fields".to_string(), fields),
        ];
        dl.push(("dead_lettered_by".into(), self.name.clone()));
        let _: String = self
            .redis
            .xadd(self.config.stream.dead_letter_stream(), "*", &dl)
            .await?
            .unwrap_or_default();
        self.ack(&[id.to_string()]).await?;
        metrics::counter!("rowpipe_consumer_dead_lettered_total").increment(1);
        tracing::error!(entry = %id, upload_id = %failed.upload_id, row_number = failed.row_number, error, "entry dead-lettered");
        report.dead_lettered += 1;
        report.acknowledged += 1;
        Ok(())
    }

    /// Acknowledge an entry that an earlier delivery stored.
    async fn ack_stored(&mut self, id: &str, report: &mut BatchReport) -> anyhow::Result<()> {
        self.ack(&[id.to_string()]).await?;
        tracing::info!(entry = %id, "entry delivered too often was stored by an earlier delivery; acknowledged");
        report.replayed += 1;
        report.acknowledged += 1;
        Ok(())
    }

    /// An entry that cannot be processed at all.
    async fn dead_letter(
        &mut self,
        d: Delivered,
        why: &str,
        report: &mut BatchReport,
    ) -> anyhow::Result<()> {
        if let Ok(entry) = d.entry {
            let seq = self.upload_seq_of(&entry).unwrap_or(i64::MAX / 2);
            let row = judge(entry, seq, self.config.policy());
            return self.reject_as_failed(&d.id, row, why, report).await;
        }
        let mut dl: Vec<(String, String)> = d.raw;
        dl.push(("source_id".into(), d.id.clone()));
        dl.push(("error".into(), why.to_string()));
        dl.push(("dead_lettered_by".into(), self.name.clone()));
        let _ = self
            .redis
            .xadd(self.config.stream.dead_letter_stream(), "*", &dl)
            .await?;
        self.ack(std::slice::from_ref(&d.id)).await?;
        metrics::counter!("rowpipe_consumer_dead_lettered_total").increment(1);
        tracing::error!(entry = %d.id, error = why, "undecodable entry dead-lettered");
        report.dead_lettered += 1;
        report.acknowledged += 1;
        Ok(())
    }

    /// Run until shutdown; the batch in hand is finished first.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut delay = Duration::from_millis(100);
        while !shutdown.is_requested() {
            match self.run_once(&shutdown).await {
                Ok(_) => {
                    self.health.set_redis(true);
                    delay = Duration::from_millis(100);
                }
                Err(e) => {
                    metrics::counter!("rowpipe_redis_errors_total", "program" => "consumer")
                        .increment(1);
                    self.health.set_redis(false);
                    tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "consumer loop error");
                    let mut s = shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {},
                        _ = s.requested() => {},
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
        self.leave().await;
    }

    /// Leave the group if nothing is pending on this consumer.
    pub async fn leave(&mut self) {
        let pending = self
            .redis
            .xpending_consumer_count(
                &self.config.stream.stream,
                &self.config.stream.group,
                "-",
                "+",
                1,
                &self.name,
            )
            .await
            .map(|r| r.ids.len());
        if let Ok(0) = pending {
            let _ = self
                .redis
                .xgroup_delconsumer(
                    &self.config.stream.stream,
                    &self.config.stream.group,
                    &self.name,
                )
                .await;
            tracing::info!(consumer = %self.name, "left the consumer group");
        }
    }
}
