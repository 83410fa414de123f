//! Which rows of an upload left a trace, and naming the ones that did not.
//!
//! Rows are numbered `1..=n` in file order and each becomes exactly one
//! stream entry, so what reached the stream is a prefix of the file. A row
//! is accounted for once a ledger holds it: `contacts` (the winners, on
//! PostgreSQL and SQLite), `accepted_rows` (duplicates and displaced rows,
//! and on MySQL every accepted row) or `rejected_rows`. Once nothing of an
//! upload is left in the stream (see [`crate::stream::holds_range`]), the
//! rows of that prefix with no trace were lost: the upload is marked
//! `incomplete` with them ([`Store::mark_incomplete`]), or, if it was
//! `interrupted`, its counts are settled ([`Store::settle_interrupted`]).
//! A resume enqueues again exactly the rows [`Store::accounted_rows`] does
//! not hold.

use futures::TryStreamExt;
use sqlx::Executor;

use super::{Dialect, Store, StoreError, UploadStatus};
use crate::now_ms;

/// A set of row numbers (each at least 1), one bit per row: an upload of
/// ten million rows takes 1.25 MB, whatever the order rows arrive in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RowSet {
    words: Vec<u64>,
    len: i64,
    max: i64,
}

impl RowSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add row `row`; numbers below 1 are not row numbers and are ignored.
    pub fn insert(&mut self, row: i64) {
        let Some((word, bit)) = Self::slot(row) else {
            return;
        };
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        if self.words[word] & bit == 0 {
            self.words[word] |= bit;
            self.len += 1;
            self.max = self.max.max(row);
        }
    }

    pub fn contains(&self, row: i64) -> bool {
        Self::slot(row)
            .is_some_and(|(word, bit)| self.words.get(word).is_some_and(|w| w & bit != 0))
    }

    /// How many rows the set holds.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The greatest row in the set; 0 when it is empty.
    pub fn max(&self) -> i64 {
        self.max
    }

    /// The rows of `1..=upto` not in the set, as inclusive ranges
    /// `[first, last]` in order.
    pub fn missing_ranges(&self, upto: i64) -> Vec<[i64; 2]> {
        let mut ranges: Vec<[i64; 2]> = Vec::new();
        let mut row = 1;
        while row <= upto {
            if self.contains(row) {
                row += 1;
                continue;
            }
            // Past the set's largest row nothing is accounted for: the range
            // runs to `upto` at once.
            let start = row;
            while row <= upto && !self.contains(row) {
                if row > self.max {
                    row = upto + 1;
                    break;
                }
                row += 1;
            }
            ranges.push([start, row - 1]);
        }
        ranges
    }

    fn slot(row: i64) -> Option<(usize, u64)> {
        let index = usize::try_from(row.checked_sub(1)?).ok()?;
        Some((index / 64, 1u64 << (index % 64)))
    }
}

/// How many rows `ranges` (inclusive, as [`RowSet::missing_ranges`] gives
/// them) cover.
pub fn rows_in(ranges: &[[i64; 2]]) -> i64 {
    ranges.iter().map(|[a, b]| b - a + 1).sum()
}

/// An upload the loss sweep looks at: open for accounting, with the ids
/// that bound its entries in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountingCandidate {
    pub upload_id: String,
    pub status: UploadStatus,
    /// `None`: from the start of the stream.
    pub first_entry_id: Option<String>,
    /// `None`: not recorded (the stream's tip bounds it).
    pub last_entry_id: Option<String>,
}

/// The ledgers that hold an upload's rows, each keyed by
/// `(upload_id, row_number)` in its own way.
const LEDGERS: [&str; 3] = ["contacts", "accepted_rows", "rejected_rows"];

