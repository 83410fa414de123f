//! Steps 1, 2 and 4 of a batch, on the ledgers (`accepted_rows`,
//! `rejected_rows`): which rows an earlier delivery recorded, and recording
//! this batch's.

use std::collections::BTreeMap;

use foldhash::{HashSet, HashSetExt};
use sqlx::Row;

use super::Tx;
use super::encode::{CHUNK, Cell, PackedColumns, bind_rows, insert_sql};
use super::sql::{self, Ledger};
use crate::store::{Dialect, Store, StoreError};

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
    /// last row number) that either ledger holds.
    pub(super) async fn recorded_rows<'a>(
        &self,
        tx: &mut Tx,
        ranges: &BTreeMap<&'a str, (i64, i64)>,
    ) -> Result<HashSet<(&'a str, i64)>, StoreError> {
        let mut seen: HashSet<(&str, i64)> = HashSet::new();
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
                seen.insert((upload, row.try_get::<i64, _>("rn")?));
            }
        }
        Ok(seen)
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
