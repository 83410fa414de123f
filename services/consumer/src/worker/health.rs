//! What readiness reports: the last known state of each dependency, set by
//! the workers as they see it answer or fail.

use std::sync::atomic::{AtomicBool, Ordering};

/// The last known state of each dependency, shared by a process's workers.
#[derive(Debug)]
pub struct Health {
    pub redis_ok: AtomicBool,
    pub db_ok: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            redis_ok: AtomicBool::new(true),
            db_ok: AtomicBool::new(true),
        }
    }
}

impl Health {
    pub fn ready(&self) -> bool {
        self.redis_ok.load(Ordering::Relaxed) && self.db_ok.load(Ordering::Relaxed)
    }

    pub(crate) fn set_db(&self, ok: bool) {
        self.db_ok.store(ok, Ordering::Relaxed);
        self.publish();
    }

    pub(crate) fn set_redis(&self, ok: bool) {
        self.redis_ok.store(ok, Ordering::Relaxed);
        self.publish();
    }

    fn publish(&self) {
        metrics::gauge!("rowpipe_consumer_ready").set(if self.ready() { 1.0 } else { 0.0 });
    }
}
