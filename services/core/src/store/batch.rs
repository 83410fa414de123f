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
//! holds the winners too. A second copy of a row processed at the same time
//! by another consumer either waits on the email's index entry and then sees
//! its twin as the holder, or collides on a ledger's primary key. A
//! collision means the other copy has committed, so [`Store::apply_batch`]
//! runs the whole batch again in a fresh transaction, which finds the first
//! copy's trace. (Before, the caller fell back to one row at a time; two
//! consumers holding the same entries, one of them after an `XAUTOCLAIM` of
//! a slow batch, then collided row after row in step, and rows that another
//! consumer had stored were dead-lettered.)

use std::collections::BTreeMap;

// The batch's maps are keyed by emails and upload ids: foldhash hashes
// them several times faster than std's SipHash (which was a visible part of
// the consumer's profile), still with a per-process random seed.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AssertSqlSafe, Row};

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

/// A unique violation on a ledger (`accepted_rows`, `rejected_rows`): the
/// same (upload, row) recorded by another transaction since step 1 looked.
fn ledger_collision(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
            StoreError::ConcurrentDelivery(e)
        }
        _ => StoreError::Sqlx(e),
    }
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

fn insert_sql(dialect: Dialect, table_and_cols: &str, rows: usize, cols: usize) -> String {
    let mut sql = dialect.sql(&format!("INSERT INTO {table_and_cols} VALUES "));
    values_clause(dialect, rows, cols, &mut sql);
    sql
}

type Tx = sqlx::Transaction<'static, Any>;

/// One value of a row to insert, for either form a batch is sent in: packed
/// into a column parameter ([`PackedColumns`]) or bound in a `VALUES` list.
#[derive(Clone, Copy, Debug)]
enum Cell<'a> {
    Text(&'a str),
    Int(i64),
    Null,
}

impl<'a> Cell<'a> {
    fn text_or_null(value: Option<&'a str>) -> Self {
        value.map_or(Cell::Null, Cell::Text)
    }

    /// Bind this value as the query's next parameter.
    fn bind<'q>(self, q: Query<'q, Any, AnyArguments>) -> Query<'q, Any, AnyArguments>
    where
        'a: 'q,
    {
        match self {
            Cell::Text(v) => q.bind(v),
            Cell::Int(v) => q.bind(v),
            Cell::Null => q.bind(None::<&str>),
        }
    }
}

/// `sql` with every cell of `rows` bound in order.
fn bind_rows<'q, const N: usize>(
    sql: String,
    rows: &[[Cell<'q>; N]],
) -> Query<'q, Any, AnyArguments> {
    rows.iter()
        .flatten()
        .fold(sqlx::query(AssertSqlSafe(sql)), |q, cell| cell.bind(q))
}

/// A PostgreSQL batch as one text parameter per column, which
/// `string_to_array($n, chr(30), chr(31))` splits back: values separated by
/// the record separator (U+001E), NULL written as the unit separator
/// (U+001F). Splitting costs PostgreSQL far less than parsing the same rows
/// as JSON (`json_to_recordset` took a fifth of its time per batch).
///
/// Validated text never holds control characters (the email policy rejects
/// them, names lose them, attributes are JSON-escaped), but entries from
/// other producers might, and an empty value cannot be told from an empty
/// column: then [`PackedColumns::finish`] says no and the batch goes as a
/// plain multi-row `VALUES` statement, the form the other dialects use.
struct PackedColumns {
    columns: Vec<String>,
    rows: usize,
    usable: bool,
}

impl PackedColumns {
    const SEPARATOR: char = '\u{1e}';
    const NULL: char = '\u{1f}';

    fn new(columns: usize) -> Self {
        Self {
            columns: vec![String::new(); columns],
            rows: 0,
            usable: true,
        }
    }

    fn push_row(&mut self, cells: &[Cell<'_>]) {
        use std::fmt::Write;
        for (column, cell) in self.columns.iter_mut().zip(cells) {
            if self.rows > 0 {
                column.push(Self::SEPARATOR);
            }
            match *cell {
                Cell::Text(v) => {
                    if v.is_empty() || v.contains([Self::SEPARATOR, Self::NULL]) {
                        self.usable = false;
                    }
                    column.push_str(v);
                }
                // Writing into a String cannot fail.
                Cell::Int(v) => {
                    let _ = write!(column, "{v}");
                }
                Cell::Null => column.push(Self::NULL),
            }
        }
        self.rows += 1;
    }

    /// The parameters, or `None` when the plain `VALUES` form must be used.
    fn finish(self) -> Option<Vec<String>> {
        (self.usable && self.rows > 0).then_some(self.columns)
    }

    /// SQL for the `n`th parameter as a text array.
    fn split(n: usize) -> String {
        format!("string_to_array(${n}, chr(30), chr(31))")
    }

    /// `unnest(…)` over parameters `$1..` in this order, one per column
    /// type (`text` as is, anything else cast, e.g. `bigint`).
    fn unnest(types: &[&str]) -> String {
        let arrays: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, t)| match *t {
                "text" => Self::split(i + 1),
                t => format!("{}::{t}[]", Self::split(i + 1)),
            })
            .collect();
        format!("unnest({})", arrays.join(", "))
    }

    /// `sql` with the packed columns bound as its first parameters.
    fn query<'q>(sql: String, columns: Vec<String>) -> Query<'q, Any, AnyArguments> {
        columns
            .into_iter()
            .fold(sqlx::query(AssertSqlSafe(sql)), |q, c| q.bind(c))
    }
}

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

