//! Naming the rows that reached the stream and were lost there.
//!
//! A Redis that comes back empty (no persistence, a failover to a replica
//! that missed the last writes, AOF `everysec` and a crash) loses entries it
//! had acknowledged to the upload service. Their upload would stay open
//! forever with `processed < enqueued`. The periodic sweep ([`sweep`])
//! finds such uploads and says which rows are gone, from the ledgers, never
//! by guessing: once nothing of an upload is left in the stream (no entry
//! of its id range undelivered or pending, [`rowpipe_core::stream::holds_range`]),
//! its rows of `1..=rows_enqueued` that no ledger holds were lost.
//!
//! * `queued` or `processing` with no progress for `ROWPIPE_STALL_SECS`:
//!   `incomplete` with the missing rows, or completed if none is missing.
//!   The stall time keeps the sweep from scanning the ledgers of an upload
//!   that is merely busy; the range check is what makes the verdict safe.
//! * `incomplete` whose counts moved since (a batch that was in hand when
//!   the queue was lost committed late): its missing rows are restated, or
//!   it is reopened and completed.
//! * `interrupted` (its instance is gone, nothing more of it will be
//!   written): its counts are settled once nothing of it is left in the
//!   stream, `rows_enqueued` raised to what the ledgers show reached it.
//!
//! An upload is looked at again only while its counts do not add up
//! (`processed + missing != enqueued`), so a settled one costs one read per
//! sweep. The same sweep marks `interrupted` the `receiving` uploads whose
//! lease lapsed ([`interrupt_lapsed`]).

use std::time::Duration;

use rowpipe_core::now_ms;
use rowpipe_core::store::accounting::rows_in;
use rowpipe_core::store::{AccountingCandidate, Store, UploadRecord, UploadStatus};
use rowpipe_core::stream;
use rowpipe_core::stream::Connection;

/// What one sweep did, for the log and the tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LossReport {
    /// Uploads marked (or restated) `incomplete`.
    pub incomplete: Vec<String>,
    /// Uploads completed because nothing turned out missing.
    pub completed: Vec<String>,
    /// `interrupted` uploads whose counts were settled.
    pub settled: Vec<String>,
}

/// Where the sweep looks, and how long an upload may sit still.
pub struct LossSweep<'a> {
    pub store: &'a Store,
    pub con: &'a mut Connection,
    pub shards: &'a stream::shards::Shards,
    pub group: &'a str,
    pub stall: Duration,
}

