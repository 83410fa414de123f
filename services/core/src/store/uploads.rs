//! Upload records: what was received, and what became of its rows.
//!
//! Life cycle: `receiving` (the body is being read) → `queued` (every row is
//! in the stream) → `processing` (consumers are on it) → `completed`.
//! Two ends are not the file's fault and can be resumed by a POST of the
//! same file with the same `Idempotency-Key`: `interrupted` (the body was
//! not read to its end because of the service: its instance died, its
//! client's connection dropped, Redis or the database failed) and
//! `incomplete` (rows that reached the stream vanished from it before they
//! were processed, e.g. a Redis that came back empty). `failed` is for the
//! file or the request only (no email column, over the body limit) and is
//! final. The counts obey `rows_read = rows_inserted + rows_duplicate +
//! rows_rejected` once an upload is completed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::{Dialect, Store, StoreError};
use crate::now_ms;

/// Where an upload is in its life cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadStatus {
    Receiving,
    Queued,
    Processing,
    Completed,
    Failed,
    Interrupted,
    Incomplete,
}

impl UploadStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Receiving => "receiving",
            Self::Queued => "queued",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Interrupted => "interrupted",
            Self::Incomplete => "incomplete",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "receiving" => Self::Receiving,
            "queued" => Self::Queued,
            "processing" => Self::Processing,
            "completed" => Self::Completed,
            "interrupted" => Self::Interrupted,
            "incomplete" => Self::Incomplete,
            _ => Self::Failed,
        }
    }
}

/// Text a client controls (a file name, an error naming the file's
/// columns), made fit for every database: control characters (PostgreSQL
/// refuses NUL) become spaces and it is cut at `max_chars` characters.
pub fn storable_text(text: &str, max_chars: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max_chars)
        .collect();
    if text.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

/// Longest file name kept on an upload record, in characters.
pub const MAX_FILE_NAME_CHARS: usize = 255;

/// Longest error kept on an upload record, in characters.
pub const MAX_ERROR_CHARS: usize = 2000;

/// What the upload service knows when a request starts.
#[derive(Clone, Debug, Default)]
pub struct NewUpload {
    pub id: String,
    pub file_name: Option<String>,
    pub idempotency_key: Option<String>,
    /// The tenant whose token sent it (None: an operator token).
    pub tenant: Option<String>,
}

/// The counts reported to the uploader.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadCounts {
    pub read: i64,
    pub enqueued: i64,
    pub processed: i64,
    pub inserted: i64,
    pub duplicates: i64,
    pub rejected: i64,
    /// Rows that reached the stream and were lost before being processed
    /// (an `incomplete` or `interrupted` upload; see `missing_rows`).
    pub missing: i64,
    /// Rejected rows by reason code.
    pub rejected_by_reason: BTreeMap<String, i64>,
    /// Stored rows (inserted or duplicates) whose mail domain the DNS check
    /// could not verify (a timeout, SERVFAIL): see `GET …/unverified`.
    #[serde(default)]
    pub unverified: i64,
}

/// One row of `uploads`, with its counts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadRecord {
    pub upload_id: String,
    pub seq: i64,
    pub status: UploadStatus,
    /// The tenant whose token sent it (None: an operator token, or an
    /// upload older than migration 0006).
    pub tenant: Option<String>,
    pub file_name: Option<String>,
    pub size_bytes: i64,
    pub sha256: Option<String>,
    pub encoding: Option<String>,
    pub delimiter: Option<String>,
    pub error: Option<String>,
    pub counts: UploadCounts,
    /// The row numbers counted in `counts.missing`, as inclusive ranges
    /// `[first, last]` in file order.
    pub missing_rows: Vec<[i64; 2]>,
    /// POSTs of this upload: 1, plus one per resume.
    pub attempts: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub completed_at_ms: Option<i64>,
}

