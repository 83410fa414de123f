//! Entries given up on, each with its [`Cause`]:
//!
//! * a row the database refuses on its own, delivery after delivery
//!   ([`Cause::RowRefused`]): recorded in the reject ledger as
//!   `processing_failed` with the database's error, and dead-lettered;
//! * an entry whose upload has no record ([`Cause::UnknownUpload`]):
//!   dead-lettered only, since there is no upload to count it against;
//! * an entry that cannot be decoded ([`Cause::Undecodable`]): dead-lettered
//!   as it came.
//!
//! Each is then acknowledged. A row about to be given up on may have been
//! stored by an earlier delivery whose consumer died before `XACK`: it is
//! done, not failed, and is only acknowledged. Letters can be replayed
//! (`rowpipe dead-letters replay`, see [`rowpipe_core::stream::replay`]).

use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::StoreError;
use rowpipe_core::stream::dead_letter::{Cause, DeadLetter, Subject, encode_entry};
use rowpipe_core::validate::RejectReason;
use rowpipe_core::verdict::{JudgedRow, RowVerdict};

use super::batch::Delivered;
use super::{BatchReport, Worker, WorkerError};

impl Worker {
    /// Record a row the database keeps refusing as rejected
    /// (`processing_failed`, with the database's error), copy it to the
    /// dead-letter stream, acknowledge it.
    pub(super) async fn reject_as_failed(
        &mut self,
        id: &str,
        row: JudgedRow,
        error: &StoreError,
        shutdown: &Shutdown,
        report: &mut BatchReport,
    ) -> Result<(), WorkerError> {
        let store = &self.store;
        match self.wait_out(shutdown, || store.holds_row(&row)).await? {
            Some(true) => return self.ack_stored(id, report).await,
            Some(false) => {}
            None => {
                report.left_pending += 1;
                return Ok(());
            }
        }
        let error = format!("the database refuses this row: {error}");
        let fields = row.verdict.fields_json();
        // The entry as the stream holds it (unacknowledged, so not trimmed),
        // for a replay; a letter without it still says what failed.
        let entry = match self.group.entry(id).await {
            Ok(found) => found.map(|f| encode_entry(&f)),
            Err(e) => {
                tracing::warn!(entry = %id, error = %e, "could not read the entry back for its dead letter; it will not be replayable");
                None
            }
        };
        let failed = JudgedRow {
            verdict: RowVerdict::Reject {
                reason: RejectReason::ProcessingFailed,
                message: error.clone(),
                fields: fields.clone(),
            },
            ..row
        };
        let Some(outcome) = self
            .wait_out(shutdown, || {
                store.apply_batch(std::slice::from_ref(&failed))
            })
            .await?
        else {
            report.left_pending += 1;
            return Ok(());
        };
        self.after_commit(&outcome, report).await;
        if outcome.replayed > 0 {
            // Already in a ledger (a duplicate, a reject): stored before.
            return self.ack_stored(id, report).await;
        }
        let letter = DeadLetter {
            source_id: id,
            cause: Cause::RowRefused,
            error: &error,
            subject: Subject::Row {
                upload_id: &failed.upload_id,
                row_number: failed.row_number,
                fields: &fields,
                entry: entry.as_deref(),
            },
        };
        self.give_up(&letter, report).await?;
        tracing::error!(entry = %id, upload_id = %failed.upload_id, row_number = failed.row_number, error, "row dead-lettered");
        Ok(())
    }

    /// Acknowledge an entry that an earlier delivery stored.
    async fn ack_stored(&mut self, id: &str, report: &mut BatchReport) -> Result<(), WorkerError> {
        self.ack(&[id.to_string()]).await?;
        tracing::info!(entry = %id, "entry given up on was stored by an earlier delivery; acknowledged");
        report.replayed += 1;
        report.acknowledged += 1;
        Ok(())
    }

    /// An entry whose upload has no record: it waits (left pending, so it
    /// is delivered again later, by when the record may be there) until it
    /// has been delivered `max_deliveries` times, then is dead-lettered. It
    /// is never stored under an invented sequence.
    pub(super) async fn unknown_upload(
        &mut self,
        d: Delivered,
        deliveries: usize,
        report: &mut BatchReport,
    ) -> Result<(), WorkerError> {
        let Ok(entry) = &d.entry else {
            return Ok(());
        };
        if deliveries < self.config.max_deliveries {
            tracing::warn!(entry = %d.id, upload_id = %entry.upload_id, deliveries, "the entry's upload has no record; left pending for a later delivery");
            report.left_pending += 1;
            return Ok(());
        }
        let error = format!(
            "upload {} has no record (delivered {deliveries} times)",
            entry.upload_id
        );
        let fields = entry.original_fields_json();
        let encoded = encode_entry(&entry.to_fields());
        let letter = DeadLetter {
            source_id: &d.id,
            cause: Cause::UnknownUpload,
            error: &error,
            subject: Subject::Row {
                upload_id: &entry.upload_id,
                row_number: entry.row_number,
                fields: &fields,
                entry: Some(&encoded),
            },
        };
        self.give_up(&letter, report).await?;
        tracing::error!(entry = %d.id, upload_id = %entry.upload_id, row_number = entry.row_number, "entry of an unknown upload dead-lettered");
        Ok(())
    }

    /// An entry that cannot be decoded.
    pub(super) async fn dead_letter_undecodable(
        &mut self,
        d: Delivered,
        why: &str,
        report: &mut BatchReport,
    ) -> Result<(), WorkerError> {
        let letter = DeadLetter {
            source_id: &d.id,
            cause: Cause::Undecodable,
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
        let max_len = self.config.dead_letter_max_len;
        self.group.dead_letter(&stream, max_len, letter).await?;
        self.ack(&[letter.source_id.to_string()]).await?;
        metrics::counter!("rowpipe_consumer_dead_lettered_total", "cause" => letter.cause.code())
            .increment(1);
        report.dead_lettered += 1;
        report.acknowledged += 1;
        Ok(())
    }
}
