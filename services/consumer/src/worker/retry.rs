//! Storing a batch's rows with the retry rules (see [`super`]), and
//! acknowledging them once they are stored.
//!
//! A database that is away or a lost deadlock is waited out with the batch
//! in hand (exponential backoff with jitter, nothing acknowledged); a batch
//! that fails for a data reason is tried again row by row, so one bad entry
//! holds up only itself.

use std::time::{Duration, Instant};

use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::{BatchOutcome, StoreError};
use rowpipe_core::verdict::JudgedRow;
use tracing::Instrument;

use super::{BatchReport, Worker, WorkerError};

impl Worker {
    /// Store rows with the retry rules from the module docs, then acknowledge.
    /// `ids[i]` is the stream entry of `rows[i]`.
    pub(super) async fn store_rows(
        &mut self,
        ids: Vec<String>,
        rows: Vec<JudgedRow>,
        shutdown: &Shutdown,
        report: &mut BatchReport,
    ) -> Result<(), WorkerError> {
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
                                .group
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
    ) -> Result<Option<BatchOutcome>, StoreError> {
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

    /// Acknowledge `ids`, retrying a few times with backoff.
    pub(super) async fn ack(&mut self, ids: &[String]) -> redis::RedisResult<()> {
        // The rows are committed; losing the ack only means a harmless
        // redelivery, but try hard anyway.
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=5 {
            match self.group.ack(ids).await {
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
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
