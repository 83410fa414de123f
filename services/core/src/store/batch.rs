//! Applying a batch of judged rows in one transaction.
//!
//! The rule for duplicates is deterministic: the table ends exactly as if
//! every row had been processed one at a time, uploads in acceptance order
//! (`upload_seq`) and rows in file order. Consumers commit in any order, so
//! each dialect's upsert keeps whichever of the stored and the incoming row
//! has the smaller `(upload_seq, row_number)`. Once rows from earlier uploads
//! and earlier lines are in, nothing later can displace them.
//!
//! Exactly-once effect under at-least-once delivery: every row also leaves a
//! trace in `accepted_rows` or `rejected_rows`, keyed by (upload, row number),
//! and rows already there are skipped. A redelivered entry therefore changes
//! neither the table nor the counts.

use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AssertSqlSafe, Row};

use super::{Dialect, Store, StoreError};
use crate::now_ms;
use crate::validate::RejectReason;

/// The verdict on one row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowVerdict {
    Accept {
        /// Normalized email (the uniqueness key).
        email: String,
        /// The email as written.
        email_raw: String,
        name: Option<String>,
        /// Other columns as a JSON object.
        attributes: Option<String>,
    },
    Reject {
        reason: RejectReason,
        message: String,
        /// The fields as written, JSON.
        fields: String,
    },
}

/// A row with its identity and verdict, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JudgedRow {
    pub upload_id: String,
    pub upload_seq: i64,
    pub row_number: i64,
    pub verdict: RowVerdict,
}

/// What a committed batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Valid rows recorded (winners and duplicates alike).
    pub accepted: u64,
    /// Rows recorded in the reject ledger.
    pub rejected: u64,
    /// Rows skipped because an earlier delivery already recorded them.
    pub replayed: u64,
    pub rejected_by_reason: BTreeMap<RejectReason, u64>,
    /// Uploads this batch touched, so the caller can try to complete them.
    pub uploads: Vec<String>,
}

/// Rows per multi-row statement: well under every dialect's bind limit
/// (PostgreSQL and MySQL 65,535; SQLite 32,766) at 8 binds a row.
const CHUNK: usize = 1000;

fn values_clause(dialect: Dialect, rows: usize, cols: usize, sql: &mut String) {
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            n += 1;
            dialect.placeholder(n, sql);
        }
        sql.push(')');
    }
}

fn contacts_upsert_sql(dialect: Dialect, rows: usize) -> String {
    let rn = if dialect == Dialect::MySql {
        "`row_number`"
    } else {
        "\"row_number\""
    };
    let mut sql = format!(
        "INSERT INTO contacts (email, email_raw, name, attributes, upload_id, upload_seq, {rn}, created_at_ms) VALUES "
    );
    values_clause(dialect, rows, 8, &mut sql);
    match dialect {
        Dialect::Postgres | Dialect::Sqlite => {
            sql.push_str(&format!(
                " ON CONFLICT (email) DO UPDATE SET email_raw = excluded.email_raw, name = excluded.name, \
                 attributes = excluded.attributes, upload_id = excluded.upload_id, \
                 upload_seq = excluded.upload_seq, {rn} = excluded.{rn}, created_at_ms = excluded.created_at_ms \
                 WHERE (contacts.upload_seq, contacts.{rn}) > (excluded.upload_seq, excluded.{rn})"
            ));
        }
        Dialect::MySql => {
            // MySQL evaluates assignments left to right and later ones see
            // earlier results, so the ordering key columns go last: row
            // number first, then the upload sequence.
            let cond = format!("(upload_seq, {rn}) > (VALUES(upload_seq), VALUES({rn}))");
            sql.push_str(" ON DUPLICATE KEY UPDATE ");
            let cols = [
                "email_raw",
                "name",
                "attributes",
                "upload_id",
                "created_at_ms",
                rn,
                "upload_seq",
            ];
            let sets: Vec<String> = cols
                .iter()
                .map(|c| format!("{c} = IF({cond}, VALUES({c}), {c})"))
                .collect();
            sql.push_str(&sets.join(", "));
        }
    }
    sql
}

