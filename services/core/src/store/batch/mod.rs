//! Applying a batch of judged rows in one transaction.
//!
//! The rule for duplicates is deterministic: the table ends exactly as if
//! every row had been processed one at a time, uploads in acceptance order
//! (`upload_seq`) and rows in file order. Consumers commit in any order, so
//! for each email the stored row and the incoming one are compared and the
//! smaller `(upload_seq, row_number)` wins:
//!
//! 1. insert the emails nobody has (`ON CONFLICT (email) DO NOTHING`, or
//!    MySQL's no-op `ON DUPLICATE KEY UPDATE`; never `INSERT IGNORE`, which
//!    hides other errors). A concurrent insert of the same email is waited
//!    for by the unique index, then left alone;
//! 2. lock the other emails' stored rows (`SELECT … ORDER BY email FOR
//!    UPDATE`; SQLite has a single writer) and replace those held by a later
//!    row. Once rows from earlier uploads and earlier lines are in, nothing
//!    later can displace them.
//!
//! Because step 2 sees who held each email, every upload's `rows_inserted`
//! is kept exact in the same transaction, displacements included.
//!
//! Exactly-once effect under at-least-once delivery: every row leaves a trace
//! keyed by (upload, row number), and rows that already left one are passed
//! over, so a redelivered entry changes neither the table nor the counts.
//! The trace of a winner is its own `contacts` row (step 2 sees who holds
//! the email); duplicates and displaced winners go to `accepted_rows`,
//! rejects to `rejected_rows`. MySQL cannot say which rows an
//! `INSERT … ON DUPLICATE KEY UPDATE` inserted, so there `accepted_rows`
//! holds the winners too, and step 2 locks every email of the batch to
//! learn who holds it; MariaDB 10.5 and later return that from the insert
//! itself (`RETURNING` after `ON DUPLICATE KEY UPDATE` returns every row as
//! stored, each row locked), so there step 2 sends nothing. A second copy
//! of a row processed at the same time
//! by another consumer either waits on the email's index entry and then sees
//! its twin as the holder, or collides on a ledger's primary key. A
//! collision means the other copy has committed, so [`Store::apply_batch`]
//! runs the whole batch again in a fresh transaction, which finds the first
//! copy's trace. Going on one row at a time instead would not do: two
//! consumers holding the same entries (one of them after an `XAUTOCLAIM` of
//! a slow batch) collide row after row in step, and rows the other one
//! stored end as dead letters.
//!
//! # Layout
//!
//! * this file: the algorithm ([`Store::apply_batch`]), step by step;
//! * `ledger`: steps 1, 2 and 4, on `accepted_rows` and `rejected_rows`;
//! * `contacts`: step 3, on `contacts`;
//! * `sql`: the text of every statement, with a file per dialect for what
//!   only that dialect sends;
//! * `encode`: how the values travel: bound in `VALUES` lists, or packed
//!   into one parameter per column on PostgreSQL.

mod contacts;
mod encode;
mod ledger;
mod sql;

use std::collections::BTreeMap;

// The batch's maps are keyed by emails and upload ids, hashed many times a
// batch: foldhash hashes them several times faster than std's SipHash,
// still with a per-process random seed.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use sqlx::Any;

use self::encode::{CHUNK, Cell};
use super::{Dialect, Store, StoreError};
use crate::now_ms;
use crate::validate::RejectReason;
use crate::verdict::{JudgedRow, RowVerdict};

/// What a committed batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Valid rows recorded (winners and duplicates alike).
    pub accepted: u64,
    /// Rows recorded in the reject ledger.
    pub rejected: u64,
    /// Rows an earlier delivery already recorded (left unchanged).
    pub replayed: u64,
    /// Rows that became the stored row for their email (displacing or not).
    pub inserted: u64,
    /// Stored rows replaced by an earlier row (of an earlier upload, or
    /// earlier in the same file) that arrived later.
    pub displaced: u64,
    pub rejected_by_reason: BTreeMap<RejectReason, u64>,
    /// Times the batch ran again because another consumer stored some of
    /// the same rows at the same moment (see the module docs).
    pub reruns: u64,
    /// Uploads this batch touched, so the caller can try to complete them.
    pub uploads: Vec<String>,
}

/// Progress rows per upload (see [`Store::apply_batch`], step 5).
const PROGRESS_SLOTS: i64 = 64;