impl Store {
    /// Insert candidates whose email is not stored yet. Returns the emails
    /// left for [`Store::lock_owners`]: those already stored where the
    /// dialect can say (RETURNING), and on MySQL, which cannot, all of them
    /// (its own inserts are recognised there by who holds the email).
    async fn insert_new_contacts(
        &self,
        tx: &mut Tx,
        chunk: &[(&str, &JudgedRow)],
        now: i64,
    ) -> Result<HashSet<String>, StoreError> {
        let dialect = self.dialect;
        let mut contested = HashSet::new();
        let rn = if dialect == Dialect::MySql {
            "`row_number`"
        } else {
            "\"row_number\""
        };
        let cols = format!(
            "email, email_raw, name, attributes, upload_id, upload_seq, {rn}, created_at_ms"
        );
        // Candidates are valid rows (see `apply_batch_once`, step 3).
        let rows: Vec<[Cell<'_>; 8]> = chunk
            .iter()
            .filter_map(|(_, r)| match &r.verdict {
                RowVerdict::Accept {
                    email,
                    email_raw,
                    name,
                    attributes,
                } => Some([
                    Cell::Text(email),
                    Cell::Text(email_raw),
                    Cell::text_or_null(name.as_deref()),
                    Cell::text_or_null(attributes.as_deref()),
                    Cell::Text(&r.upload_id),
                    Cell::Int(r.upload_seq),
                    Cell::Int(r.row_number),
                    Cell::Int(now),
                ]),
                RowVerdict::Reject { .. } => None,
            })
            .collect();
        if dialect == Dialect::Postgres {
            // Values the same for every row go as single parameters, not
            // packed columns repeating one value 1,000 times: `created_at_ms`
            // always, the upload's id and seq when the chunk holds one
            // upload (nearly always).
            let one_upload = chunk
                .first()
                .map(|(_, f)| (f.upload_id.as_str(), f.upload_seq))
                .filter(|&(u, s)| {
                    chunk
                        .iter()
                        .all(|(_, r)| r.upload_id == u && r.upload_seq == s)
                });
            let (mut packed, select) = match one_upload {
                Some(_) => (
                    PackedColumns::new(5),
                    format!(
                        "SELECT e, r, m, a, $6, $7, n, $8 FROM {} AS t(e, r, m, a, n)",
                        PackedColumns::unnest(&["text", "text", "text", "text", "bigint"])
                    ),
                ),
                None => (
                    PackedColumns::new(7),
                    format!(
                        "SELECT e, r, m, a, u, s, n, $8 FROM {} AS t(e, r, m, a, u, s, n)",
                        PackedColumns::unnest(&[
                            "text", "text", "text", "text", "text", "bigint", "bigint"
                        ])
                    ),
                ),
            };
            for row in &rows {
                match one_upload {
                    Some(_) => packed.push_row(&[row[0], row[1], row[2], row[3], row[6]]),
                    None => packed.push_row(&row[..7]),
                }
            }
            if let Some(columns) = packed.finish() {
                // The inserted emails come back as one text value, joined
                // by the separator (which no packed value holds): cheaper
                // for PostgreSQL than a row per email, and than keeping the
                // input in a materialized CTE to return the complement
                // through a hash anti-join (docs/performance.md, session 5).
                let sql = format!(
                    "WITH ins AS (INSERT INTO contacts ({cols}) {select} \
                     ON CONFLICT (email) DO NOTHING RETURNING email) \
                     SELECT COALESCE(string_agg(email, chr(30)), '') FROM ins",
                );
                let mut q = PackedColumns::query(sql, columns);
                if let Some((upload, seq)) = one_upload {
                    q = q.bind(upload).bind(seq);
                }
                let inserted: String = q.bind(now).fetch_one(&mut **tx).await?.try_get(0)?;
                let inserted: HashSet<&str> = inserted
                    .split(PackedColumns::SEPARATOR)
                    .filter(|e| !e.is_empty())
                    .collect();
                contested.extend(
                    chunk
                        .iter()
                        .filter(|(e, _)| !inserted.contains(*e))
                        .map(|(e, _)| e.to_string()),
                );
                return Ok(contested);
            }
            // Values the packed form cannot carry: the plain VALUES form below.
        }
        let mut sql = format!("INSERT INTO contacts ({cols}) VALUES ");
        values_clause(dialect, rows.len(), 8, &mut sql);
        sql.push_str(match dialect {
            Dialect::MySql => " ON DUPLICATE KEY UPDATE email = email",
            _ => " ON CONFLICT (email) DO NOTHING RETURNING email",
        });
        let q = bind_rows(sql, &rows);
        if dialect == Dialect::MySql {
            q.execute(&mut **tx).await?;
            contested.extend(chunk.iter().map(|(e, _)| e.to_string()));
        } else {
            let mut inserted = HashSet::new();
            for row in q.fetch_all(&mut **tx).await? {
                inserted.insert(row.try_get::<String, _>(0)?);
            }
            contested.extend(
                chunk
                    .iter()
                    .filter(|(e, _)| !inserted.contains(*e))
                    .map(|(e, _)| e.to_string()),
            );
        }
        Ok(contested)
    }

    /// Lock the stored rows of these emails (in email order) and say who holds each.
    async fn lock_owners(
        &self,
        tx: &mut Tx,
        contested: &[&(&str, &JudgedRow)],
    ) -> Result<HashMap<String, Owner>, StoreError> {
        let mut owners = HashMap::new();
        if contested.is_empty() {
            return Ok(owners);
        }
        let dialect = self.dialect;
        if dialect == Dialect::Postgres {
            // One packed parameter and the same statement text every time, so
            // the prepared statement is reused; `= ANY(array)` is planned as
            // index lookups (a set-returning function in a join could be
            // planned as a scan of the whole, growing table).
            let mut packed = PackedColumns::new(1);
            for (e, _) in contested {
                packed.push_row(&[Cell::Text(e)]);
            }
            if let Some(columns) = packed.finish() {
                let sql = format!(
                    "SELECT email, upload_id, upload_seq, \"row_number\" FROM contacts \
                     WHERE email = ANY({}) ORDER BY email FOR UPDATE",
                    PackedColumns::split(1)
                );
                let q = PackedColumns::query(sql, columns);
                for row in q.fetch_all(&mut **tx).await? {
                    owners.insert(
                        row.try_get::<String, _>(0)?,
                        (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?),
                    );
                }
                return Ok(owners);
            }
        }
        // Plain bind parameters: an IN list of known size is planned as
        // index lookups.
        let mut sql = dialect.sql(
            "SELECT email, upload_id, upload_seq, \"row_number\" FROM contacts WHERE email IN (",
        );
        for i in 0..contested.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            dialect.placeholder(i + 1, &mut sql);
        }
        sql.push_str(") ORDER BY email");
        if dialect != Dialect::Sqlite {
            // SQLite has one writer at a time (BEGIN IMMEDIATE) already.
            sql.push_str(" FOR UPDATE");
        }
        let mut q: Query<'_, Any, AnyArguments> = sqlx::query(AssertSqlSafe(sql));
        for (e, _) in contested {
            q = q.bind(*e);
        }
        let rows = q.fetch_all(&mut **tx).await?;
        for row in rows {
            owners.insert(
                row.try_get::<String, _>(0)?,
                (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?),
            );
        }
        Ok(owners)
    }

