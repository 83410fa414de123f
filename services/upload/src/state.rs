//! What every handler can reach.
//!
//! The state is its own module so that the handlers and the ingest path can
//! depend on it without depending on `startup`, which builds the state and
//! depends on the handlers in turn.

use std::sync::Arc;

use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::Store;
use rowpipe_core::stream::Connection;

use crate::config::Config;
use crate::enqueue::EnqueueConfig;

/// Shared by every request; cloning it is cheap (the connections and the
/// config are shared, not copied).
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub redis: Connection,
    pub enqueue: EnqueueConfig,
    pub shutdown: Shutdown,
    /// This process's id as the holder of upload leases (a uuid drawn at
    /// start): a lease is this instance's, not a host's or a pod's, so a
    /// restarted process never mistakes a dead one's uploads for its own.
    pub instance_id: Arc<str>,
    /// One permit per upload being received (`ROWPIPE_MAX_CONCURRENT_UPLOADS`).
    pub uploads: Arc<tokio::sync::Semaphore>,
    /// The bytes of pipelines in flight, all uploads together
    /// (`ROWPIPE_UPLOAD_BUFFER_BYTES`, see [`crate::ingest`]).
    pub buffers: crate::buffer_budget::BufferBudget,
}