/// Fresh transactions [`Store::apply_batch`] tries when a ledger insert
/// collides with a copy of the same row stored at the same time. Each
/// collision means that copy committed, so a second try is normally the
/// last; the bound turns anything else into an ordinary error.
const LEDGER_COLLISION_ATTEMPTS: usize = 8;

type Tx = sqlx::Transaction<'static, Any>;

/// Add `delta` to `map[key]`, allocating the key only the first time.
fn bump(map: &mut BTreeMap<String, i64>, key: &str, delta: i64) {
    match map.get_mut(key) {
        Some(v) => *v += delta,
        None => {
            map.insert(key.to_string(), delta);
        }
    }
}

/// Who holds an email now: (upload id, upload seq, row number).
type Owner = (String, i64, i64);

/// The text of PostgreSQL's packed contacts insert (step 3a) for a chunk
/// of one upload, for testkit's `examples/pg_insert_forms.rs`, which measures it
/// against other forms of the same insert.
#[doc(hidden)]
pub fn postgres_packed_contacts_insert() -> String {
    sql::postgres::insert_contacts(true)
}

impl Store {
    /// Store a batch in one transaction; see the module docs for the rules.
    /// A collision with a copy of one of its rows stored at the same time
    /// (another consumer holding the same entries) runs the batch again.
    pub async fn apply_batch(&self, rows: &[JudgedRow]) -> Result<BatchOutcome, StoreError> {
        let mut attempt = 1;
        loop {
            match self.apply_batch_once(rows).await {
                Err(StoreError::ConcurrentDelivery(e)) if attempt < LEDGER_COLLISION_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "a row of this batch was stored concurrently; running the batch again");
                    attempt += 1;
                }
                Ok(mut outcome) => {
                    outcome.reruns = (attempt - 1) as u64;
                    return Ok(outcome);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Is this valid row the stored row for its email? That is the only
    /// trace a winner leaves outside the ledgers (see the module docs), so a
    /// caller about to record a row as failed asks first: an entry whose
    /// earlier delivery committed but was never acknowledged (its consumer
    /// died before `XACK`, again and again) is stored, not failed.
    pub async fn holds_row(&self, row: &JudgedRow) -> Result<bool, StoreError> {
        let RowVerdict::Accept { email, .. } = &row.verdict else {
            return Ok(false);
        };
        let held: Option<i64> = sqlx::query_scalar(self.q(sql::HOLDS_ROW))
            .bind(email.as_str())
            .bind(row.upload_id.as_str())
            .bind(row.row_number)
            .fetch_optional(&self.pool)
            .await?;
        Ok(held.is_some())
    }

    async fn apply_batch_once(&self, rows: &[JudgedRow]) -> Result<BatchOutcome, StoreError> {
        let mut outcome = BatchOutcome::default();
        if rows.is_empty() {
            return Ok(outcome);
        }
        let dialect = self.dialect;
        // MySQL cannot say which rows an `INSERT … ON DUPLICATE KEY UPDATE`
        // inserted, so there the ledger also holds the winners; elsewhere
        // `RETURNING` (and SQLite's single writer) tells a fresh insert from
        // a redelivered winner, and the winner's own contact row is its trace.
        let ledger_winners = dialect == Dialect::MySql;
        let mut tx = match sql::begin(dialect) {
            Some(begin) => self.pool.begin_with(begin).await?,
            None => self.pool.begin().await?,
        };
        // MariaDB 10.5+: step 3a returns who holds each email (see
        // `sql::mysql::insert_contacts_returning`), so 3b sends nothing.
        let returning = self.insert_returning(&mut tx).await?;

        // 1. Which of these rows did an earlier delivery already record in a
        //    ledger? (Redelivered winners are recognised in step 3.)
        let mut ranges: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for r in rows {
            let e = ranges
                .entry(r.upload_id.as_str())
                .or_insert((r.row_number, r.row_number));
            e.0 = e.0.min(r.row_number);
            e.1 = e.1.max(r.row_number);
        }
        let recorded = self.recorded_rows(&mut tx, &ranges).await?;
        let mut seen = recorded.held;
        // A row given up on (`processing_failed`: it failed on its own, again
        // and again) is not done: delivered again (a replay of its dead
        // letter, or its own entry redelivered), it is stored now, and its
        // failure record goes in the same transaction, so its upload's
        // counts move from rejected to inserted or duplicate.
        let mut forgotten: BTreeMap<&str, i64> = BTreeMap::new();
        // Also drops a second copy of a row within the batch (an upload that
        // re-sent a batch of `XADD`s after a partial failure).
        let mut fresh: Vec<&JudgedRow> = Vec::with_capacity(rows.len());
        for r in rows {
            let key = (r.upload_id.as_str(), r.row_number);
            if seen.insert(key) {
                if recorded.failed.contains(&key) {
                    self.forget_failed_row(&mut tx, key.0, key.1).await?;
                    *forgotten.entry(key.0).or_default() += 1;
                }
                fresh.push(r);
            } else {
                outcome.replayed += 1;
            }
        }
        // Same lock order in every transaction: fewer deadlocks between consumers.
        fresh.sort_by(|a, b| (&a.upload_id, a.row_number).cmp(&(&b.upload_id, b.row_number)));

        let now = now_ms();
        let mut rejected: Vec<&JudgedRow> = Vec::new();
        // Valid rows by email, in file order within each upload.
        let mut by_email: HashMap<&str, Vec<&JudgedRow>> = HashMap::new();
        for r in &fresh {
            match &r.verdict {
                RowVerdict::Accept { email, .. } => {
                    by_email.entry(email.as_str()).or_default().push(r)
                }
                RowVerdict::Reject { .. } => rejected.push(r),
            }
        }

        // 2. The reject ledger.
        let reject_rows: Vec<[Cell<'_>; 6]> = rejected
            .iter()
            .filter_map(|r| match &r.verdict {
                RowVerdict::Reject {
                    reason,
                    message,
                    fields,
                } => {
                    *outcome.rejected_by_reason.entry(*reason).or_default() += 1;
                    Some([
                        Cell::Text(&r.upload_id),
                        Cell::Int(r.row_number),
                        Cell::Text(reason.code()),
                        Cell::Text(message),
                        Cell::Text(fields),
                        Cell::Int(now),
                    ])
                }
                RowVerdict::Accept { .. } => None,
            })
            .collect();
        self.insert_ledger_rows(&mut tx, &sql::REJECTED_ROWS, &reject_rows)
            .await?;

        // 3. The contacts: one candidate per email (the earliest), in email order.
        let mut candidates: Vec<(&str, &JudgedRow)> = by_email
            .iter()
            .filter_map(|(email, group)| {
                group
                    .iter()
                    .min_by_key(|r| (r.upload_seq, r.row_number))
                    .map(|r| (*email, *r))
            })
            .collect();
        candidates.sort_by(|a, b| a.0.cmp(b.0));
        // Net change of each upload's stored rows (winners in, displaced out).
        let mut inserted: BTreeMap<String, i64> = BTreeMap::new();
        // Rows this batch leaves in the accepted ledger: (upload, row, email).
        let mut ledger: Vec<(&str, i64, &str)> = Vec::new();
        // Rows of this batch an earlier delivery already made the stored row.
        let mut replayed_winners: HashSet<(&str, i64)> = HashSet::new();
        let mut displaced_owners: Vec<(Owner, &str)> = Vec::new();
        for chunk in candidates.chunks(CHUNK) {
            // 3a. Insert the emails nobody has yet (a concurrent insert of the
            //     same email is waited for, then left alone).
            let inserted_now = self
                .insert_new_contacts(&mut tx, chunk, now, returning)
                .await?;
            // 3b. The others exist: lock them, and let the earlier row win.
            let owners = match inserted_now {
                contacts::Inserted::Holders(ref owners) => owners,
                _ => {
                    let to_lock: Vec<&(&str, &JudgedRow)> = chunk
                        .iter()
                        .filter(|(email, _)| inserted_now.contested(email))
                        .collect();
                    &self.lock_owners(&mut tx, &to_lock).await?
                }
            };
            for (email, r) in chunk {
                let winner = if !inserted_now.contested(email) {
                    bump(&mut inserted, &r.upload_id, 1);
                    outcome.inserted += 1;
                    Some((r.upload_id.as_str(), r.row_number))
                } else if let Some(owner) = owners.get(*email) {
                    let held_by_row =
                        |x: &JudgedRow| owner.0 == x.upload_id && owner.2 == x.row_number;
                    if held_by_row(r) && ledger_winners {
                        // Inserted by 3a (MySQL has no RETURNING; its ledger
                        // already told a redelivered winner apart in step 1).
                        bump(&mut inserted, &r.upload_id, 1);
                        outcome.inserted += 1;
                    } else if let Some(x) = by_email[*email].iter().find(|x| held_by_row(x)) {
                        // An earlier delivery of this row is the stored row.
                        replayed_winners.insert((x.upload_id.as_str(), x.row_number));
                    }
                    if (owner.1, owner.2) > (r.upload_seq, r.row_number) {
                        self.displace(&mut tx, email, r, now).await?;
                        bump(&mut inserted, &r.upload_id, 1);
                        bump(&mut inserted, &owner.0, -1);
                        outcome.inserted += 1;
                        outcome.displaced += 1;
                        if !ledger_winners {
                            displaced_owners.push((owner.clone(), *email));
                        }
                        Some((r.upload_id.as_str(), r.row_number))
                    } else {
                        // The stored row stays: every row here is a duplicate
                        // (or that very row, redelivered).
                        None
                    }
                } else {
                    None
                };
                for x in &by_email[*email] {
                    let key = (x.upload_id.as_str(), x.row_number);
                    let is_winner = winner == Some(key);
                    if replayed_winners.contains(&key) || (is_winner && !ledger_winners) {
                        continue;
                    }
                    ledger.push((x.upload_id.as_str(), x.row_number, *email));
                }
            }
        }
        ledger.extend(
            displaced_owners
                .iter()
                .map(|((upload, _, row), email)| (upload.as_str(), *row, *email)),
        );
        ledger.sort_unstable();
        // 4. The accepted ledger: duplicates (and displaced winners).
        let ledger_rows: Vec<[Cell<'_>; 3]> = ledger
            .iter()
            .map(|&(upload, row, email)| [Cell::Text(upload), Cell::Int(row), Cell::Text(email)])
            .collect();
        self.insert_ledger_rows(&mut tx, &sql::ACCEPTED_ROWS, &ledger_rows)
            .await?;
        outcome.replayed += replayed_winners.len() as u64;
        // Stored rows whose mail domain DNS could not verify (unverified.rs).
        let stored = fresh.iter().copied();
        let stored = stored.filter(|r| !replayed_winners.contains(&(&*r.upload_id, r.row_number)));
        self.record_unverified(&mut tx, stored, now).await?;

        // 5. Per-upload progress, last, into one of the upload's progress
        //    slots picked at random: concurrent batches of one upload rarely
        //    meet on a row lock (see migrations/*/0002_upload_progress.sql).
        let mut per_upload: BTreeMap<&str, (i64, i64, i64)> = BTreeMap::new();
        for r in &fresh {
            if replayed_winners.contains(&(r.upload_id.as_str(), r.row_number)) {
                continue;
            }
            let e = per_upload.entry(r.upload_id.as_str()).or_default();
            e.0 += 1;
            if matches!(r.verdict, RowVerdict::Reject { .. }) {
                e.1 += 1;
            }
        }
        for (upload, delta) in &inserted {
            per_upload.entry(upload.as_str()).or_default().2 += delta;
        }
        // Rows whose failure record step 1 removed were counted processed
        // and rejected then; this batch counts them again.
        for (upload, n) in &forgotten {
            let e = per_upload.entry(upload).or_default();
            e.0 -= n;
            e.1 -= n;
        }
        let slot: i64 = rand::random_range(0..PROGRESS_SLOTS);
        let add_progress = sql::add_progress(dialect);
        for (upload, (processed, rejected, inserted)) in &per_upload {
            sqlx::query(sqlx::AssertSqlSafe(add_progress.as_str()))
                .bind(*upload)
                .bind(slot)
                .bind(*processed)
                .bind(*rejected)
                .bind(*inserted)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;

        outcome.accepted = (fresh.len() - rejected.len()) as u64 - replayed_winners.len() as u64;
        outcome.rejected = rejected.len() as u64;
        // Every upload the batch holds, not only those it counted rows for:
        // a batch that is wholly a redelivery (its first consumer died
        // between commit and the completion check) must still complete it.
        outcome.uploads = ranges.keys().map(|u| u.to_string()).collect();
        Ok(outcome)
    }
}
