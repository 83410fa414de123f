//! What readiness reports, and which dependency a failure is blamed on.
//!
//! Each flag is the last known state of one dependency. A worker clears the
//! flag of the dependency that failed it ([`Health::blame`]) and sets it
//! again once that dependency answers, so `/readyz` says which one is away.

use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{Dependency, WorkerError};

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
                metrics::counter!("rowpipe_db_errors_total").increment(1);
                self.set_db(false);
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
