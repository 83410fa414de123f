//! `unverified_rows`: stored rows whose mail domain the consumer's DNS check
//! could not verify (see [`crate::deliverability`]), recorded in the batch's
//! own transaction, counted in an upload's status and exported.
//!
//! Keyed by `(upload_id, row_number)` like the ledgers, and inserted with
//! the dialect's "keep what is there" conflict clause, so a redelivered row
//! is never recorded twice; the count is `COUNT(*)` over the key's prefix,
//! so it is exact whatever was redelivered.

use sqlx::AssertSqlSafe;

use super::{Dialect, Store, StoreError};
use crate::verdict::{JudgedRow, RowVerdict};

/// Rows per `INSERT` (7 parameters each, well under every dialect's limit).
const CHUNK: usize = 500;

/// One row of the `unverified` export.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct UnverifiedRow {
    pub row_number: i64,
    pub domain: String,
    pub reason: String,
    pub message: String,
    pub fields: String,
}

fn insert_sql(dialect: Dialect, rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO unverified_rows (upload_id, \"row_number\", domain, reason, message, fields, created_at_ms) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?)");
    }
    sql.push_str(match dialect {
        Dialect::MySql => " ON DUPLICATE KEY UPDATE upload_id = upload_id",
        Dialect::Postgres | Dialect::Sqlite => {
            " ON CONFLICT (upload_id, \"row_number\") DO NOTHING"
        }
    });
    dialect.sql(&sql)
}

impl Store {
    /// Record the accepted rows among `rows` that carry an
    /// [`Unverified`](crate::deliverability::Unverified) mark, in `conn`'s
    /// transaction. The batch passes the rows it stores, not those it
    /// passes over as replayed.
    pub(crate) async fn record_unverified<'r>(
        &self,
        conn: &mut sqlx::AnyConnection,
        rows: impl IntoIterator<Item = &'r JudgedRow>,
        now: i64,
    ) -> Result<(), StoreError> {
        let marked: Vec<(&JudgedRow, &str, String)> = rows
            .into_iter()
            .filter_map(|r| match (&r.verdict, &r.unverified) {
                (RowVerdict::Accept { email, .. }, Some(u)) => {
                    let domain = email.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
                    Some((r, domain, u.message.clone()))
                }
                _ => None,
            })
            .collect();
        for chunk in marked.chunks(CHUNK) {
            let sql = insert_sql(self.dialect, chunk.len());
            let mut query = sqlx::query(AssertSqlSafe(sql));
            for (r, domain, message) in chunk {
                let reason = r.unverified.as_ref().map(|u| u.reason.code()).unwrap_or("");
                query = query
                    .bind(r.upload_id.as_str())
                    .bind(r.row_number)
                    .bind(*domain)
                    .bind(reason)
                    .bind(message.as_str())
                    .bind(r.verdict.fields_json())
                    .bind(now);
            }
            query.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// How many of upload `id`'s stored rows are unverified.
    pub async fn unverified_count(&self, id: &str) -> Result<i64, StoreError> {
        let n: i64 =
            sqlx::query_scalar(self.q("SELECT COUNT(*) FROM unverified_rows WHERE upload_id = ?"))
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
        Ok(n)
    }

    /// Up to `limit` unverified rows of upload `id` after row `after`, in
    /// row order (one page of the export).
    pub async fn unverified_rows_page(
        &self,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<UnverifiedRow>, StoreError> {
        self.ledger_page(
            "\"row_number\", domain, reason, message, fields FROM unverified_rows",
            id,
            after,
            limit,
        )
        .await
    }
}
