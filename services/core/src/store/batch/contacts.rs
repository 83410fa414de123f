//! Step 3 of a batch, on the `contacts` table: insert the emails nobody
//! has, lock the others' stored rows and learn who holds them, and replace
//! a stored row by an earlier one.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AssertSqlSafe, Row};

use super::encode::{Cell, PackedColumns, bind_rows};
use super::{Owner, Tx, sql};
use crate::store::{Dialect, Store, StoreError};
use crate::verdict::{JudgedRow, RowVerdict};

/// What step 3a learnt about a chunk's emails.
pub(super) enum Inserted {
    /// PostgreSQL, SQLite (`RETURNING`): these were stored already; the
    /// others were inserted now. Their holders are for
    /// [`Store::lock_owners`] to learn.
    Contested(HashSet<String>),
    /// MySQL: the insert cannot say which rows it inserted, so every email
    /// is left to [`Store::lock_owners`] (its own inserts are recognised
    /// there by who holds the email).
    Unknown,
    /// MariaDB 10.5+: who holds each email after the insert, each row
    /// locked by it, so no lock statement follows.
    Holders(HashMap<String, Owner>),
}

impl Inserted {
    /// Was this email stored before the insert, or may it have been?
    pub(super) fn contested(&self, email: &str) -> bool {
        match self {
            Inserted::Contested(emails) => emails.contains(email),
            Inserted::Unknown | Inserted::Holders(_) => true,
        }
    }
}

impl Store {
    /// Insert candidates whose email is not stored yet, and say what the
    /// dialect can tell of which were (see [`Inserted`]); `returning`: the
    /// MySQL-protocol server has `INSERT … RETURNING` (MariaDB 10.5+).
    pub(super) async fn insert_new_contacts(
        &self,
        tx: &mut Tx,
        chunk: &[(&str, &JudgedRow)],
        now: i64,
        returning: bool,
    ) -> Result<Inserted, StoreError> {
        let dialect = self.dialect;
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
            // `created_at_ms` always goes as a single parameter, and the
            // upload's id and seq too when the chunk holds one upload
            // (nearly always): see `sql::postgres::insert_contacts`.
            let one_upload = chunk
                .first()
                .map(|(_, f)| (f.upload_id.as_str(), f.upload_seq))
                .filter(|&(u, s)| {
                    chunk
                        .iter()
                        .all(|(_, r)| r.upload_id == u && r.upload_seq == s)
                });
            let mut packed = PackedColumns::new(if one_upload.is_some() { 5 } else { 7 });
            for row in &rows {
                match one_upload {
                    Some(_) => packed.push_row(&[row[0], row[1], row[2], row[3], row[6]]),
                    None => packed.push_row(&row[..7]),
                }
            }
            if let Some(columns) = packed.finish() {
                let sql = sql::postgres::insert_contacts(one_upload.is_some());
                let mut q = PackedColumns::query(sql, columns);
                if let Some((upload, seq)) = one_upload {
                    q = q.bind(upload).bind(seq);
                }
                let inserted: String = q.bind(now).fetch_one(&mut **tx).await?.try_get(0)?;
                let inserted: HashSet<&str> = inserted
                    .split(PackedColumns::SEPARATOR)
                    .filter(|e| !e.is_empty())
                    .collect();
                return Ok(contested(chunk, |e| inserted.contains(e)));
            }
            // Values the packed form cannot carry: the plain VALUES form below.
        }
        let q = bind_rows(sql::insert_contacts(dialect, rows.len(), returning), &rows);
        if dialect == Dialect::MySql {
            if !returning {
                q.execute(&mut **tx).await?;
                return Ok(Inserted::Unknown);
            }
            let mut owners = HashMap::with_capacity(rows.len());
            for row in q.fetch_all(&mut **tx).await? {
                owners.insert(
                    row.try_get::<String, _>(0)?,
                    (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?),
                );
            }
            return Ok(Inserted::Holders(owners));
        }
        let mut inserted = HashSet::new();
        for row in q.fetch_all(&mut **tx).await? {
            inserted.insert(row.try_get::<String, _>(0)?);
        }
        Ok(contested(chunk, |e| inserted.contains(e)))
    }

    /// Lock the stored rows of these emails (in email order) and say who
    /// holds each.
    pub(super) async fn lock_owners(
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
            // the prepared statement is reused.
            let mut packed = PackedColumns::new(1);
            for (e, _) in contested {
                packed.push_row(&[Cell::Text(e)]);
            }
            if let Some(columns) = packed.finish() {
                let q = PackedColumns::query(sql::postgres::lock_contacts(), columns);
                for row in q.fetch_all(&mut **tx).await? {
                    owners.insert(
                        row.try_get::<String, _>(0)?,
                        (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?),
                    );
                }
                return Ok(owners);
            }
        }
        let sql = sql::lock_contacts(dialect, contested.len());
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
    pub(super) async fn displace(
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
            sqlx::query(self.q(sql::DISPLACE))
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
}

/// The chunk's emails that the insert did not insert.
fn contested(chunk: &[(&str, &JudgedRow)], inserted: impl Fn(&str) -> bool) -> Inserted {
    Inserted::Contested(
        chunk
            .iter()
            .filter(|(e, _)| !inserted(e))
            .map(|(e, _)| e.to_string())
            .collect(),
    )
}
