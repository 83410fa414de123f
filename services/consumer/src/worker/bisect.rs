//! Storing a batch's rows when the database refuses some of them: split the
//! batch, never walk it row by row.
//!
//! The whole batch is tried first (one transaction). If the database
//! refuses it, for a reason that is not an outage (those are waited out by
//! [`super::outage`]), it is split in halves and each half is tried on its
//! own, and so on down to single rows; a half whose first half went in
//! whole holds what failed, so it is split without being tried. One
//! refused row in 1,000 costs 15 to 20 transactions, every other row
//! stored on the way. A row is at fault only once it fails alone:
//!
//! * with an error about its values or a constraint ([`Fault::Row`]);
//! * or with an error the database did not classify ([`Fault::Unknown`]),
//!   when the database works (rows beside it were stored meanwhile, or it
//!   answers a ping): this row is what it refuses. If nothing could be
//!   stored and the database does not answer, it is what fails: that is
//!   waited out like an outage.
//!
//! A row at fault is left pending for a later delivery until it has been
//! delivered `max_deliveries` times; then it is given up on, recorded as
//! `processing_failed` with the database's error and dead-lettered (see
//! [`super::failed`]). Entries delivered more than `max_deliveries` times
//! are tried alone from the start, so that one that keeps failing (or
//! keeps killing its consumer) holds up only itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::{Fault, StoreError};
use rowpipe_core::verdict::JudgedRow;

use super::outage::{Backoff, NOT_READY_AFTER};
use super::{BatchReport, Worker, WorkerError};

/// Rows to store, with their stream entries and delivery counts.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) ids: Vec<String>,
    pub(super) rows: Vec<JudgedRow>,
    pub(super) deliveries: Vec<usize>,
}

