//! Steps 1, 2 and 4 of a batch, on the ledgers (`accepted_rows`,
//! `rejected_rows`): which rows an earlier delivery recorded, and recording
//! this batch's.

use std::collections::BTreeMap;

use foldhash::HashSet;
use sqlx::Row;

use super::Tx;
use super::encode::{CHUNK, Cell, PackedColumns, bind_rows, insert_sql};
use super::sql::{self, Ledger};
use crate::store::{Dialect, Store, StoreError};
use crate::validate::RejectReason;

/// What step 1 found in the ledgers.
#[derive(Default)]
pub(super) struct Recorded<'a> {
    /// Rows recorded for good: a later delivery passes over them.
    pub(super) held: HashSet<(&'a str, i64)>,
    /// Rows recorded as `processing_failed`: given up on, not final.
    pub(super) failed: HashSet<(&'a str, i64)>,
}

/// A unique violation on a ledger: the same (upload, row) recorded by
/// another transaction since step 1 looked.
fn ledger_collision(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
            StoreError::ConcurrentDelivery(e)
        }
        _ => StoreError::Sqlx(e),
    }
}

impl Store {
    /// The (upload, row number) pairs of `ranges` (each upload's first and
    /// last row number) that either ledger holds; and, apart, those of them
    /// recorded as `processing_failed`, which a new delivery may still store
    /// (see [`Store::apply_batch`], step 1).
    pub(super) async fn recorded_rows<'a>(
        &self,
        tx: &mut Tx,
        ranges: &BTreeMap<&'a str, (i64, i64)>,
    ) -> Result<Recorded<'a>, StoreError> {
        let mut recorded = Recorded::default();
        let failed = RejectReason::ProcessingFailed.code();
        for (upload, (lo, hi)) in ranges {
            let existing = sqlx::query(self.q(sql::RECORDED_ROWS))
                .bind(*upload)
                .bind(*lo)
                .bind(*hi)
                .bind(*upload)
                .bind(*lo)
                .bind(*hi)
                .fetch_all(&mut **tx)
                .await?;
            for row in existing {
                let key = (*upload, row.try_get::<i64, _>("rn")?);
                if row.try_get::<String, _>("reason")? == failed {
                    recorded.failed.insert(key);
                } else {
                    recorded.held.insert(key);
                }
            }
        }
        Ok(recorded)
    }

    /// Remove the `processing_failed` record of a row about to be stored.
    pub(super) async fn forget_failed_row(
        &self,
        tx: &mut Tx,
        upload: &str,
        row_number: i64,
    ) -> Result<(), StoreError> {
        let removed = sqlx::query(self.q(sql::FORGET_FAILED_ROW))
            .bind(upload)
            .bind(row_number)
            .bind(RejectReason::ProcessingFailed.code())
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if removed == 0 {
            // Another consumer stored a copy of this row (a replay written
            // twice) since step 1 looked: run the batch again, to find it.
            return Err(StoreError::ConcurrentDelivery(sqlx::Error::Protocol(
                format!(
                    "the processing_failed record of row {row_number} of upload {upload} was removed by another consumer"
                ),
            )));
        }
        Ok(())
    }

    /// Insert rows into a ledger: packed on PostgreSQL, else (or for values
    /// the packed form cannot carry) as multi-row `VALUES`. A unique
    /// violation is a [`ledger_collision`].
    pub(super) async fn insert_ledger_rows<const N: usize>(
        &self,
        tx: &mut Tx,
        ledger: &Ledger<N>,
        rows: &[[Cell<'_>; N]],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        if self.dialect == Dialect::Postgres {
            let mut packed = PackedColumns::new(N);
            for row in rows {
                packed.push_row(row);
            }
            if let Some(columns) = packed.finish() {
                let sql = sql::postgres::insert_ledger(ledger.table_and_cols, &ledger.types);
                PackedColumns::query(sql, columns)
                    .execute(&mut **tx)
                    .await
                    .map_err(ledger_collision)?;
                return Ok(());
            }
        }
        for chunk in rows.chunks(CHUNK) {
            let sql = insert_sql(self.dialect, ledger.table_and_cols, chunk.len(), N);
            bind_rows(sql, chunk)
                .execute(&mut **tx)
                .await
                .map_err(ledger_collision)?;
        }
        Ok(())
    }
}
