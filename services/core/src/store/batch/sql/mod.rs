//! The text of every statement a batch sends, one function or constant per
//! statement. What only one dialect sends is in that dialect's file:
//!
//! * [`postgres`]: the packed forms, one text parameter per column (see
//!   [`PackedColumns`](super::encode::PackedColumns)) instead of a bind per
//!   value.
//! * [`mysql`]: `ON DUPLICATE KEY UPDATE` where the others say `ON
//!   CONFLICT`, and `RETURNING` only on MariaDB, where it returns every row.
//! * [`sqlite`]: `BEGIN IMMEDIATE`, and no `FOR UPDATE`.
//!
//! The rest is written here once, in portable SQL that [`Dialect::sql`]
//! rewrites (placeholders, quoting), or with each dialect's placeholders
//! from [`values_clause`].

mod mysql;
pub(super) mod postgres;
mod sqlite;

use super::encode::values_clause;
use crate::store::Dialect;

/// A ledger table: its name and columns in portable SQL, and each column's
/// PostgreSQL type for the packed form.
pub(super) struct Ledger<const N: usize> {
    pub(super) table_and_cols: &'static str,
    pub(super) types: [&'static str; N],
}

/// Rows that failed, with why.
pub(super) const REJECTED_ROWS: Ledger<6> = Ledger {
    table_and_cols: "rejected_rows (upload_id, \"row_number\", reason, message, fields, created_at_ms)",
    types: ["text", "bigint", "text", "text", "text", "bigint"],
};

/// Valid rows that are not (or no longer) the stored row for their email.
pub(super) const ACCEPTED_ROWS: Ledger<3> = Ledger {
    table_and_cols: "accepted_rows (upload_id, \"row_number\", email)",
    types: ["text", "bigint", "text"],
};

/// The statement that opens a batch's transaction, where the pool's plain
/// `BEGIN` does not do.
pub(super) fn begin(dialect: Dialect) -> Option<&'static str> {
    match dialect {
        Dialect::Sqlite => Some(sqlite::BEGIN),
        Dialect::Postgres | Dialect::MySql => None,
    }
}

/// Step 1: the rows of one upload, in a range of row numbers, that either
/// ledger holds, with the reject reason of those in the reject ledger
/// (`''` for the others). Binds: upload, first row, last row; the same
/// again.
pub(super) const RECORDED_ROWS: &str = "SELECT \"row_number\" AS rn, '' AS reason FROM accepted_rows WHERE upload_id = ? AND \"row_number\" BETWEEN ? AND ? \
     UNION ALL \
     SELECT \"row_number\" AS rn, reason FROM rejected_rows WHERE upload_id = ? AND \"row_number\" BETWEEN ? AND ?";

/// Step 1: forget that a row failed (`processing_failed`), so that it is
/// stored now. Binds: upload, row number.
pub(super) const FORGET_FAILED_ROW: &str =
    "DELETE FROM rejected_rows WHERE upload_id = ? AND \"row_number\" = ? AND reason = ?";

/// The columns of a contacts insert, in bind order.
fn contact_columns(dialect: Dialect) -> String {
    format!(
        "email, email_raw, name, attributes, upload_id, upload_seq, {}, created_at_ms",
        dialect.row_number_col()
    )
}

/// Step 3a as a multi-row `VALUES` list: insert `rows` contacts (8 binds
/// each, in [`contact_columns`] order), each only if nobody has its email
/// yet; a concurrent insert of the same email is waited for by the unique
/// index, then left alone. PostgreSQL and SQLite return the emails they
/// inserted. MySQL cannot ([`mysql::insert_contacts`]); MariaDB, with
/// `returning`, returns who holds each email after the insert
/// ([`mysql::insert_contacts_returning`]).
pub(super) fn insert_contacts(dialect: Dialect, rows: usize, returning: bool) -> String {
    if dialect == Dialect::MySql {
        return match returning {
            true => mysql::insert_contacts_returning(rows),
            false => mysql::insert_contacts(rows),
        };
    }
    let mut sql = format!(
        "INSERT INTO contacts ({}) VALUES ",
        contact_columns(dialect)
    );
    values_clause(dialect, rows, 8, &mut sql);
    sql.push_str(" ON CONFLICT (email) DO NOTHING RETURNING email");
    sql
}

/// The stored rows of `emails` emails (binds: the emails), in email order:
/// the same lock order in every transaction. Plain bind parameters: an IN
/// list of known size is planned as index lookups.
fn select_contacts(dialect: Dialect, emails: usize) -> String {
    let mut sql = dialect
        .sql("SELECT email, upload_id, upload_seq, \"row_number\" FROM contacts WHERE email IN (");
    for i in 0..emails {
        if i > 0 {
            sql.push_str(", ");
        }
        dialect.placeholder(i + 1, &mut sql);
    }
    sql.push_str(") ORDER BY email");
    sql
}

/// Step 3b: [`select_contacts`], each row locked until the transaction
/// ends (SQLite: [`sqlite::lock_contacts`]). Columns: email, upload id,
/// upload seq, row number.
pub(super) fn lock_contacts(dialect: Dialect, emails: usize) -> String {
    if dialect == Dialect::Sqlite {
        return sqlite::lock_contacts(emails);
    }
    let mut sql = select_contacts(dialect, emails);
    sql.push_str(" FOR UPDATE");
    sql
}

/// Step 3b: replace the stored row of an email by an earlier one. Binds:
/// email as written, name, attributes, upload, upload seq, row number, now,
/// email.
pub(super) const DISPLACE: &str = "UPDATE contacts SET email_raw = ?, name = ?, attributes = ?, upload_id = ?, upload_seq = ?, \
     \"row_number\" = ?, created_at_ms = ? WHERE email = ?";

/// Step 5: add a batch's counts into one of an upload's progress slots
/// (MySQL: [`mysql::ADD_PROGRESS`]). Binds: upload, slot, rows processed,
/// rejected, inserted, now.
pub(super) fn add_progress(dialect: Dialect) -> String {
    match dialect {
        Dialect::MySql => mysql::ADD_PROGRESS.to_string(),
        Dialect::Postgres | Dialect::Sqlite => dialect.sql(
            "INSERT INTO upload_progress (upload_id, slot, rows_processed, rows_rejected, rows_inserted, updated_at_ms) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (upload_id, slot) DO UPDATE SET \
             rows_processed = upload_progress.rows_processed + excluded.rows_processed, \
             rows_rejected = upload_progress.rows_rejected + excluded.rows_rejected, \
             rows_inserted = upload_progress.rows_inserted + excluded.rows_inserted, \
             updated_at_ms = excluded.updated_at_ms",
        ),
    }
}

/// Is this row the stored row of its email? Binds: email, upload, row number.
pub(super) const HOLDS_ROW: &str =
    "SELECT upload_seq FROM contacts WHERE email = ? AND upload_id = ? AND \"row_number\" = ?";
