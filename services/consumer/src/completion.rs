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

use rowpipe_core::store::{Store, StoreError};

/// Check one upload; true if this call completed it (and said so).
pub async fn check(store: &Store, upload: &str) -> Result<bool, StoreError> {
    if !store.try_complete(upload).await? {
        return Ok(false);
    }
    announce(store, upload).await;
    Ok(true)
}

/// Complete every open upload whose rows are all processed.
pub async fn sweep(store: &Store) -> Result<Vec<String>, StoreError> {
    let completed = store.complete_finished_uploads().await?;
    for upload in &completed {
        tracing::info!(upload_id = %upload, "upload completed by the sweep (its last batch's own check did not run)");
        announce(store, upload).await;
    }
    Ok(completed)
}

/// The completion's metrics and log line, once per upload.
async fn announce(store: &Store, upload: &str) {
    metrics::counter!("rowpipe_uploads_total", "status" => "completed").increment(1);
    // The row counters move per batch (see `worker::batch`), not here.
    if let Ok(Some(rec)) = store.get_upload(upload).await {
        tracing::info!(
            upload_id = %upload,
            read = rec.counts.read,
            inserted = rec.counts.inserted,
            duplicates = rec.counts.duplicates,
            rejected = rec.counts.rejected,
            "upload completed"
        );
    }
}