    /// Replace the stored row of `email` by `r` (which sorts earlier).
    async fn displace(
        &self,
        tx: &mut Tx,
        email: &str,
        r: &JudgedRow,
        now: i64,
    ) -> Result<(), StoreError> {
        if let RowVerdict::Accept {
            email_raw,
            name,
            attributes,
            ..
        } = &r.verdict
        {
            sqlx::query(self.q(
                "UPDATE contacts SET email_raw = ?, name = ?, attributes = ?, upload_id = ?, upload_seq = ?, \
                 \"row_number\" = ?, created_at_ms = ? WHERE email = ?",
            ))
            .bind(email_raw.as_str())
            .bind(name.as_deref())
            .bind(attributes.as_deref())
            .bind(r.upload_id.as_str())
            .bind(r.upload_seq)
            .bind(r.row_number)
            .bind(now)
            .bind(email)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Insert rows into a ledger (`accepted_rows`, `rejected_rows`): packed
    /// on PostgreSQL, else (or for values the packed form cannot carry) as
    /// multi-row `VALUES`. A unique violation is a [`ledger_collision`].
    async fn insert_ledger_rows<const N: usize>(
        &self,
        tx: &mut Tx,
        table_and_cols: &str,
        types: [&str; N],
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
                let sql = format!(
                    "INSERT INTO {table_and_cols} SELECT * FROM {}",
                    PackedColumns::unnest(&types),
                );
                PackedColumns::query(sql, columns)
                    .execute(&mut **tx)
                    .await
                    .map_err(ledger_collision)?;
                return Ok(());
            }
        }
        for chunk in rows.chunks(CHUNK) {
            let sql = insert_sql(self.dialect, table_and_cols, chunk.len(), N);
            bind_rows(sql, chunk)
                .execute(&mut **tx)
                .await
                .map_err(ledger_collision)?;
        }
        Ok(())
    }

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
        let held: Option<i64> = sqlx::query_scalar(self.q(
            "SELECT upload_seq FROM contacts WHERE email = ? AND upload_id = ? AND \"row_number\" = ?",
        ))
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
        let mut tx = match dialect {
            // Take the write lock up front: a deferred transaction that reads
            // first and writes later can fail with SQLITE_BUSY instead of waiting.
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            _ => self.pool.begin().await?,
        };

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
        // Also drops a second copy of a row within the batch (an upload that
        // re-sent a batch of `XADD`s after a partial failure).
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
        self.insert_ledger_rows(
            &mut tx,
            "rejected_rows (upload_id, \"row_number\", reason, message, fields, created_at_ms)",
            ["text", "bigint", "text", "text", "text", "bigint"],
            &reject_rows,
        )
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
            let contested = self.insert_new_contacts(&mut tx, chunk, now).await?;
            // 3b. The others exist: lock them, and let the earlier row win.
            let to_lock: Vec<&(&str, &JudgedRow)> = chunk
                .iter()
                .filter(|(email, _)| contested.contains(*email))
                .collect();
            let owners = self.lock_owners(&mut tx, &to_lock).await?;
            for (email, r) in chunk {
                let winner = if !contested.contains(*email) {
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
        self.insert_ledger_rows(
            &mut tx,
            "accepted_rows (upload_id, \"row_number\", email)",
            ["text", "bigint", "text"],
            &ledger_rows,
        )
        .await?;
        outcome.replayed += replayed_winners.len() as u64;

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
        let slot: i64 = rand::random_range(0..PROGRESS_SLOTS);
        let upsert = match dialect {
            Dialect::MySql => {
                "INSERT INTO upload_progress (upload_id, slot, rows_processed, rows_rejected, rows_inserted, updated_at_ms) \
                 VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE \
                 rows_processed = rows_processed + VALUES(rows_processed), \
                 rows_rejected = rows_rejected + VALUES(rows_rejected), \
                 rows_inserted = rows_inserted + VALUES(rows_inserted), updated_at_ms = VALUES(updated_at_ms)"
            }
            _ => {
                "INSERT INTO upload_progress (upload_id, slot, rows_processed, rows_rejected, rows_inserted, updated_at_ms) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (upload_id, slot) DO UPDATE SET \
                 rows_processed = upload_progress.rows_processed + excluded.rows_processed, \
                 rows_rejected = upload_progress.rows_rejected + excluded.rows_rejected, \
                 rows_inserted = upload_progress.rows_inserted + excluded.rows_inserted, \
                 updated_at_ms = excluded.updated_at_ms"
            }
        };
        for (upload, (processed, rejected, inserted)) in &per_upload {
            sqlx::query(self.q(upsert))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_columns_separate_values_and_mark_nulls() {
        let mut p = PackedColumns::new(2);
        p.push_row(&[Cell::Text("a@x.org"), Cell::Null]);
        p.push_row(&[Cell::Text("b@x.org"), Cell::Text("{\"k\":\"v\"}")]);
        assert_eq!(
            p.finish(),
            Some(vec![
                "a@x.org\u{1e}b@x.org".to_string(),
                "\u{1f}\u{1e}{\"k\":\"v\"}".to_string()
            ])
        );
    }

    #[test]
    fn packed_columns_unnest_casts_all_but_text() {
        assert_eq!(
            PackedColumns::unnest(&["text", "bigint"]),
            "unnest(string_to_array($1, chr(30), chr(31)), string_to_array($2, chr(30), chr(31))::bigint[])"
        );
    }

    #[test]
    fn packed_columns_refuse_what_they_cannot_carry() {
        for odd in ["", "a\u{1e}b", "\u{1f}"] {
            let mut p = PackedColumns::new(1);
            p.push_row(&[Cell::Text("fine")]);
            p.push_row(&[Cell::Text(odd)]);
            assert_eq!(p.finish(), None, "{odd:?}");
        }
        assert_eq!(PackedColumns::new(1).finish(), None, "no rows");
    }

    #[test]
    fn values_clauses_number_postgres_placeholders_across_rows() {
        let mut sql = String::new();
        values_clause(Dialect::Postgres, 2, 3, &mut sql);
        assert_eq!(sql, "($1, $2, $3), ($4, $5, $6)");
        let mut sql = String::new();
        values_clause(Dialect::MySql, 2, 2, &mut sql);
        assert_eq!(sql, "(?, ?), (?, ?)");
    }
}