/// The columns of an upload record. A count is `uploads.rows_*` (added by
/// consumers older than migration 0002, e.g. during a rolling upgrade) plus
/// the sum over the upload's progress slots (see
/// `migrations/*/0002_upload_progress.sql`).
fn upload_columns(dialect: Dialect) -> String {
    let int = match dialect {
        Dialect::MySql => "SIGNED",
        _ => "BIGINT",
    };
    let sum = |col: &str| {
        format!(
            "u.{col} + (SELECT CAST(COALESCE(SUM(p.{col}), 0) AS {int}) FROM upload_progress p WHERE p.upload_id = u.id) AS {col}"
        )
    };
    format!(
        "u.seq, u.id, u.status, u.tenant, u.file_name, u.size_bytes, u.sha256, u.encoding, u.delimiter, u.error, \
         u.rows_read, u.rows_enqueued, {}, {}, {}, \
         (SELECT MAX(p.updated_at_ms) FROM upload_progress p WHERE p.upload_id = u.id) AS progress_at_ms, \
         u.created_at_ms, u.updated_at_ms, u.completed_at_ms, \
         u.rows_missing, u.missing_rows, u.attempts",
        sum("rows_processed"),
        sum("rows_inserted"),
        sum("rows_rejected"),
    )
}

fn record_from_row(row: &AnyRow) -> Result<UploadRecord, sqlx::Error> {
    let mut record = UploadRecord {
        seq: row.try_get("seq")?,
        upload_id: row.try_get("id")?,
        status: UploadStatus::parse(&row.try_get::<String, _>("status")?),
        tenant: row.try_get("tenant")?,
        file_name: row.try_get("file_name")?,
        size_bytes: row.try_get("size_bytes")?,
        sha256: row.try_get("sha256")?,
        encoding: row.try_get("encoding")?,
        delimiter: row.try_get("delimiter")?,
        error: row.try_get("error")?,
        counts: UploadCounts {
            read: row.try_get("rows_read")?,
            enqueued: row.try_get("rows_enqueued")?,
            processed: row.try_get("rows_processed")?,
            inserted: row.try_get("rows_inserted")?,
            duplicates: 0,
            rejected: row.try_get("rows_rejected")?,
            missing: row.try_get("rows_missing")?,
            rejected_by_reason: BTreeMap::new(),
            unverified: 0,
        },
        missing_rows: row
            .try_get::<Option<String>, _>("missing_rows")?
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default(),
        attempts: row.try_get::<i64, _>("attempts")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get::<i64, _>("updated_at_ms")?.max(
            row.try_get::<Option<i64>, _>("progress_at_ms")?
                .unwrap_or(0),
        ),
        completed_at_ms: row.try_get("completed_at_ms")?,
    };
    // `rows_inserted` is kept exact by every batch; duplicates follow from
    // it, so a later displacement (an earlier upload's row arriving late)
    // shows in both uploads' counts.
    let c = &mut record.counts;
    c.duplicates = (c.processed - c.rejected - c.inserted).max(0);
    Ok(record)
}

/// What the upload service reports when the body has been read.
#[derive(Clone, Debug, Default)]
pub struct FinishedBody {
    pub size_bytes: i64,
    pub sha256: String,
    pub encoding: String,
    pub delimiter: String,
    pub rows_read: i64,
    pub rows_enqueued: i64,
    /// The id Redis gave the upload's first entry in this attempt (None:
    /// none written); an earlier attempt's first entry stands.
    pub first_entry_id: Option<String>,
    /// The id Redis gave the upload's last entry (None: no entry written
    /// in this attempt; the recorded one stands).
    pub last_entry_id: Option<String>,
    /// The instance whose lease the upload is under; the upload is
    /// finished only if it still holds it. None: whoever holds it.
    pub lease_owner: Option<String>,
}

/// One line of the reject ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct RejectedRow {
    pub row_number: i64,
    pub reason: String,
    pub message: String,
    /// The fields as written, JSON (an object by column, or an array).
    pub fields: String,
}

impl Store {
    /// Record a new upload in `receiving` state; returns its sequence number.
    pub async fn create_upload(&self, new: &NewUpload) -> Result<i64, StoreError> {
        self.insert_upload(new, None).await
    }

