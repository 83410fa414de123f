//! What readiness reports, and which dependency a failure is blamed on.
//!
//! Each flag is the last known state of one dependency. A worker clears the
//! flag of the dependency that failed it ([`Health::blame`]) and sets it
//! again once that dependency answers, so `/readyz` says which one is away.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use rowpipe_core::store::StoreError;

use super::error::{Dependency, WorkerError};

/// The last known state of each dependency, shared by a process's workers.
#[derive(Debug)]
pub struct Health {
    pub redis_ok: AtomicBool,
    pub db_ok: AtomicBool,
    /// The code of the error that last marked the database not ready
    /// (`42501`, `call_timed_out`, …), for `/readyz`.
    db_error: Mutex<Option<String>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            redis_ok: AtomicBool::new(true),
            db_ok: AtomicBool::new(true),
            db_error: Mutex::new(None),
        }
    }
}

impl Health {
    pub fn ready(&self) -> bool {
        self.redis_ok.load(Ordering::Relaxed) && self.db_ok.load(Ordering::Relaxed)
    }

    pub(crate) fn set_db(&self, ok: bool) {
        // Most calls find it as it was: no store, no gauge update.
        if self.db_ok.swap(ok, Ordering::Relaxed) != ok {
            self.publish();
        }
    }

    /// The database has been away for a while: not ready, and why.
    pub(crate) fn database_down(&self, error: &StoreError) {
        if let Ok(mut last) = self.db_error.lock() {
            *last = Some(error.code());
        }
        self.set_db(false);
    }

    /// What `database_down` last recorded, while the database is not ready.
    pub fn database_error(&self) -> Option<String> {
        if self.db_ok.load(Ordering::Relaxed) {
            return None;
        }
        self.db_error.lock().ok().and_then(|e| e.clone())
    }

    pub(crate) fn set_redis(&self, ok: bool) {
        self.redis_ok.store(ok, Ordering::Relaxed);
        self.publish();
    }

    /// A turn of the worker loop failed: count the error under the
    /// dependency it came from and mark that dependency not ready.
    pub(crate) fn blame(&self, error: &WorkerError) {
        match error.dependency() {
            Dependency::Redis => {
                metrics::counter!("rowpipe_redis_errors_total", "program" => "consumer")
                    .increment(1);
                self.set_redis(false);
            }
            Dependency::Database => {
                if let WorkerError::Database(e) = error {
                    metrics::counter!("rowpipe_db_errors_total", "fault" => super::outage::fault_label(e.fault()))
                        .increment(1);
                    self.database_down(e);
                }
            }
        }
    }

    fn publish(&self) {
        metrics::gauge!("rowpipe_consumer_ready").set(if self.ready() { 1.0 } else { 0.0 });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rowpipe_core::store::StoreError;
    use rowpipe_core::stream::reader::ReadError;

    use super::*;

    fn flags(health: &Health) -> (bool, bool) {
        (
            health.redis_ok.load(Ordering::Relaxed),
            health.db_ok.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn a_database_error_marks_the_database_not_ready_and_not_redis() {
        let health = Health::default();
        health.blame(&WorkerError::Database(StoreError::Sqlx(
            sqlx::Error::PoolTimedOut,
        )));
        assert_eq!(flags(&health), (true, false), "(redis, database)");
        assert!(!health.ready());
    }

    #[test]
    fn a_redis_error_marks_redis_not_ready_and_not_the_database() {
        for error in [
            WorkerError::Redis(redis::RedisError::from((
                redis::ErrorKind::Io,
                "connection refused",
            ))),
            WorkerError::Read(ReadError::Timeout(Duration::from_secs(1))),
        ] {
            let health = Health::default();
            health.blame(&error);
            assert_eq!(flags(&health), (false, true), "{error}: (redis, database)");
            assert!(!health.ready());
        }
    }

    #[test]
    fn a_dependency_that_answers_again_is_ready_again() {
        let health = Health::default();
        health.blame(&WorkerError::Database(StoreError::Sqlx(
            sqlx::Error::PoolTimedOut,
        )));
        health.set_db(true);
        assert!(health.ready());
    }
}
