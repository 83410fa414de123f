//! PostgreSQL's packed statements: each column of a batch is one text
//! parameter that [`PackedColumns`] built and `string_to_array` splits
//! back, so a statement's text and its number of parameters do not depend
//! on the batch's size and its prepared statement is reused. A batch whose
//! values the packed form cannot carry goes as the `VALUES` statements of
//! [`super`], with `$n` placeholders.

use super::super::encode::PackedColumns;
use super::contact_columns;
use crate::store::Dialect;

/// Step 3a, packed. With `one_upload` the packed columns are e, r, m, a, n
/// (email, email as written, name, attributes, row number) and the upload's
/// id and seq are `$6` and `$7`: values the same for every row go as
/// single parameters, not packed columns repeating one value 1,000 times.
/// Otherwise the columns are e, r, m, a, u, s, n. The time is `$8`.
///
/// The inserted emails come back as one text value, joined by the
/// separator (which no packed value holds): cheaper for PostgreSQL than a
/// row per email, and than keeping the input in a materialized CTE to
/// return the complement through a hash anti-join (docs/performance.md).
pub(in crate::store::batch) fn insert_contacts(one_upload: bool) -> String {
    let select = if one_upload {
        format!(
            "SELECT e, r, m, a, $6, $7, n, $8 FROM {} AS t(e, r, m, a, n)",
            PackedColumns::unnest(&["text", "text", "text", "text", "bigint"])
        )
    } else {
        format!(
            "SELECT e, r, m, a, u, s, n, $8 FROM {} AS t(e, r, m, a, u, s, n)",
            PackedColumns::unnest(&["text", "text", "text", "text", "text", "bigint", "bigint"])
        )
    };
    format!(
        "WITH ins AS (INSERT INTO contacts ({}) {select} \
         ON CONFLICT (email) DO NOTHING RETURNING email) \
         SELECT COALESCE(string_agg(email, chr(30)), '') FROM ins",
        contact_columns(Dialect::Postgres)
    )
}

/// Step 3b, packed: the emails are one parameter. `= ANY(array)` is planned
/// as index lookups (a set-returning function in a join could be planned as
/// a scan of the whole, growing table).
pub(in crate::store::batch) fn lock_contacts() -> String {
    format!(
        "SELECT email, upload_id, upload_seq, \"row_number\" FROM contacts \
         WHERE email = ANY({}) ORDER BY email FOR UPDATE",
        PackedColumns::split(1)
    )
}

/// Steps 2 and 4, packed: a ledger's rows, one parameter per column.
pub(in crate::store::batch) fn insert_ledger(table_and_cols: &str, types: &[&str]) -> String {
    format!(
        "INSERT INTO {table_and_cols} SELECT * FROM {}",
        PackedColumns::unnest(types),
    )
}