impl LossSweep<'_> {
    /// Look at every upload open for accounting once.
    pub async fn run(&mut self) -> anyhow::Result<LossReport> {
        let mut report = LossReport::default();
        for candidate in self.store.accounting_candidates().await? {
            // One upload that cannot be checked does not hold up the others;
            // the next sweep tries it again.
            if let Err(e) = self.check(&candidate, &mut report).await {
                tracing::warn!(upload_id = %candidate.upload_id, error = %format!("{e:#}"), "could not check the upload for lost rows");
            }
        }
        Ok(report)
    }

    async fn check(
        &mut self,
        candidate: &AccountingCandidate,
        report: &mut LossReport,
    ) -> anyhow::Result<()> {
        let id = candidate.upload_id.as_str();
        let Some(record) = self.store.get_upload(id).await? else {
            return Ok(());
        };
        let c = &record.counts;
        let open = matches!(
            record.status,
            UploadStatus::Queued | UploadStatus::Processing
        );
        if open {
            // Done (the completion sweep's), or still moving.
            let still = now_ms().saturating_sub(record.updated_at_ms);
            if c.processed >= c.enqueued || (still as u128) < self.stall.as_millis() {
                return Ok(());
            }
        } else if c.processed + c.missing == c.enqueued {
            // `incomplete` or `interrupted`, and already settled.
            return Ok(());
        }
        // The range as it is now, after the record: a resume since the
        // candidates were listed has moved both.
        let Some(range) = self.store.accounting_candidate(id).await? else {
            return Ok(());
        };
        if range.status != record.status || self.still_in_stream(&range).await? {
            return Ok(());
        }
        let accounted = self.store.accounted_rows(id).await?;
        match record.status {
            UploadStatus::Interrupted => {
                let enqueued = c.enqueued.max(accounted.max());
                let missing = accounted.missing_ranges(enqueued);
                let rows_missing = rows_in(&missing);
                if self
                    .store
                    .settle_interrupted(id, enqueued, &missing, rows_missing)
                    .await?
                {
                    tracing::info!(upload_id = %id, enqueued, rows_missing, "interrupted upload's counts settled");
                    report.settled.push(id.to_string());
                }
            }
            _ => self.name_losses(&record, &accounted, report).await?,
        }
        Ok(())
    }

    /// A `queued`, `processing` or `incomplete` upload with nothing left in
    /// the stream: `incomplete` with what the ledgers lack, or completed.
    async fn name_losses(
        &mut self,
        record: &UploadRecord,
        accounted: &rowpipe_core::store::RowSet,
        report: &mut LossReport,
    ) -> anyhow::Result<()> {
        let id = record.upload_id.as_str();
        let missing = accounted.missing_ranges(record.counts.enqueued);
        if missing.is_empty() {
            if record.status == UploadStatus::Incomplete {
                self.store.reopen_incomplete(id).await?;
            }
            if crate::completion::check(self.store, id).await? {
                report.completed.push(id.to_string());
            }
            return Ok(());
        }
        let rows_missing = rows_in(&missing);
        if !self
            .store
            .mark_incomplete(id, &missing, rows_missing)
            .await?
        {
            return Ok(());
        }
        if record.status != UploadStatus::Incomplete {
            metrics::counter!("rowpipe_uploads_incomplete_total").increment(1);
            metrics::counter!("rowpipe_uploads_total", "status" => "incomplete").increment(1);
        }
        tracing::error!(
            upload_id = %id,
            rows_missing,
            ranges = missing.len(),
            first_missing = missing[0][0],
            "upload incomplete: rows that reached the queue were lost before being processed; \
             POST the same file with the same Idempotency-Key to resume"
        );
        report.incomplete.push(id.to_string());
        Ok(())
    }

    /// Whether an entry of the upload's id range is still undelivered or
    /// pending, in any shard. The range ends at its last entry, or at the
    /// stream's tip when that was not recorded (every entry of it is at or
    /// below).
    ///
    /// With shards, the range is the upload's least and greatest id over
    /// all of them, and each shard is asked about all of it: ids of
    /// different shards come from different servers' clocks, so the range
    /// is widened by [`CLOCK_SKEW`] on both sides (an entry of a shard whose
    /// clock runs behind may be older than the first id recorded; the first
    /// id kept is the first one recorded, and a resume records its own
    /// last). Other uploads' entries in the range only delay the answer.
    async fn still_in_stream(&mut self, candidate: &AccountingCandidate) -> anyhow::Result<bool> {
        let sharded = self.shards.count() > 1;
        let last = match &candidate.last_entry_id {
            Some(last) if sharded => shift(last, CLOCK_SKEW.as_millis() as i64),
            Some(last) => Some(last.clone()),
            None => None,
        };
        let last = match last {
            Some(last) => last,
            None => stream::tip_of_shards(self.con, self.shards).await?,
        };
        let first = match &candidate.first_entry_id {
            Some(first) if sharded => shift(first, -(CLOCK_SKEW.as_millis() as i64)),
            first => first.clone(),
        };
        for key in self.shards.keys() {
            if stream::holds_range(self.con, key, self.group, first.as_deref(), &last).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The id `by_ms` milliseconds later (earlier, if negative) than `id`: the
/// start of that millisecond going back, its end going forward.
fn shift(id: &str, by_ms: i64) -> Option<String> {
    let (ms, _) = stream::parse_id(id)?;
    let ms = (ms as i64).saturating_add(by_ms).max(0) as u64;
    Some(if by_ms < 0 {
        format!("{ms}-0")
    } else {
        format!("{ms}-{}", u64::MAX)
    })
}

/// How far apart the clocks of a cluster's primaries may be for loss
/// detection to stay safe with shards (see [`LossSweep::still_in_stream`]).
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);
