//! The lease of an upload being received, and the sweep that names the
//! uploads whose instance is gone.
//!
//! While an upload's body is read, a renewal task extends its lease every
//! third of `ROWPIPE_UPLOAD_LEASE_SECS` and records how far the writer got
//! (the rows in the stream, the ids bounding its entries). If this process
//! dies, the renewals stop and the lease lapses; every upload instance runs
//! [`sweep_lapsed`], which marks such uploads `interrupted`, so a dead
//! instance's upload never stays `receiving`.
//!
//! A request can also end without reaching any end of its own: when the
//! client's connection drops, the server may drop the request's future
//! mid-body. [`Lease`]'s `Drop` then marks the upload `interrupted` at once
//! instead of leaving it to the lease.

use std::time::{Duration, Instant};

use rowpipe_core::config::LeaseConfig;
use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::{LeaseProgress, Store};
use rowpipe_core::stream::Connection;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::AppState;

/// Why a request that ended without an end of its own left the upload.
const DROPPED: &str = "the request ended before the body was read to its end \
     (the client's connection dropped)";

/// How long an interrupted request waits for its writer to finish the
/// batches in hand before recording the row reached.
const WRITER_DRAIN: Duration = Duration::from_secs(10);

/// This instance's hold on one upload it is receiving.
pub struct Lease {
    store: Store,
    upload_id: String,
    owner: String,
    progress: watch::Receiver<LeaseProgress>,
    lost: watch::Receiver<bool>,
    renewal: JoinHandle<()>,
    /// Set once the upload's record reached an end this request wrote.
    settled: bool,
}

/// The writer's side of a [`Lease`]: what it put in the stream. Dropped
/// when the writer is done, which tells the lease the progress is final.
pub type ProgressSender = watch::Sender<LeaseProgress>;

impl Lease {
    /// Start renewing this instance's lease on `upload_id`, whose rows up to
    /// `prior.rows_enqueued` an earlier attempt already put in the stream.
    pub fn start(
        state: &AppState,
        upload_id: &str,
        prior: LeaseProgress,
    ) -> (Self, ProgressSender) {
        let (progress_tx, progress) = watch::channel(prior);
        let (lost_tx, lost) = watch::channel(false);
        let renewal = tokio::spawn(renew(
            state.store.clone(),
            upload_id.to_string(),
            state.instance_id.to_string(),
            state.config.lease.clone(),
            progress.clone(),
            lost_tx,
        ));
        let lease = Lease {
            store: state.store.clone(),
            upload_id: upload_id.to_string(),
            owner: state.instance_id.to_string(),
            progress,
            lost,
            renewal,
            settled: false,
        };
        (lease, progress_tx)
    }

    /// The instance that holds the lease.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// What the writer has put in the stream so far.
    pub fn progress(&self) -> LeaseProgress {
        self.progress.borrow().clone()
    }

    /// Resolves if the lease is lost: the upload was marked interrupted (or
    /// resumed elsewhere) while this instance was still reading it, or the
    /// database could not be reached for a whole lease. Never resolves
    /// otherwise.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut lost = self.lost.clone();
        async move {
            if lost.wait_for(|l| *l).await.is_err() {
                // The renewal task ended without losing the lease: settled.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The upload reached an end this request recorded: stop renewing.
    pub fn settle(&mut self) {
        self.settled = true;
        self.renewal.abort();
    }

    /// Mark the upload `interrupted` with the row reached, once the writer
    /// is done (its final progress is what reached the stream). Returns
    /// whether this instance still held it.
    pub async fn interrupt(&mut self, error: &str, rows_read: i64) -> bool {
        self.settle();
        interrupt(
            &self.store,
            &self.upload_id,
            &self.owner,
            self.progress.clone(),
            error,
            rows_read,
        )
        .await
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        self.renewal.abort();
        let store = self.store.clone();
        let upload_id = std::mem::take(&mut self.upload_id);
        let owner = std::mem::take(&mut self.owner);
        let progress = self.progress.clone();
        // The runtime may be gone (the process is exiting); the lease then
        // lapses and a sweep marks the upload instead.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                interrupt(&store, &upload_id, &owner, progress, DROPPED, 0).await;
            });
        }
    }
}

