//! Leases on uploads being received: who is reading an upload's body, how
//! far it got, and what happens when nobody is any more.
//!
//! A `receiving` upload is held by the upload-service instance reading its
//! body (`lease_owner`, a per-process id) until `lease_expires_at_ms`. The
//! instance renews the lease three times per lease and records its progress
//! with each renewal: the rows that reached the stream, and the stream ids
//! that bound its entries (`first_entry_id`, `last_entry_id`). An instance
//! that dies stops renewing; any live upload instance or consumer then
//! marks the upload `interrupted` ([`Store::interrupt_lapsed_uploads`]),
//! so a dead instance's upload never stays `receiving`.
//!
//! Every update here is conditional on the status (and, for the holder's
//! own updates, on the owner), so an instance that lost its lease cannot
//! overwrite the upload another instance marked or resumed.

use super::uploads::NewUpload;
use super::{Store, StoreError};
use crate::now_ms;

/// What an upload's writer has put in the stream so far, recorded with each
/// renewal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseProgress {
    /// Rows `1..=rows_enqueued` reached the stream (in this attempt, or
    /// were accounted for or enqueued by an earlier one).
    pub rows_enqueued: i64,
    /// The id of the upload's first entry, once one is written.
    pub first_entry_id: Option<String>,
    /// The id of the last entry written so far.
    pub last_entry_id: Option<String>,
}

/// The condition of a lapsed lease; its first bind is [`leaseless_grace`].
/// An upload without a lease was recorded by an upload service older than
/// leases, which never updates the record while it reads the body: during
/// a rolling upgrade such an upload is live for as long as its body takes,
/// so it lapses only after a long silence, not after one lease.
const LAPSED: &str = "COALESCE(lease_expires_at_ms, updated_at_ms + ?) < ?";

/// `col = <the new value, if larger>`: a count that never goes down (an
/// earlier attempt of a resumed upload may have gone further). The new
/// value is bound twice.
pub(super) fn raise(col: &str) -> String {
    format!("{col} = CASE WHEN {col} < ? THEN ? ELSE {col} END")
}

/// How long a `receiving` upload without a lease may go without an update
/// before it counts as abandoned: an hour, or one lease if that is longer.
fn leaseless_grace(lease_ms: i64) -> i64 {
    lease_ms.max(3_600_000)
}

/// Why a lapsed upload is interrupted, as its record says.
const LAPSED_ERROR: &str = "the upload service instance receiving this upload stopped renewing its lease \
     (it died, or lost its database); POST the same file with the same Idempotency-Key to resume it";

impl Store {
    /// Record a new upload in `receiving` state, held by `owner` for
    /// `lease_ms`; returns its sequence number.
    pub async fn create_upload_leased(
        &self,
        new: &NewUpload,
        owner: &str,
        lease_ms: i64,
    ) -> Result<i64, StoreError> {
        self.insert_upload(new, Some((owner, now_ms() + lease_ms)))
            .await
    }

    /// Extend `owner`'s lease on upload `id` by `lease_ms` from now and
    /// record `progress`. False when the upload is no longer `owner`'s to
    /// receive (it was marked interrupted, or resumed by another instance).
    pub async fn renew_lease(
        &self,
        id: &str,
        owner: &str,
        lease_ms: i64,
        progress: &LeaseProgress,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let renewed = sqlx::query(self.q(&format!(
            "UPDATE uploads SET lease_expires_at_ms = ?, updated_at_ms = ?, {}, {}, \
             first_entry_id = COALESCE(first_entry_id, ?), \
             last_entry_id = COALESCE(?, last_entry_id) \
             WHERE id = ? AND status = 'receiving' AND lease_owner = ?",
            raise("rows_enqueued"),
            raise("rows_read"),
        )))
        .bind(now + lease_ms)
        .bind(now)
        .bind(progress.rows_enqueued)
        .bind(progress.rows_enqueued)
        .bind(progress.rows_enqueued)
        .bind(progress.rows_enqueued)
        .bind(&progress.first_entry_id)
        .bind(&progress.last_entry_id)
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(renewed > 0)
    }

