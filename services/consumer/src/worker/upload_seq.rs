//! Each entry's upload sequence, read from the upload's record.
//!
//! The sequence decides which of two rows with the same email wins (the
//! earlier upload's), so it never comes from the entry: any process that
//! can write to the stream could claim to be earlier than every upload and
//! overwrite any contact. It is read from `uploads`; it never changes once
//! the upload is accepted, so a sequence found is cached for the life of
//! the worker. An upload not recorded is not cached: its entries wait (see
//! [`super::batch`]) and it is asked for again at their next delivery.

use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::StoreError;

use super::Worker;
use super::batch::Delivered;

impl Worker {
    /// Look up the sequence of every upload of `delivered` not cached yet,
    /// waiting out a database outage (the caller holds its claim on the
    /// batch meanwhile). `Ok(false)`: shutdown came first.
    pub(super) async fn resolve_seqs(
        &mut self,
        delivered: &[Delivered],
        shutdown: &Shutdown,
    ) -> Result<bool, StoreError> {
        let mut missing: Vec<String> = Vec::new();
        for d in delivered {
            if let Ok(entry) = &d.entry
                && !self.seq_cache.contains_key(&entry.upload_id)
                && !missing.contains(&entry.upload_id)
            {
                missing.push(entry.upload_id.clone());
            }
        }
        for upload in missing {
            let store = &self.store;
            let found = self
                .wait_out(shutdown, || store.upload_seq(&upload))
                .await?;
            match found {
                None => return Ok(false),
                Some(Some(seq)) => {
                    self.seq_cache.insert(upload, seq);
                }
                Some(None) => {}
            }
        }
        Ok(true)
    }

    /// The sequence of `upload_id`, if its record was found.
    pub(super) fn upload_seq_of(&self, upload_id: &str) -> Option<i64> {
        self.seq_cache.get(upload_id).copied()
    }
}