/// Wait for the writer to be done (up to [`WRITER_DRAIN`]), then record the
/// upload `interrupted` at what reached the stream.
async fn interrupt(
    store: &Store,
    upload_id: &str,
    owner: &str,
    mut progress: watch::Receiver<LeaseProgress>,
    error: &str,
    rows_read: i64,
) -> bool {
    let drained = tokio::time::timeout(WRITER_DRAIN, async {
        while progress.changed().await.is_ok() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            upload_id,
            "the writer did not finish; recording the progress seen so far"
        );
    }
    let p = progress.borrow().clone();
    let error = rowpipe_core::store::uploads::storable_text(
        error,
        rowpipe_core::store::uploads::MAX_ERROR_CHARS,
    );
    let error = error.as_str();
    match store
        .interrupt_upload(
            upload_id,
            owner,
            error,
            rows_read.max(p.rows_enqueued),
            p.rows_enqueued,
            p.last_entry_id.as_deref(),
        )
        .await
    {
        Ok(marked) => {
            if marked {
                metrics::counter!("rowpipe_uploads_total", "status" => "interrupted").increment(1);
                tracing::warn!(
                    upload_id,
                    rows_enqueued = p.rows_enqueued,
                    error,
                    "upload interrupted"
                );
            }
            marked
        }
        Err(e) => {
            // The lease is no longer renewed: it lapses, and a sweep marks
            // the upload once the database answers again.
            tracing::error!(upload_id, error = %e, "could not record the upload as interrupted");
            false
        }
    }
}

/// Renew `owner`'s lease on `upload_id` until aborted; report a lost lease.
async fn renew(
    store: Store,
    upload_id: String,
    owner: String,
    lease: LeaseConfig,
    progress: watch::Receiver<LeaseProgress>,
    lost: watch::Sender<bool>,
) {
    let lease_ms = lease.lease_ms();
    let mut held_at = Instant::now();
    loop {
        tokio::time::sleep(lease.renew_every()).await;
        let p = progress.borrow().clone();
        match store.renew_lease(&upload_id, &owner, lease_ms, &p).await {
            Ok(true) => held_at = Instant::now(),
            Ok(false) => {
                tracing::warn!(upload_id, "the upload's lease was taken over; stopping it");
                let _ = lost.send(true);
                return;
            }
            Err(e) => {
                metrics::counter!("rowpipe_db_errors_total", "program" => "upload").increment(1);
                tracing::warn!(upload_id, error = %e, "could not renew the upload's lease");
                // Past the lease, a sweeper may mark the upload at any
                // moment: writing on would put rows outside the range it
                // records.
                if held_at.elapsed() >= Duration::from_millis(lease_ms as u64) {
                    let _ = lost.send(true);
                    return;
                }
            }
        }
    }
}

/// Every few seconds until shutdown: mark `interrupted` the uploads whose
/// lease lapsed (their instance is gone), with the stream's tip as the
/// bound of their entries.
pub async fn sweep_lapsed(
    store: Store,
    mut redis: Connection,
    shards: rowpipe_core::stream::shards::Shards,
    lease: LeaseConfig,
    mut shutdown: Shutdown,
) {
    let every = (lease.renew_every()).clamp(Duration::from_millis(500), Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.requested() => return,
        }
        let swept = rowpipe_core::store::leases::interrupt_lapsed(
            &store,
            &mut redis,
            &shards,
            lease.lease_ms(),
        )
        .await;
        if let Err(e) = swept {
            tracing::debug!(error = %format!("{e:#}"), "cannot sweep lapsed uploads; sweeping later");
        }
    }
}