    /// The upload `owner` is receiving stopped for a reason of the service
    /// (the client's connection dropped, Redis or the database failed, the
    /// shutdown grace ran out): mark it `interrupted` with the row reached.
    /// Its rows already in the stream are still processed and counted, and a
    /// POST with the same key resumes it. The counts never go down: an
    /// earlier attempt of a resumed upload may have gone further. False if
    /// the upload was no longer `owner`'s.
    pub async fn interrupt_upload(
        &self,
        id: &str,
        owner: &str,
        error: &str,
        rows_read: i64,
        rows_enqueued: i64,
        last_entry_id: Option<&str>,
    ) -> Result<bool, StoreError> {
        let marked = sqlx::query(self.q(&format!(
            "UPDATE uploads SET status = 'interrupted', error = ?, {}, {}, \
             last_entry_id = COALESCE(?, last_entry_id), lease_expires_at_ms = NULL, \
             updated_at_ms = ? \
             WHERE id = ? AND status = 'receiving' AND lease_owner = ?",
            raise("rows_read"),
            raise("rows_enqueued"),
        )))
        .bind(error)
        .bind(rows_read)
        .bind(rows_read)
        .bind(rows_enqueued)
        .bind(rows_enqueued)
        .bind(last_entry_id)
        .bind(now_ms())
        .bind(id)
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(marked > 0)
    }

    /// Mark `interrupted` every `receiving` upload whose lease (`lease_ms`)
    /// lapsed, uploads recorded without a lease after [`leaseless_grace`];
    /// returns the ids this call marked.
    ///
    /// The dead instance wrote nothing after its lease lapsed, so every
    /// entry of the upload is at or below `stream_tip` (the stream's last
    /// generated id, read before this call), which becomes its
    /// `last_entry_id`. `rows_enqueued` stays what the last renewal
    /// recorded; the consumers raise it to what they account for.
    pub async fn interrupt_lapsed_uploads(
        &self,
        lease_ms: i64,
        stream_tip: &str,
    ) -> Result<Vec<String>, StoreError> {
        let now = now_ms();
        let lapsed: Vec<String> = sqlx::query_scalar(self.q(&format!(
            "SELECT id FROM uploads WHERE status = 'receiving' AND {LAPSED} ORDER BY seq"
        )))
        .bind(leaseless_grace(lease_ms))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        let mut marked = Vec::new();
        for id in lapsed {
            // Conditional again: the owner may have renewed, finished or
            // been resumed since the SELECT, and another sweeper may have
            // marked it first.
            let done = sqlx::query(self.q(&format!(
                "UPDATE uploads SET status = 'interrupted', error = ?, last_entry_id = ?, \
                 lease_expires_at_ms = NULL, updated_at_ms = ? \
                 WHERE id = ? AND status = 'receiving' AND {LAPSED}"
            )))
            .bind(LAPSED_ERROR)
            .bind(stream_tip)
            .bind(now)
            .bind(&id)
            .bind(leaseless_grace(lease_ms))
            .bind(now)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if done > 0 {
                marked.push(id);
            }
        }
        Ok(marked)
    }

    /// Take upload `id` back to `receiving` for a resume by `owner`, with a
    /// fresh lease and one more attempt: only from `interrupted` or
    /// `incomplete`, or from a `receiving` whose lease lapsed (its instance
    /// is gone and no sweep has marked it yet). The error and the missing
    /// rows are cleared; the counts and entry ids are kept (the rows they
    /// describe are still accounted for). False when the upload is not
    /// resumable, e.g. still held by a live instance.
    pub async fn reopen_for_resume(
        &self,
        id: &str,
        owner: &str,
        lease_ms: i64,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let reopened = sqlx::query(self.q(&format!(
            "UPDATE uploads SET status = 'receiving', lease_owner = ?, lease_expires_at_ms = ?, \
             attempts = attempts + 1, error = NULL, rows_missing = 0, missing_rows = NULL, \
             completed_at_ms = NULL, updated_at_ms = ? \
             WHERE id = ? AND (status IN ('interrupted', 'incomplete') \
             OR (status = 'receiving' AND {LAPSED}))"
        )))
        .bind(owner)
        .bind(now + lease_ms)
        .bind(now)
        .bind(id)
        .bind(leaseless_grace(lease_ms))
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(reopened > 0)
    }
}

/// Mark `interrupted` the `receiving` uploads whose lease lapsed (their
/// instance is gone), for the sweeps of both programs; returns their ids.
/// The stream's tip is read first (the greatest of its shards' tips): the
/// dead instance wrote nothing after it, so it bounds the upload's entries.
pub async fn interrupt_lapsed(
    store: &Store,
    con: &mut crate::stream::Connection,
    shards: &crate::stream::shards::Shards,
    lease_ms: i64,
) -> anyhow::Result<Vec<String>> {
    let tip = crate::stream::tip_of_shards(con, shards).await?;
    let marked = store.interrupt_lapsed_uploads(lease_ms, &tip).await?;
    for upload in &marked {
        metrics::counter!("rowpipe_uploads_total", "status" => "interrupted").increment(1);
        tracing::warn!(upload_id = %upload, "upload interrupted: its lease lapsed (the instance receiving it is gone)");
    }
    Ok(marked)
}