    /// Insert a `receiving` upload, held by `lease` (owner, expiry) if
    /// given; returns its sequence number.
    pub(super) async fn insert_upload(
        &self,
        new: &NewUpload,
        lease: Option<(&str, i64)>,
    ) -> Result<i64, StoreError> {
        let now = now_ms();
        sqlx::query(self.q(
            "INSERT INTO uploads (id, file_name, idempotency_key, tenant, status, created_at_ms, \
             updated_at_ms, lease_owner, lease_expires_at_ms) \
             VALUES (?, ?, ?, ?, 'receiving', ?, ?, ?, ?)",
        ))
        .bind(&new.id)
        .bind(
            new.file_name
                .as_deref()
                .map(|n| storable_text(n, MAX_FILE_NAME_CHARS)),
        )
        .bind(&new.idempotency_key)
        .bind(&new.tenant)
        .bind(now)
        .bind(now)
        .bind(lease.map(|(owner, _)| owner))
        .bind(lease.map(|(_, expires)| expires))
        .execute(&self.pool)
        .await?;
        let seq: i64 = sqlx::query_scalar(self.q("SELECT seq FROM uploads WHERE id = ?"))
            .bind(&new.id)
            .fetch_one(&self.pool)
            .await?;
        Ok(seq)
    }

    /// An upload by idempotency key, if one exists.
    pub async fn upload_by_idempotency_key(
        &self,
        key: &str,
    ) -> Result<Option<UploadRecord>, StoreError> {
        let id: Option<String> =
            sqlx::query_scalar(self.q("SELECT id FROM uploads WHERE idempotency_key = ?"))
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        match id {
            Some(id) => self.get_upload(&id).await,
            None => Ok(None),
        }
    }

    /// The first non-failed upload of `tenant` (None: sent with an operator
    /// token) with this content hash since `since_ms`.
    pub async fn upload_by_sha256(
        &self,
        sha256: &str,
        since_ms: i64,
        tenant: Option<&str>,
    ) -> Result<Option<UploadRecord>, StoreError> {
        let tenant_is = if tenant.is_some() {
            "tenant = ?"
        } else {
            "tenant IS NULL"
        };
        let mut query = sqlx::query_scalar(self.q(&format!(
            "SELECT id FROM uploads WHERE sha256 = ? AND created_at_ms >= ? \
             AND status <> 'failed' AND {tenant_is} ORDER BY seq ASC LIMIT 1"
        )))
        .bind(sha256)
        .bind(since_ms);
        if let Some(tenant) = tenant {
            query = query.bind(tenant);
        }
        let id: Option<String> = query.fetch_optional(&self.pool).await?;
        match id {
            Some(id) => self.get_upload(&id).await,
            None => Ok(None),
        }
    }

    /// Every row is in the stream: record the body's facts, move to `queued`
    /// (or `processing` if consumers already started), and complete at once
    /// if consumers already finished. False when the upload was no longer
    /// `receiving` under `body.lease_owner` (its lease lapsed and it was
    /// marked interrupted, or another instance resumed it).
    pub async fn finish_receiving(
        &self,
        id: &str,
        body: &FinishedBody,
    ) -> Result<bool, StoreError> {
        let owner_check = if body.lease_owner.is_some() {
            " AND lease_owner = ?"
        } else {
            ""
        };
        let sql = self.q(&format!(
            "UPDATE uploads SET size_bytes = ?, sha256 = ?, encoding = ?, delimiter = ?, \
             rows_read = ?, rows_enqueued = ?, first_entry_id = COALESCE(first_entry_id, ?), \
             last_entry_id = COALESCE(?, last_entry_id), \
             lease_expires_at_ms = NULL, updated_at_ms = ?, \
             status = CASE WHEN rows_processed > 0 THEN 'processing' ELSE 'queued' END \
             WHERE id = ? AND status = 'receiving'{owner_check}"
        ));
        let mut update = sqlx::query(sql)
            .bind(body.size_bytes)
            .bind(&body.sha256)
            .bind(&body.encoding)
            .bind(&body.delimiter)
            .bind(body.rows_read)
            .bind(body.rows_enqueued)
            .bind(&body.first_entry_id)
            .bind(&body.last_entry_id)
            .bind(now_ms())
            .bind(id);
        if let Some(owner) = &body.lease_owner {
            update = update.bind(owner);
        }
        let finished = update.execute(&self.pool).await?.rows_affected() > 0;
        // Not finished here (interrupted, or resumed elsewhere): not this
        // call's to complete either.
        if finished {
            self.try_complete(id).await?;
        }
        Ok(finished)
    }

