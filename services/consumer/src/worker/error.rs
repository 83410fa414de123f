//! Why a turn of the worker loop failed, by the dependency that failed it.
//!
//! The loop retries any failure after a backoff; what differs is whom it
//! blames: readiness and the error counters name Redis or the database
//! (see [`super::Health::blame`]).

use rowpipe_core::store::StoreError;
use rowpipe_core::stream::reader::ReadError;

/// A failed [`super::Worker::run_once`].
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The blocking read on the dedicated connection.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Any other command, on the shared connection.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The database, where no retry rule absorbed the failure.
    #[error(transparent)]
    Database(#[from] StoreError),
}

/// The dependencies readiness reports on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dependency {
    Redis,
    Database,
}

impl Dependency {
    /// The `dependency` label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            Dependency::Redis => "redis",
            Dependency::Database => "database",
        }
    }
}

impl WorkerError {
    /// Redis said the stream or the group does not exist (`NOGROUP`): the
    /// queue was lost (a Redis restarted empty, a failover, a `FLUSHALL`)
    /// and the group has to be created again before anything else works.
    pub fn is_no_group(&self) -> bool {
        match self {
            WorkerError::Read(e) => e.is_no_group(),
            WorkerError::Redis(e) => e.code() == Some("NOGROUP"),
            WorkerError::Database(_) => false,
        }
    }

    pub fn dependency(&self) -> Dependency {
        match self {
            WorkerError::Read(_) | WorkerError::Redis(_) => Dependency::Redis,
            WorkerError::Database(_) => Dependency::Database,
        }
    }
}
