//! One batch from delivery to report: sort the entries into rows to store
//! and entries to give up on, judge the rows, trace the batch (one link per
//! producer batch), hold the claim on it while it is worked on, and what a
//! commit leads to (metrics and the completion check of its uploads).

use std::collections::{HashMap, HashSet};

use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt;
use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::{BatchOutcome, StoreError};
use rowpipe_core::stream::{RawEntry, StreamEntry};
use rowpipe_core::verdict::judge;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::bisect::Pending;
use super::{BatchReport, Worker, WorkerError};

/// One entry as delivered.
pub(super) struct Delivered {
    pub(super) id: String,
    pub(super) entry: Result<StreamEntry, String>,
    /// The fields as they came, kept only when the entry could not be
    /// decoded (for the dead-letter stream).
    pub(super) raw: Vec<(String, String)>,
}

impl Delivered {
    pub(super) fn from_raw((id, fields): RawEntry) -> Self {
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
}

/// A batch sorted by [`Worker::sort`].
struct Sorted {
    /// Rows to store.
    pending: Pending,
    /// Decoded entries whose upload has no record, with their delivery
    /// counts.
    unknown_upload: Vec<(Delivered, usize)>,
    /// Entries that cannot be decoded, and why.
    undecodable: Vec<(Delivered, String)>,
}

impl Worker {
    pub(super) async fn process(
        &mut self,
        delivered: Vec<Delivered>,
        shutdown: &Shutdown,
        reclaimed: bool,
    ) -> Result<BatchReport, WorkerError> {
        let mut report = BatchReport {
            entries: delivered.len(),
            ..Default::default()
        };
        // Fresh entries were delivered once; only reclaimed ones need counting.
        let deliveries = if reclaimed {
            self.group
                .delivery_counts(&delivered.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
                .await
                .unwrap_or_default()
        } else {
            HashMap::new()
        };

        let span = tracing::info_span!(
            "rowpipe.consume_batch",
            otel.name = format!("{} process", self.group.stream()),
            otel.kind = "consumer",
            messaging.system = "redis",
            messaging.operation.type = "process",
            messaging.destination.name = %self.group.stream(),
            messaging.consumer.group.name = %self.config.stream.group,
            messaging.batch.message_count = delivered.len(),
            rowpipe.consumer = %self.group.consumer(),
            rowpipe.upload_id = tracing::field::Empty,
            rowpipe.row_number_start = tracing::field::Empty,
            rowpipe.row_number_end = tracing::field::Empty,
            rowpipe.rows_accepted = tracing::field::Empty,
            rowpipe.rows_rejected = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        rowpipe_core::telemetry::record_trace_ids(&span);

        // The claim is held from the start: looking up the uploads may wait
        // out a database outage as well as storing the rows. A third of
        // `claim_idle`: a renewal can fail or come late and the next one
        // still lands before the batch is idle long enough to be taken over.
        let held: Vec<String> = delivered.iter().map(|d| d.id.clone()).collect();
        let calls = self.calls.clone();
        let unanswered_after = self.config.database.unanswered_after();
        let keep_claimed = self
            .group
            .keep_claimed(held, self.config.claim_idle() / 3, move || {
                unanswered_after.is_none_or(|limit| !calls.stuck_longer_than(limit))
            });
        let work = async {
            if !self.resolve_seqs(&delivered, shutdown).await? {
                // Shutting down with the database away: leave it all pending.
                report.left_pending += delivered.len();
                return Ok(());
            }
            let Sorted {
                mut pending,
                unknown_upload,
                undecodable,
            } = self.sort(delivered, &deliveries, &span);
            // ROWPIPE_CHECK_MAIL_DOMAIN: the batch's domains, looked up per
            // domain before the rows are stored (crate::mail_domain).
            if let Some(check) = &self.mail_domains {
                let redelivered = reclaimed.then_some(&self.store);
                check.check(&mut pending.rows, redelivered).await?;
            }
            if let (Some(first), Some(last)) = (pending.rows.first(), pending.rows.last()) {
                span.record("rowpipe.upload_id", first.upload_id.as_str());
                span.record("rowpipe.row_number_start", first.row_number);
                span.record("rowpipe.row_number_end", last.row_number);
            }
            let result = self
                .store_rows(pending, shutdown, &mut report)
                .instrument(span.clone())
                .await;
            for (d, why) in undecodable {
                self.dead_letter_undecodable(d, &why, &mut report)
                    .instrument(span.clone())
                    .await?;
            }
            for (d, times) in unknown_upload {
                self.unknown_upload(d, times, &mut report)
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

    /// Judge the entries in delivery order, each with its upload's
    /// sequence; set aside those whose upload has no record and those that
    /// cannot be decoded. Links the batch's span to each producer batch it
    /// holds entries of.
    fn sort(
        &self,
        delivered: Vec<Delivered>,
        deliveries: &HashMap<String, usize>,
        span: &tracing::Span,
    ) -> Sorted {
        let policy = self.config.policy();
        let mut linked: HashSet<String> = HashSet::new();
        let mut pending = Pending::default();
        let mut unknown_upload: Vec<(Delivered, usize)> = Vec::new();
        let mut undecodable: Vec<(Delivered, String)> = Vec::new();
        for d in delivered {
            let times = deliveries.get(&d.id).copied().unwrap_or(1);
            let entry = match d.entry {
                Ok(entry) => entry,
                Err(e) => {
                    let why = format!("undecodable entry: {e}");
                    undecodable.push((Delivered { entry: Err(e), ..d }, why));
                    continue;
                }
            };
            let Some(seq) = self.upload_seq_of(&entry.upload_id) else {
                unknown_upload.push((
                    Delivered {
                        entry: Ok(entry),
                        ..d
                    },
                    times,
                ));
                continue;
            };
            // One link per producer batch: rowpipe's upload puts its
            // context on the batch's first entry only; a foreign producer's
            // entries may each carry one, and equal ones link once.
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
            pending.push(d.id, judge(entry, seq, policy), times);
        }
        Sorted {
            pending,
            unknown_upload,
            undecodable,
        }
    }

    /// Metrics for a committed batch, and the completion check of every
    /// upload it held. The check runs before the `XACK`, so that a consumer
    /// dying in between leaves the entries pending and their redelivery
    /// (stored already, so only replayed) checks again. A check that fails
    /// is left to the sweep (see [`crate::completion`]); the entries are
    /// stored and are acknowledged all the same.
    pub(super) async fn after_commit(&mut self, outcome: &BatchOutcome, report: &mut BatchReport) {
        let span = tracing::Span::current();
        span.record("rowpipe.rows_accepted", outcome.accepted);
        span.record("rowpipe.rows_rejected", outcome.rejected);
        metrics::counter!("rowpipe_consumer_rows_processed_total")
            .increment(outcome.accepted + outcome.rejected);
        // Per batch, so rates move while an upload is in progress. A row that
        // displaces a stored one is inserted and the displaced one becomes a
        // duplicate, so over an upload these add up to its final counts.
        let stored = outcome.inserted.saturating_sub(outcome.displaced);
        metrics::counter!("rowpipe_consumer_rows_inserted_total").increment(stored);
        metrics::counter!("rowpipe_consumer_rows_duplicate_total")
            .increment(outcome.accepted.saturating_sub(stored));
        if outcome.reruns > 0 {
            metrics::counter!("rowpipe_consumer_batch_reruns_total").increment(outcome.reruns);
        }
        for (reason, n) in &outcome.rejected_by_reason {
            metrics::counter!("rowpipe_consumer_rows_rejected_total", "reason" => reason.code())
                .increment(*n);
        }
        for upload in &outcome.uploads {
            self.calls.begin();
            let checked = self
                .store
                .call(crate::completion::check(&self.store, upload))
                .await;
            self.calls
                .end(checked.as_ref().err().is_none_or(StoreError::was_answered));
            match checked {
                Ok(true) => report.completed_uploads.push(upload.clone()),
                Ok(false) => {}
                Err(e) => {
                    let fault = super::outage::fault_label(e.fault());
                    metrics::counter!("rowpipe_db_errors_total", "fault" => fault).increment(1);
                    tracing::warn!(upload_id = %upload, error = %e, "could not check upload completion; the sweep will")
                }
            }
        }
    }
}