    /// The body could not be read to the end. Rows already in the stream are
    /// still processed and counted; the upload stays `failed`.
    pub async fn fail_upload(
        &self,
        id: &str,
        error: &str,
        rows_read: i64,
        rows_enqueued: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(self.q(
            "UPDATE uploads SET status = 'failed', error = ?, rows_read = ?, rows_enqueued = ?, \
             updated_at_ms = ? WHERE id = ?",
        ))
        .bind(storable_text(error, MAX_ERROR_CHARS))
        .bind(rows_read)
        .bind(rows_enqueued)
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Mark the upload `completed` if every enqueued row has been processed.
    /// Called by the upload service and by every consumer after a commit;
    /// the conditional update makes exactly one caller win. Returns true for
    /// that caller.
    pub async fn try_complete(&self, id: &str) -> Result<bool, StoreError> {
        // Every batch calls this and only the last one finds the upload
        // done: the others stop at this one read and take no lock. Once
        // every enqueued row is processed the counts no longer change
        // (redeliveries are not counted), so the values read here are final.
        let Some(upload) = self.upload_record(id).await? else {
            return Ok(false);
        };
        let c = &upload.counts;
        let open = matches!(
            upload.status,
            UploadStatus::Queued | UploadStatus::Processing
        );
        if !open {
            return Ok(false);
        }
        if c.processed < c.enqueued {
            // `queued` becomes `processing` with the first batch this check
            // follows, in this read's stead of a statement in every batch.
            if upload.status == UploadStatus::Queued && c.processed > 0 {
                sqlx::query(self.q(
                    "UPDATE uploads SET status = 'processing', updated_at_ms = ? \
                     WHERE id = ? AND status = 'queued'",
                ))
                .bind(now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?;
            }
            return Ok(false);
        }
        let now = now_ms();
        let claimed = sqlx::query(self.q(
            "UPDATE uploads SET status = 'completed', completed_at_ms = ?, updated_at_ms = ?, \
             rows_duplicate = ? \
             WHERE id = ? AND status IN ('queued', 'processing') AND rows_enqueued <= ?",
        ))
        .bind(now)
        .bind(now)
        .bind(c.duplicates)
        .bind(id)
        .bind(c.processed)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed > 0)
    }

    /// `SELECT` of upload records (see [`upload_columns`]) from `uploads u`,
    /// then `tail` (portable SQL).
    fn select_uploads(&self, tail: &str) -> AssertSqlSafe<String> {
        self.q(&format!(
            "SELECT {} FROM uploads u {tail}",
            upload_columns(self.dialect)
        ))
    }

    /// An upload's row with its live counts (no per-reason breakdown).
    async fn upload_record(&self, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        let row = sqlx::query(self.select_uploads("WHERE u.id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(record_from_row).transpose()?)
    }

    /// One upload with its live counts.
    pub async fn get_upload(&self, id: &str) -> Result<Option<UploadRecord>, StoreError> {
        let Some(mut record) = self.upload_record(id).await? else {
            return Ok(None);
        };
        self.add_rejected_by_reason(std::slice::from_mut(&mut record))
            .await?;
        record.counts.unverified = self.unverified_count(id).await?;
        Ok(Some(record))
    }

    /// Fill in each record's `rejected_by_reason`, in one query for all.
    async fn add_rejected_by_reason(&self, records: &mut [UploadRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let placeholders = vec!["?"; records.len()].join(", ");
        let sql = self.q(&format!(
            "SELECT upload_id, reason, COUNT(*) AS n FROM rejected_rows \
             WHERE upload_id IN ({placeholders}) GROUP BY upload_id, reason"
        ));
        let mut query = sqlx::query(sql);
        for record in records.iter() {
            query = query.bind(record.upload_id.as_str());
        }
        let reasons = query.fetch_all(&self.pool).await?;
        for r in reasons {
            let upload_id: String = r.try_get("upload_id")?;
            if let Some(record) = records.iter_mut().find(|rec| rec.upload_id == upload_id) {
                record
                    .counts
                    .rejected_by_reason
                    .insert(r.try_get("reason")?, r.try_get("n")?);
            }
        }
        Ok(())
    }

    /// The most recent uploads, newest first.
    pub async fn list_uploads(&self, limit: i64) -> Result<Vec<UploadRecord>, StoreError> {
        self.list_uploads_of(None, limit).await
    }

    /// The most recent uploads of `tenant` (None: of every tenant), newest
    /// first, each with its `rejected_by_reason`.
    pub async fn list_uploads_of(
        &self,
        tenant: Option<&str>,
        limit: i64,
    ) -> Result<Vec<UploadRecord>, StoreError> {
        let rows = match tenant {
            Some(tenant) => {
                sqlx::query(self.select_uploads("WHERE u.tenant = ? ORDER BY u.seq DESC LIMIT ?"))
                    .bind(tenant)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query(self.select_uploads("ORDER BY u.seq DESC LIMIT ?"))
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        let mut records = rows
            .iter()
            .map(record_from_row)
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        self.add_rejected_by_reason(&mut records).await?;
        Ok(records)
    }

    /// The tenant an upload belongs to: None when there is no such upload,
    /// Some(None) for an upload sent with an operator token.
    pub async fn upload_tenant(&self, id: &str) -> Result<Option<Option<String>>, StoreError> {
        Ok(
            sqlx::query_scalar(self.q("SELECT tenant FROM uploads WHERE id = ?"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Complete every open upload whose rows are all processed; returns the
    /// ids it completed. The safety net behind the check after each batch:
    /// the process that stored an upload's last row may have died before
    /// its check, or the check may have failed.
    pub async fn complete_finished_uploads(&self) -> Result<Vec<String>, StoreError> {
        let open: Vec<String> = sqlx::query_scalar(
            self.q("SELECT id FROM uploads WHERE status IN ('queued', 'processing') ORDER BY seq"),
        )
        .fetch_all(&self.pool)
        .await?;
        let mut completed = Vec::new();
        for id in open {
            // One upload that cannot be checked does not hold up the others;
            // the next sweep tries it again.
            match self.try_complete(&id).await {
                Ok(true) => completed.push(id),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(upload_id = %id, error = %e, "could not check upload completion")
                }
            }
        }
        Ok(completed)
    }

    /// The sequence number of an upload, for entries written by other producers.
    pub async fn upload_seq(&self, id: &str) -> Result<Option<i64>, StoreError> {
        Ok(
            sqlx::query_scalar(self.q("SELECT seq FROM uploads WHERE id = ?"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The reject ledger of an upload, in row order, one page at a time
    /// (rows with `row_number > after`), so huge ledgers stream in bounded memory.
    pub async fn rejected_rows_page(
        &self,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<RejectedRow>, StoreError> {
        self.ledger_page(
            "\"row_number\", reason, message, fields FROM rejected_rows",
            id,
            after,
            limit,
        )
        .await
    }

    /// One page of upload `id`'s rows in a ledger, in row order (rows with
    /// `row_number > after`, at most `limit`): `select` names the columns
    /// and the table (`"row_number", reason FROM rejected_rows`), which
    /// every export pages through the same way.
    pub(crate) async fn ledger_page<T>(
        &self,
        select: &str,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<T>, StoreError>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        let sql = format!(
            "SELECT {select} WHERE upload_id = ? AND \"row_number\" > ? ORDER BY \"row_number\" LIMIT ?"
        );
        Ok(sqlx::query_as::<_, T>(self.q(&sql))
            .bind(id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Row numbers of an upload's duplicates (valid rows that lost to an
    /// earlier row with the same email), with that email, one page at a time.
    pub async fn duplicate_rows_page(
        &self,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(self.q(
            "SELECT a.\"row_number\" AS rn, a.email AS email FROM accepted_rows a \
             LEFT JOIN contacts c ON c.email = a.email AND c.upload_id = a.upload_id \
             AND c.\"row_number\" = a.\"row_number\" \
             WHERE a.upload_id = ? AND a.\"row_number\" > ? AND c.email IS NULL \
             ORDER BY a.\"row_number\" LIMIT ?",
        ))
        .bind(id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("rn")?, r.try_get("email")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }
}
