//! Waiting out an outage of the database with the batch in hand, and
//! acknowledging what is stored.
//!
//! A call that fails for a reason about the database as a whole
//! ([`Fault::Outage`]: it is away, read-only, refuses this client, is out
//! of resources, timed out, lost a deadlock) says nothing about the rows: it
//! is tried again with exponential backoff and jitter, for as long as it
//! takes. The caller holds its claim on the batch meanwhile (see
//! [`super::batch`]), nothing is acknowledged and no delivery is counted
//! against the rows; after two seconds the process reports the database
//! not ready. Every call runs within [`Store::call`]'s deadline, so a call
//! that never returns ends as an outage too.

use std::future::Future;
use std::time::{Duration, Instant};

use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::{BatchOutcome, Fault, Store, StoreError};
use rowpipe_core::verdict::JudgedRow;
use tracing::Instrument;

use super::Worker;

/// How long an outage lasts before readiness says so: a lost deadlock or a
/// dropped connection is retried at once and is not worth a probe failure.
pub(super) const NOT_READY_AFTER: Duration = Duration::from_secs(2);
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(10);

/// Exponential backoff with jitter, for the waits of one outage.
pub(super) struct Backoff {
    delay: Duration,
    since: Option<Instant>,
}

impl Backoff {
    pub(super) fn new() -> Self {
        Self {
            delay: FIRST_DELAY,
            since: None,
        }
    }

    /// Since when the outage has lasted.
    pub(super) fn outage_started(&mut self) -> Instant {
        self.outage_started_at(Instant::now())
    }

    /// Since when the outage has lasted, `at` if it starts now.
    pub(super) fn outage_started_at(&mut self, at: Instant) -> Instant {
        *self.since.get_or_insert(at)
    }

    pub(super) fn in_outage(&self) -> bool {
        self.since.is_some()
    }

    /// Sleep before the next try (up to half as long again, at random, so
    /// that consumers do not retry in step); `false` if shutdown came first.
    /// The time waited is counted under `dependency`.
    pub(super) async fn wait(&mut self, dependency: &'static str, shutdown: &Shutdown) -> bool {
        let jitter = rand::random_range(0..=self.delay.as_millis() as u64 / 2);
        let pause = self.delay + Duration::from_millis(jitter);
        self.delay = (self.delay * 2).min(MAX_DELAY);
        let started = Instant::now();
        let mut s = shutdown.clone();
        let slept = tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = s.requested() => false,
        };
        metrics::histogram!("rowpipe_consumer_outage_wait_seconds", "dependency" => dependency)
            .record(started.elapsed().as_secs_f64());
        slept
    }
}

/// The `fault` label of `rowpipe_db_errors_total`.
pub(super) fn fault_label(fault: Fault) -> &'static str {
    match fault {
        Fault::Outage => "outage",
        Fault::Row => "row",
        Fault::Unknown => "unknown",
    }
}

impl Worker {
    /// Run `call` until it succeeds or fails for a reason that is not an
    /// outage (see the module docs). `Ok(None)`: shutdown came first.
    pub(super) async fn wait_out<T, Fut>(
        &self,
        shutdown: &Shutdown,
        mut call: impl FnMut() -> Fut,
    ) -> Result<Option<T>, StoreError>
    where
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = Backoff::new();
        loop {
            let started = Instant::now();
            self.calls.begin();
            let result = self.store.call(call()).await;
            self.calls
                .end(result.as_ref().err().is_none_or(StoreError::was_answered));
            let error = match result {
                Ok(value) => {
                    if backoff.in_outage() {
                        let lasted = backoff.outage_started().elapsed();
                        tracing::info!(
                            outage_ms = lasted.as_millis() as u64,
                            "database reachable again"
                        );
                    }
                    self.health.set_db(true);
                    return Ok(Some(value));
                }
                Err(e) => e,
            };
            let fault = error.fault();
            metrics::counter!("rowpipe_db_errors_total", "fault" => fault_label(fault))
                .increment(1);
            if fault != Fault::Outage {
                return Err(error);
            }
            // Time spent in the failing call is outage time too (a lock
            // timeout, a call deadline).
            metrics::histogram!("rowpipe_consumer_outage_wait_seconds", "dependency" => "database")
                .record(started.elapsed().as_secs_f64());
            // The outage began when the call that met it did: a call that
            // hung until its deadline is a long outage already.
            if backoff.outage_started_at(started).elapsed() >= NOT_READY_AFTER {
                self.health.database_down(&error);
            }
            if shutdown.is_requested() {
                return Ok(None);
            }
            tracing::warn!(error = %error, code = %error.code(), "database unavailable; batch kept, claim held, nothing acknowledged");
            if !backoff.wait("database", shutdown).await {
                return Ok(None);
            }
        }
    }

    /// Store rows in one transaction (see [`Store::apply_batch`]), waiting
    /// out an outage. `Ok(None)`: shutdown came first; `Err`: the database
    /// refused the rows (or said nothing of why): not an outage.
    pub(super) async fn apply(
        &self,
        rows: &[JudgedRow],
        shutdown: &Shutdown,
    ) -> Result<Option<BatchOutcome>, StoreError> {
        let store: &Store = &self.store;
        let dialect = store.dialect().name();
        self.wait_out(shutdown, || {
            let span = tracing::info_span!(
                "rowpipe.db.insert",
                otel.name = "INSERT contacts",
                otel.kind = "client",
                db.system.name = dialect,
                db.operation.name = "INSERT",
                db.collection.name = "contacts",
                db.operation.batch.size = rows.len(),
            );
            let started = Instant::now();
            async move {
                let outcome = store.apply_batch(rows).await?;
                metrics::histogram!("rowpipe_consumer_insert_duration_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("rowpipe_consumer_batch_size").record(rows.len() as f64);
                Ok(outcome)
            }
            .instrument(span)
        })
        .await
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
