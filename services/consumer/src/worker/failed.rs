//! Entries given up on: a row that kept failing goes to the reject ledger
//! (`processing_failed`) and the dead-letter stream, an entry that cannot be
//! decoded to the dead-letter stream only; both are then acknowledged.
//!
//! An entry delivered too often may have been stored by an earlier delivery
//! whose consumer died before `XACK`: it is done, not failed, and is only
//! acknowledged.

use rowpipe_core::stream::dead_letter::{DeadLetter, Subject};
use rowpipe_core::validate::RejectReason;
use rowpipe_core::verdict::{JudgedRow, RowVerdict, judge};

use super::batch::Delivered;
use super::{BatchReport, Worker, WorkerError};

impl Worker {
    /// Record a row that kept failing as rejected (`processing_failed`),
    /// copy it to the dead-letter stream, acknowledge it.
    pub(super) async fn reject_as_failed(
        &mut self,
        id: &str,
        row: JudgedRow,
        error: &str,
        report: &mut BatchReport,
    ) -> Result<(), WorkerError> {
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
        let letter = DeadLetter {
            source_id: id,
            error,
            subject: Subject::Row {
                upload_id: &failed.upload_id,
                row_number: failed.row_number,
                fields: &fields,
            },
        };
        self.give_up(&letter, report).await?;
        tracing::error!(entry = %id, upload_id = %failed.upload_id, row_number = failed.row_number, error, "entry dead-lettered");
        Ok(())
    }

    /// Acknowledge an entry that an earlier delivery stored.
    async fn ack_stored(&mut self, id: &str, report: &mut BatchReport) -> Result<(), WorkerError> {
        self.ack(&[id.to_string()]).await?;
        tracing::info!(entry = %id, "entry delivered too often was stored by an earlier delivery; acknowledged");
        report.replayed += 1;
        report.acknowledged += 1;
        Ok(())
    }

    /// An entry that cannot be processed at all: delivered too often, or
    /// undecodable.
    pub(super) async fn dead_letter(
        &mut self,
        d: Delivered,
        why: &str,
        report: &mut BatchReport,
    ) -> Result<(), WorkerError> {
        if let Ok(entry) = d.entry {
            let seq = self.upload_seq_of(&entry).unwrap_or(i64::MAX / 2);
            let row = judge(entry, seq, self.config.policy());
            return self.reject_as_failed(&d.id, row, why, report).await;
        }
        let letter = DeadLetter {
            source_id: &d.id,
            error: why,
            subject: Subject::Undecodable(&d.raw),
        };
        self.give_up(&letter, report).await?;
        tracing::error!(entry = %d.id, error = why, "undecodable entry dead-lettered");
        Ok(())
    }

    /// Write the dead letter, then acknowledge the entry it stands for.
    async fn give_up(
        &mut self,
        letter: &DeadLetter<'_>,
        report: &mut BatchReport,
    ) -> Result<(), WorkerError> {
        let stream = self.config.stream.dead_letter_stream();
        self.group.dead_letter(&stream, letter).await?;
        self.ack(&[letter.source_id.to_string()]).await?;
        metrics::counter!("rowpipe_consumer_dead_lettered_total").increment(1);
        report.dead_lettered += 1;
        report.acknowledged += 1;
        Ok(())
    }
}