impl Store {
    /// The row numbers of `upload_id` that some ledger holds. Each ledger's
    /// rows are streamed from the database, never gathered into one reply.
    ///
    /// A large upload's scan can outlast the sessions' statement timeout
    /// (`contacts` has no index on the upload), so it runs on a connection
    /// of its own without one, closed afterwards rather than handed back
    /// to the pool with that setting.
    pub async fn accounted_rows(&self, upload_id: &str) -> Result<RowSet, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let unbounded = match self.dialect {
            Dialect::Postgres => Some("SET statement_timeout = 0"),
            Dialect::MySql => Some("SET SESSION max_statement_time = 0"),
            Dialect::Sqlite => None,
        };
        if let Some(sql) = unbounded
            && let Err(e) = conn.execute(sql).await
        {
            // MySQL has no max_statement_time (and no statement timeout
            // for it to lift).
            tracing::debug!(error = %e, "statement timeout not lifted for the accounting scan");
        }
        let mut set = RowSet::new();
        for table in LEDGERS {
            let sql = self.q(&format!(
                "SELECT \"row_number\" FROM {table} WHERE upload_id = ?"
            ));
            let mut rows = sqlx::query_scalar::<_, i64>(sql)
                .bind(upload_id)
                .fetch(&mut *conn);
            while let Some(row) = rows.try_next().await? {
                set.insert(row);
            }
        }
        if unbounded.is_some() {
            let _ = conn.close().await;
        }
        Ok(set)
    }

    /// The uploads whose rows may still need accounting: being processed
    /// (`queued`, `processing`), or ended by a loss whose count can still
    /// change (`incomplete`, `interrupted`).
    pub async fn accounting_candidates(&self) -> Result<Vec<AccountingCandidate>, StoreError> {
        self.select_candidates(
            "status IN ('queued', 'processing', 'incomplete', 'interrupted')",
            None,
        )
        .await
    }

    /// Upload `id` as a candidate, read now: its status and entry-id range
    /// as they are after a record read, so a sweep never checks a fresh
    /// record against the range of an earlier attempt.
    pub async fn accounting_candidate(
        &self,
        id: &str,
    ) -> Result<Option<AccountingCandidate>, StoreError> {
        Ok(self.select_candidates("id = ?", Some(id)).await?.pop())
    }

    async fn select_candidates(
        &self,
        condition: &str,
        id: Option<&str>,
    ) -> Result<Vec<AccountingCandidate>, StoreError> {
        let sql = self.q(&format!(
            "SELECT id, status, first_entry_id, last_entry_id FROM uploads \
             WHERE {condition} ORDER BY seq"
        ));
        let mut query = sqlx::query_as(sql);
        if let Some(id) = id {
            query = query.bind(id);
        }
        let rows: Vec<(String, String, Option<String>, Option<String>)> =
            query.fetch_all(&self.pool).await?;
        Ok(rows
            .into_iter()
            .map(|(upload_id, status, first, last)| AccountingCandidate {
                upload_id,
                status: UploadStatus::parse(&status),
                first_entry_id: first,
                last_entry_id: last,
            })
            .collect())
    }

    /// Mark upload `id` `incomplete`: `rows_missing` rows that reached the
    /// stream (the rows of `missing`) left it without being processed. Only
    /// while it is still being processed (`queued`, `processing`), or when
    /// it is `incomplete` with another count (its missing rows restated);
    /// false otherwise, so of several sweeps finding the same loss one
    /// reports it.
    pub async fn mark_incomplete(
        &self,
        id: &str,
        missing: &[[i64; 2]],
        rows_missing: i64,
    ) -> Result<bool, StoreError> {
        let json = serde_json::to_string(missing).unwrap_or_else(|_| "[]".into());
        let error = format!(
            "{rows_missing} rows reached the queue and were lost before being processed \
             (see missing_rows); POST the same file with the same Idempotency-Key to resume"
        );
        let marked = sqlx::query(self.q(
            "UPDATE uploads SET status = 'incomplete', rows_missing = ?, missing_rows = ?, \
             error = ?, updated_at_ms = ? \
             WHERE id = ? AND (status IN ('queued', 'processing') \
             OR (status = 'incomplete' AND rows_missing <> ?))",
        ))
        .bind(rows_missing)
        .bind(json)
        .bind(error)
        .bind(now_ms())
        .bind(id)
        .bind(rows_missing)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(marked > 0)
    }

    /// An `incomplete` upload whose missing rows turned up after all (a
    /// batch that was in hand when the queue was lost committed late): back
    /// to `processing`, so the usual completion check can complete it.
    pub async fn reopen_incomplete(&self, id: &str) -> Result<bool, StoreError> {
        let reopened = sqlx::query(self.q(
            "UPDATE uploads SET status = 'processing', rows_missing = 0, missing_rows = NULL, \
             error = NULL, updated_at_ms = ? WHERE id = ? AND status = 'incomplete'",
        ))
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(reopened > 0)
    }

    /// Settle the counts of an `interrupted` upload once nothing of it is
    /// left in the stream: `rows_enqueued` becomes what reached the stream
    /// as far as the ledgers tell (never less than recorded), and its
    /// unaccounted rows `missing` (`rows_missing` of them). It stays
    /// `interrupted`: the file was not read to its end. False if it is no
    /// longer `interrupted`.
    pub async fn settle_interrupted(
        &self,
        id: &str,
        rows_enqueued: i64,
        missing: &[[i64; 2]],
        rows_missing: i64,
    ) -> Result<bool, StoreError> {
        let json = (!missing.is_empty())
            .then(|| serde_json::to_string(missing).unwrap_or_else(|_| "[]".into()));
        let settled = sqlx::query(self.q(&format!(
            "UPDATE uploads SET {}, rows_missing = ?, missing_rows = ?, updated_at_ms = ? \
             WHERE id = ? AND status = 'interrupted'",
            super::leases::raise("rows_enqueued"),
        )))
        .bind(rows_enqueued)
        .bind(rows_enqueued)
        .bind(rows_missing)
        .bind(json)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(settled > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(rows: &[i64]) -> RowSet {
        let mut s = RowSet::new();
        for &r in rows {
            s.insert(r);
        }
        s
    }

    #[test]
    fn an_empty_set_misses_everything() {
        let s = RowSet::new();
        assert_eq!(s.missing_ranges(0), Vec::<[i64; 2]>::new());
        assert_eq!(s.missing_ranges(5), vec![[1, 5]]);
        assert_eq!((s.len(), s.max(), s.is_empty()), (0, 0, true));
    }

    #[test]
    fn ranges_cover_the_gaps_in_order() {
        let s = set(&[3, 1, 2, 7, 8, 10]);
        assert_eq!(s.missing_ranges(10), vec![[4, 6], [9, 9]]);
        assert_eq!(s.missing_ranges(12), vec![[4, 6], [9, 9], [11, 12]]);
        assert_eq!(s.missing_ranges(5), vec![[4, 5]]);
        assert_eq!(s.missing_ranges(3), Vec::<[i64; 2]>::new());
        assert_eq!((s.len(), s.max()), (6, 10));
    }

    #[test]
    fn a_gap_at_the_start_and_across_words() {
        let s = set(&[64, 65, 200]);
        assert_eq!(s.missing_ranges(200), vec![[1, 63], [66, 199]]);
        assert_eq!(rows_in(&s.missing_ranges(200)), 197);
        assert!(s.contains(64) && s.contains(65) && s.contains(200));
        assert!(!s.contains(63) && !s.contains(66) && !s.contains(201));
    }

    #[test]
    fn duplicates_and_non_rows_are_not_counted() {
        let s = set(&[5, 5, 0, -3, 5]);
        assert_eq!((s.len(), s.max()), (1, 5));
        assert!(!s.contains(0) && !s.contains(-3));
        assert_eq!(s.missing_ranges(6), vec![[1, 4], [6, 6]]);
    }

    #[test]
    fn a_million_rows_with_one_gap() {
        let mut s = RowSet::new();
        for r in (1..=1_000_000).filter(|r| !(1201..=1500).contains(r)) {
            s.insert(r);
        }
        assert_eq!(s.missing_ranges(1_000_000), vec![[1201, 1500]]);
        assert_eq!(s.len(), 1_000_000 - 300);
    }
}
