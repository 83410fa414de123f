//! The bytes of pipelines all uploads of an instance hold at once.
//!
//! Each upload builds a pipeline while its writer writes the one before,
//! so its memory is bounded by a few pipelines of at most
//! `ROWPIPE_ENQUEUE_BATCH_BYTES`; but with rows of a mebibyte, eight uploads
//! at once hold eight times that. Every row takes its bytes from one budget
//! shared by the instance's uploads as it joins a pipeline, and the pipeline
//! gives them back once written, so the pipelines being built, waiting and
//! being written stay within `ROWPIPE_UPLOAD_BUFFER_BYTES` however many
//! uploads run. An upload that finds the budget spent first hands what it
//! has built to its writer, then waits, as it would for a full stream; so
//! no upload waits on the budget while holding a share nobody can free.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Budget accounting is in KiB: a semaphore holds at most `u32::MAX`
/// permits per acquisition.
const UNIT: usize = 1024;

/// A share of the budget, given back when dropped.
pub type BufferShare = OwnedSemaphorePermit;

#[derive(Clone, Debug)]
pub struct BufferBudget {
    permits: Arc<Semaphore>,
    total: u32,
}

impl BufferBudget {
    pub fn new(bytes: usize) -> Self {
        let total = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            permits: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Take `bytes` from the budget if it has them now.
    pub fn try_take(&self, bytes: usize) -> Option<BufferShare> {
        self.permits
            .clone()
            .try_acquire_many_owned(self.units(bytes))
            .ok()
    }

    fn units(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT).max(1))
            .unwrap_or(u32::MAX)
            .min(self.total)
    }

    /// Take `bytes` from the budget, waiting for other uploads' pipelines
    /// to be written if it is spent. A pipeline larger than the whole
    /// budget takes all of it. `None` only if the budget was closed, which
    /// nothing does: the pipeline then goes without a share.
    pub async fn take(&self, bytes: usize) -> Option<BufferShare> {
        self.permits
            .clone()
            .acquire_many_owned(self.units(bytes))
            .await
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_budget_says_so_at_once() {
        let budget = BufferBudget::new(2 * UNIT);
        let held = budget.try_take(2 * UNIT);
        assert!(held.is_some());
        assert!(budget.try_take(1).is_none());
        drop(held);
        assert!(budget.try_take(1).is_some());
    }

    #[tokio::test]
    async fn shares_wait_until_earlier_ones_are_given_back() {
        let budget = BufferBudget::new(2 * UNIT);
        let first = budget.take(2 * UNIT).await;
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), budget.take(UNIT));
        assert!(waiting.await.is_err(), "the budget is spent");
        drop(first);
        let _second = budget.take(UNIT).await;
        // Larger than the whole budget: all of it, not a wait forever.
        drop(_second);
        let _all = budget.take(100 * UNIT).await;
    }
}