fn insert_sql(dialect: Dialect, table_and_cols: &str, rows: usize, cols: usize) -> String {
    let mut sql = dialect.sql(&format!("INSERT INTO {table_and_cols} VALUES "));
    values_clause(dialect, rows, cols, &mut sql);
    sql
}

impl Store {
    /// Store a batch in one transaction; see the module docs for the rules.
    pub async fn apply_batch(&self, rows: &[JudgedRow]) -> Result<BatchOutcome, StoreError> {
        let mut outcome = BatchOutcome::default();
        if rows.is_empty() {
            return Ok(outcome);
        }
        let dialect = self.dialect;
        let mut tx = match dialect {
            // Take the write lock up front: a deferred transaction that reads
            // first and writes later can fail with SQLITE_BUSY instead of waiting.
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            _ => self.pool.begin().await?,
        };

        // 1. Which of these rows were already recorded by an earlier delivery?
        let mut ranges: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for r in rows {
            let e = ranges
                .entry(r.upload_id.as_str())
                .or_insert((r.row_number, r.row_number));
            e.0 = e.0.min(r.row_number);
            e.1 = e.1.max(r.row_number);
        }
        let mut seen: HashSet<(&str, i64)> = HashSet::new();
        for (upload, (lo, hi)) in &ranges {
            let existing = sqlx::query(self.q(
                "SELECT \"row_number\" AS rn FROM accepted_rows WHERE upload_id = ? AND \"row_number\" BETWEEN ? AND ? \
                 UNION ALL \
                 SELECT \"row_number\" AS rn FROM rejected_rows WHERE upload_id = ? AND \"row_number\" BETWEEN ? AND ?",
            ))
            .bind(*upload)
            .bind(*lo)
            .bind(*hi)
            .bind(*upload)
            .bind(*lo)
            .bind(*hi)
            .fetch_all(&mut *tx)
            .await?;
            for row in existing {
                seen.insert((upload, row.try_get::<i64, _>("rn")?));
            }
        }
        let mut fresh: Vec<&JudgedRow> = Vec::with_capacity(rows.len());
        for r in rows {
            if seen.insert((r.upload_id.as_str(), r.row_number)) {
                fresh.push(r);
            } else {
                outcome.replayed += 1;
            }
        }
        // Same lock order in every transaction: fewer deadlocks between consumers.
        fresh.sort_by(|a, b| (&a.upload_id, a.row_number).cmp(&(&b.upload_id, b.row_number)));

        let now = now_ms();
        let accepted: Vec<&JudgedRow> = fresh
            .iter()
            .copied()
            .filter(|r| matches!(r.verdict, RowVerdict::Accept { .. }))
            .collect();
        let rejected: Vec<&JudgedRow> = fresh
            .iter()
            .copied()
            .filter(|r| matches!(r.verdict, RowVerdict::Reject { .. }))
            .collect();

        // 2. The ledgers.
        for chunk in accepted.chunks(CHUNK) {
            let sql = insert_sql(
                dialect,
                "accepted_rows (upload_id, \"row_number\", email)",
                chunk.len(),
                3,
            );
            let mut q: Query<'_, Any, AnyArguments> = sqlx::query(AssertSqlSafe(sql));
            for r in chunk {
                if let RowVerdict::Accept { email, .. } = &r.verdict {
                    q = q
                        .bind(r.upload_id.as_str())
                        .bind(r.row_number)
                        .bind(email.as_str());
                }
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in rejected.chunks(CHUNK) {
            let sql = insert_sql(
                dialect,
                "rejected_rows (upload_id, \"row_number\", reason, message, fields, created_at_ms)",
                chunk.len(),
                6,
            );
            let mut q: Query<'_, Any, AnyArguments> = sqlx::query(AssertSqlSafe(sql));
            for r in chunk {
                if let RowVerdict::Reject {
                    reason,
                    message,
                    fields,
                } = &r.verdict
                {
                    q = q
                        .bind(r.upload_id.as_str())
                        .bind(r.row_number)
                        .bind(reason.code())
                        .bind(message.as_str())
                        .bind(fields.as_str())
                        .bind(now);
                    *outcome.rejected_by_reason.entry(*reason).or_default() += 1;
                }
            }
            q.execute(&mut *tx).await?;
        }

        // 3. The contacts: one candidate per email (the earliest), in email order.
        let mut best: HashMap<&str, &JudgedRow> = HashMap::new();
        for r in &accepted {
            if let RowVerdict::Accept { email, .. } = &r.verdict {
                let slot = best.entry(email.as_str()).or_insert(r);
                if (r.upload_seq, r.row_number) < (slot.upload_seq, slot.row_number) {
                    *slot = r;
                }
            }
        }
        let mut candidates: Vec<(&str, &JudgedRow)> = best.into_iter().collect();
        candidates.sort_by(|a, b| a.0.cmp(b.0));
        for chunk in candidates.chunks(CHUNK) {
            let sql = contacts_upsert_sql(dialect, chunk.len());
            let mut q: Query<'_, Any, AnyArguments> = sqlx::query(AssertSqlSafe(sql));
            for (_, r) in chunk {
                if let RowVerdict::Accept {
                    email,
                    email_raw,
                    name,
                    attributes,
                } = &r.verdict
                {
                    q = q
                        .bind(email.as_str())
                        .bind(email_raw.as_str())
                        .bind(name.as_deref())
                        .bind(attributes.as_deref())
                        .bind(r.upload_id.as_str())
                        .bind(r.upload_seq)
                        .bind(r.row_number)
                        .bind(now);
                }
            }
            q.execute(&mut *tx).await?;
        }

        // 4. Per-upload progress, last: the hot `uploads` row is locked for
        //    as short a time as possible.
        let mut per_upload: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for r in &fresh {
            let e = per_upload.entry(r.upload_id.as_str()).or_default();
            e.0 += 1;
            if matches!(r.verdict, RowVerdict::Reject { .. }) {
                e.1 += 1;
            }
        }
        for (upload, (processed, rejected)) in &per_upload {
            sqlx::query(self.q(
                "UPDATE uploads SET rows_processed = rows_processed + ?, rows_rejected = rows_rejected + ?, \
                 status = CASE WHEN status = 'queued' THEN 'processing' ELSE status END, updated_at_ms = ? \
                 WHERE id = ?",
            ))
            .bind(*processed)
            .bind(*rejected)
            .bind(now)
            .bind(*upload)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;

        outcome.accepted = accepted.len() as u64;
        outcome.rejected = rejected.len() as u64;
        outcome.uploads = ranges.keys().map(|s| s.to_string()).collect();
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_upserts_number_their_placeholders_and_keep_the_earliest_row() {
        let sql = contacts_upsert_sql(Dialect::Postgres, 2);
        assert!(sql.contains("($1, $2, $3, $4, $5, $6, $7, $8), ($9,"));
        assert!(sql.contains("WHERE (contacts.upload_seq, contacts.\"row_number\") > (excluded.upload_seq, excluded.\"row_number\")"));
    }

    #[test]
    fn mysql_upserts_update_the_ordering_key_last() {
        let sql = contacts_upsert_sql(Dialect::MySql, 1);
        let rn = sql.find("`row_number` = IF").expect("row_number set");
        let seq = sql.rfind("upload_seq = IF").expect("upload_seq set");
        let raw = sql.find("email_raw = IF").expect("email_raw set");
        assert!(raw < rn && rn < seq, "{sql}");
        assert!(!sql.contains("INSERT IGNORE"));
    }
}
