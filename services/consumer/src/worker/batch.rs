//! One batch from delivery to report: sort the entries into rows to store
//! and entries to give up on, judge the rows, trace the batch (one link per
//! producer batch), hold the claim on it while it is worked on, and what a
//! commit leads to (metrics and the completion check of its uploads).

use std::collections::{HashMap, HashSet};

use opentelemetry::KeyValue;
use opentelemetry::trace::TraceContextExt;
use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::BatchOutcome;
use rowpipe_core::stream::{RawEntry, StreamEntry};
use rowpipe_core::verdict::{JudgedRow, judge};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

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
    /// `ids[i]` is the stream entry of `rows[i]`.
    ids: Vec<String>,
    rows: Vec<JudgedRow>,
    /// Entries to give up on, and why.
    poison: Vec<(Delivered, String)>,
}

impl Worker {
    pub(super) fn upload_seq_of(&self, entry: &StreamEntry) -> Option<i64> {
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
        self.resolve_seqs(&delivered).await;
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
            otel.name = format!("{} process", self.config.stream.stream),
            otel.kind = "consumer",
            messaging.system = "redis",
            messaging.operation.type = "process",
            messaging.destination.name = %self.config.stream.stream,
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
        let Sorted {
            ids,
            mut rows,
            poison,
        } = self.sort(delivered, &deliveries, &span);
        // ROWPIPE_CHECK_MAIL_DOMAIN: the batch's domains, looked up per
        // domain before the rows are stored (crate::mail_domain).
        if let Some(check) = &self.mail_domains {
            let redelivered = reclaimed.then_some(&self.store);
            check.check(&mut rows, redelivered).await?;
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
        // A third of `claim_idle`: a renewal can fail or come late and the
        // next one still lands before the batch is idle long enough to be
        // taken over.
        let keep_claimed = self.group.keep_claimed(held, self.config.claim_idle() / 3);
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

    /// Judge the entries still worth trying, in delivery order; set aside
    /// those delivered too often or undecodable. Links the batch's span to
    /// each producer batch it holds entries of.
    fn sort(
        &self,
        delivered: Vec<Delivered>,
        deliveries: &HashMap<String, usize>,
        span: &tracing::Span,
    ) -> Sorted {
        let policy = self.config.policy();
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
        Sorted { ids, rows, poison }
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
}
