//! MySQL's and MariaDB's own statements: their upsert is `INSERT … ON
//! DUPLICATE KEY UPDATE`, which cannot say which rows it inserted (MariaDB
//! 10.5 and later can return who holds each email after it).

use super::super::encode::values_clause;
use super::contact_columns;
use crate::store::Dialect;

/// Step 3a: insert `rows` contacts, each only if nobody has its email yet.
/// A no-op update, never `INSERT IGNORE`, which hides other errors too.
pub(super) fn insert_contacts(rows: usize) -> String {
    let mut sql = format!(
        "INSERT INTO contacts ({}) VALUES ",
        contact_columns(Dialect::MySql)
    );
    values_clause(Dialect::MySql, rows, 8, &mut sql);
    sql.push_str(" ON DUPLICATE KEY UPDATE email = email");
    sql
}

/// Step 3a where the server has `RETURNING` (MariaDB 10.5+): the same
/// insert, returning every row of the statement as stored after it: the
/// row just inserted, or the row that already held the email, locked by
/// the (no-op) update. So it says who holds each email, what step 3b
/// would otherwise lock every email of the batch to learn. Columns:
/// email, upload id, upload seq, row number.
pub(super) fn insert_contacts_returning(rows: usize) -> String {
    let mut sql = insert_contacts(rows);
    sql.push_str(" RETURNING email, upload_id, upload_seq, `row_number`");
    sql
}

/// Step 5: add a batch's counts into one of an upload's progress slots.
pub(super) const ADD_PROGRESS: &str = "INSERT INTO upload_progress (upload_id, slot, rows_processed, rows_rejected, rows_inserted, updated_at_ms) \
     VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
     rows_processed = rows_processed + VALUES(rows_processed), \
     rows_rejected = rows_rejected + VALUES(rows_rejected), \
     rows_inserted = rows_inserted + VALUES(rows_inserted), updated_at_ms = VALUES(updated_at_ms)";