impl Pending {
    pub(super) fn push(&mut self, id: String, row: JudgedRow, deliveries: usize) {
        self.ids.push(id);
        self.rows.push(row);
        self.deliveries.push(deliveries);
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    /// The first half and the rest.
    fn split(mut self) -> (Pending, Pending) {
        let at = self.len() / 2;
        let rest = Pending {
            ids: self.ids.split_off(at),
            rows: self.rows.split_off(at),
            deliveries: self.deliveries.split_off(at),
        };
        (self, rest)
    }

    fn singles(self) -> impl Iterator<Item = Pending> {
        self.ids
            .into_iter()
            .zip(self.rows)
            .zip(self.deliveries)
            .map(|((id, row), deliveries)| Pending {
                ids: vec![id],
                rows: vec![row],
                deliveries: vec![deliveries],
            })
    }
}

/// Where a part came from: a split records whether the first half went in
/// whole, which tells the second half it holds what failed.
enum Half {
    Whole,
    First(Arc<AtomicBool>),
    Second(Arc<AtomicBool>),
}

/// Split `part` and push its halves, the first on top.
fn push_halves(parts: &mut Vec<(Pending, Half)>, part: Pending) {
    metrics::counter!("rowpipe_consumer_batch_splits_total").increment(1);
    let (first, rest) = part.split();
    let went_in = Arc::new(AtomicBool::new(false));
    parts.push((rest, Half::Second(went_in.clone())));
    parts.push((first, Half::First(went_in)));
}

/// A single row that failed alone, for a reason not yet decided.
struct Undecided {
    id: String,
    row: JudgedRow,
    deliveries: usize,
    error: StoreError,
}

impl Worker {
    /// Store `pending` by the rules in the module docs, acknowledging what
    /// is stored.
    pub(super) async fn store_rows(
        &mut self,
        pending: Pending,
        shutdown: &Shutdown,
        report: &mut BatchReport,
    ) -> Result<(), WorkerError> {
        let max = self.config.max_deliveries;
        let (mut suspects, mut regular) = (Pending::default(), Pending::default());
        for ((id, row), times) in pending
            .ids
            .into_iter()
            .zip(pending.rows)
            .zip(pending.deliveries)
        {
            let part = if times > max {
                &mut suspects
            } else {
                &mut regular
            };
            part.push(id, row, times);
        }
        // Last in, first out: the regular rows first, then each suspect alone.
        let mut parts: Vec<(Pending, Half)> =
            suspects.singles().map(|p| (p, Half::Whole)).collect();
        parts.reverse();
        parts.push((regular, Half::Whole));

        let mut stored_any = false;
        let mut backoff = Backoff::new();
        loop {
            let mut undecided: Vec<Undecided> = Vec::new();
            while let Some((part, half)) = parts.pop() {
                if part.len() == 0 {
                    continue;
                }
                // Its first half went in whole, so what failed its parent
                // is in here: split it without trying it whole.
                if let Half::Second(first_went_in) = &half
                    && first_went_in.load(Ordering::Relaxed)
                    && part.len() > 1
                {
                    push_halves(&mut parts, part);
                    continue;
                }
                report.store_attempts += 1;
                match self.apply(&part.rows, shutdown).await {
                    Ok(Some(outcome)) => {
                        stored_any = true;
                        if let Half::First(went_in) = &half {
                            went_in.store(true, Ordering::Relaxed);
                        }
                        report.replayed += outcome.replayed;
                        self.after_commit(&outcome, report).await;
                        self.ack(&part.ids).await?;
                        report.acknowledged += part.len();
                    }
                    Ok(None) => {
                        // Shutting down with the database away: leave it all pending.
                        report.left_pending += part.len()
                            + parts.iter().map(|(p, _)| p.len()).sum::<usize>()
                            + undecided.len();
                        return Ok(());
                    }
                    Err(e) if part.len() > 1 => {
                        tracing::debug!(error = %e, rows = part.len(), "the database refused a batch; splitting it");
                        push_halves(&mut parts, part);
                    }
                    Err(error) => undecided.extend(part.into_undecided(error)),
                }
            }
            // An error the database did not classify blames the row when
            // the database works: rows beside it went in, or it answers.
            let unclassified = undecided.iter().any(|u| u.error.fault() == Fault::Unknown);
            let database_works =
                stored_any || (unclassified && self.store.call(self.store.ping()).await.is_ok());
            let (at_fault, unexplained): (Vec<Undecided>, Vec<Undecided>) =
                undecided.into_iter().partition(|u| match u.error.fault() {
                    Fault::Row => true,
                    Fault::Unknown => database_works,
                    Fault::Outage => false,
                });
            for u in at_fault {
                self.refused_row(u, shutdown, report).await?;
            }
            let Some(first) = unexplained.first() else {
                return Ok(());
            };
            // Nothing this batch held could be stored, the database did not
            // say why, and it does not answer: it is what fails. Wait, then
            // try again.
            tracing::warn!(error = %first.error, code = %first.error.code(), rows = unexplained.len(), "the database refuses every row of the batch without saying why; waiting it out as an outage");
            if backoff.outage_started().elapsed() >= NOT_READY_AFTER {
                self.health.database_down(&first.error);
            }
            if !backoff.wait("database", shutdown).await {
                report.left_pending += unexplained.len();
                return Ok(());
            }
            let mut again = Pending::default();
            for u in unexplained {
                again.push(u.id, u.row, u.deliveries);
            }
            parts.push((again, Half::Whole));
        }
    }

    /// A row the database refuses on its own: given up on once it has been
    /// delivered `max_deliveries` times, else left pending for the next.
    async fn refused_row(
        &mut self,
        u: Undecided,
        shutdown: &Shutdown,
        report: &mut BatchReport,
    ) -> Result<(), WorkerError> {
        if u.deliveries >= self.config.max_deliveries {
            return self
                .reject_as_failed(&u.id, u.row, &u.error, shutdown, report)
                .await;
        }
        tracing::warn!(entry = %u.id, upload_id = %u.row.upload_id, row_number = u.row.row_number, deliveries = u.deliveries, error = %u.error, "the database refuses this row; left pending for a later delivery");
        report.left_pending += 1;
        Ok(())
    }
}

impl Pending {
    /// A part of one row that failed, as an [`Undecided`].
    fn into_undecided(mut self, error: StoreError) -> Option<Undecided> {
        Some(Undecided {
            id: self.ids.pop()?,
            row: self.rows.pop()?,
            deliveries: self.deliveries.pop()?,
            error,
        })
    }
}
