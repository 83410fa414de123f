//! Marking uploads `completed`.
//!
//! An upload is complete once every row it enqueued is processed. The
//! consumer that stores an upload's last row notices first: it checks every
//! upload its batch held, right after the commit. That check is not enough
//! on its own: the consumer can die between its commit and the check, the
//! check can fail, and the upload service can die between recording the
//! final row count and its own check. So every consumer process also sweeps
//! the open uploads now and then ([`sweep`]). The store's conditional update
//! makes exactly one of all these callers the one that completes an upload.

use rowpipe_core::store::{Store, StoreError, UploadCounts};

/// Check one upload; true if this call completed it (and said so).
pub async fn check(store: &Store, upload: &str) -> Result<bool, StoreError> {
    let Some(counts) = store.try_complete(upload).await? else {
        return Ok(false);
    };
    announce(upload, &counts);
    Ok(true)
}

/// Complete every open upload whose rows are all processed.
pub async fn sweep(store: &Store) -> Result<Vec<String>, StoreError> {
    let completed = store.complete_finished_uploads().await?;
    for (upload, counts) in &completed {
        tracing::info!(upload_id = %upload, "upload completed by the sweep (its last batch's own check did not run)");
        announce(upload, counts);
    }
    Ok(completed.into_iter().map(|(upload, _)| upload).collect())
}

/// The completion's metrics and log line, once per upload, from the counts
/// it was completed with.
fn announce(upload: &str, counts: &UploadCounts) {
    metrics::counter!("rowpipe_uploads_total", "status" => "completed").increment(1);
    metrics::counter!("rowpipe_consumer_rows_inserted_total").increment(counts.inserted as u64);
    metrics::counter!("rowpipe_consumer_rows_duplicate_total").increment(counts.duplicates as u64);
    tracing::info!(
        upload_id = %upload,
        read = counts.read,
        inserted = counts.inserted,
        duplicates = counts.duplicates,
        rejected = counts.rejected,
        "upload completed"
    );
}
