//! Building and running the upload service.

use std::sync::Arc;

use axum::Router;
use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::Store;
use tokio::net::TcpListener;

use crate::auth::{Auth, require_token};
use crate::config::Config;
use crate::enqueue::EnqueueConfig;
use crate::routes;
use crate::state::AppState;

/// A built, bound, not yet running upload service.
pub struct Application {
    listener: TcpListener,
    router: Router,
    port: u16,
    limits: crate::serve::ConnectionLimits,
    /// `ROWPIPE_METRICS_LISTEN`: the probes and `/metrics` on a port of their own.
    metrics: Option<(TcpListener, Router)>,
    shutdown: Shutdown,
    sweep: Sweep,
}

/// What the lapsed-lease sweep needs (see [`crate::lease::sweep_lapsed`]),
/// and the stream gauges (see [`crate::stream_gauges`]).
struct Sweep {
    store: Store,
    redis: rowpipe_core::stream::Connection,
    shards: rowpipe_core::stream::shards::Shards,
    group: String,
    lease: rowpipe_core::config::LeaseConfig,
}

impl Application {
    /// Connect to Redis and the database, check the schema, bind the port.
    pub async fn build(config: Config, shutdown: Shutdown) -> anyhow::Result<Self> {
        config.validate()?;
        // Install the Prometheus recorder before anything records.
        rowpipe_core::telemetry::metrics();
        let auth = Auth::from_config(
            config.auth_tokens.as_deref(),
            config.auth_tokens_file.as_deref(),
            config.auth_disabled,
        )?;
        let store = Store::connect(&config.database).await?;
        store.check_schema().await?;
        let mut redis = config.stream.redis_target().connect().await?;
        let shards = config.stream.shards();
        // The groups exist before the first row, so their lag counts every
        // row and backpressure works before any consumer has started.
        rowpipe_core::stream::ensure_groups(&mut redis, &shards, &config.stream.group).await?;
        let enqueue = EnqueueConfig {
            redis: config.stream.redis_target(),
            shards,
            group: config.stream.group.clone(),
            max_backlog: config.max_backlog,
            max_backlog_bytes: config.max_backlog_bytes,
            wait_replicas: config.redis_wait_replicas,
            wait_timeout: std::time::Duration::from_millis(config.redis_wait_timeout_ms),
        };
        let listener = TcpListener::bind(config.listen).await?;
        let port = listener.local_addr()?.port();
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let limits = crate::serve::ConnectionLimits {
            header_read_timeout: std::time::Duration::from_secs(config.header_read_timeout_secs),
            max_connections: config.max_connections,
        };
        let uploads = Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_uploads));
        let buffers = crate::buffer_budget::BufferBudget::new(config.upload_buffer_bytes);
        let state = AppState {
            uploads,
            buffers,
            config: Arc::new(config),
            store,
            redis,
            enqueue,
            shutdown: shutdown.clone(),
            instance_id: uuid::Uuid::new_v4().to_string().into(),
        };
        tracing::info!(instance_id = %state.instance_id, "upload leases are held under this instance id");
        let sweep = Sweep {
            store: state.store.clone(),
            redis: state.redis.clone(),
            shards: state.enqueue.shards.clone(),
            group: state.enqueue.group.clone(),
            lease: state.config.lease.clone(),
        };
        // Uploads and exports need a token; probes, scrapers and the API
        // description do not.
        let api = Router::new()
            .merge(routes::uploads::router())
            .merge(routes::exports::router())
            .layer(axum::middleware::from_fn_with_state(auth, require_token));
        let metrics =
            metrics_listener.map(|l| (l, routes::health::router().with_state(state.clone())));
        let router = Router::new()
            .merge(api)
            .merge(routes::health::router())
            .merge(routes::openapi::router())
            .with_state(state);
        Ok(Self {
            listener,
            router,
            port,
            limits,
            metrics,
            shutdown,
            sweep,
        })
    }

    /// The bound port (useful with `ROWPIPE_LISTEN=127.0.0.1:0`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The service's routes with their state, to call without a socket
    /// (the HTTP intake fuzz target).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The bound probe and metrics port, when `ROWPIPE_METRICS_LISTEN` is set.
    pub fn metrics_port(&self) -> Option<u16> {
        let (listener, _) = self.metrics.as_ref()?;
        listener.local_addr().ok().map(|a| a.port())
    }

    /// Serve, and sweep uploads whose lease lapsed, until shutdown is
    /// requested; then let in-flight uploads finish (or be interrupted,
    /// resumable, after the grace period) and return.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let shutdown = self.shutdown;
        let sweep = self.sweep;
        let gauges = tokio::spawn(crate::stream_gauges::run(
            sweep.redis.clone(),
            sweep.shards.clone(),
            sweep.group,
            shutdown.clone(),
        ));
        let sweeper = tokio::spawn(crate::lease::sweep_lapsed(
            sweep.store,
            sweep.redis,
            sweep.shards,
            sweep.lease,
            shutdown.clone(),
        ));
        // Exported from the start at 0, so the first failed or interrupted
        // upload (or error, or wait) is an increase to the alerts'
        // `increase()`, and the dashboard's panels have a series to show.
        for status in ["failed", "interrupted"] {
            metrics::counter!("rowpipe_uploads_total", "status" => status).absolute(0);
        }
        metrics::counter!("rowpipe_db_errors_total", "program" => "upload").absolute(0);
        metrics::counter!("rowpipe_redis_errors_total", "program" => "upload").absolute(0);
        metrics::counter!("rowpipe_upload_backpressure_waits_total").absolute(0);
        metrics::counter!("rowpipe_upload_replication_shortfalls_total").absolute(0);
        let metrics_server = self.metrics.map(|(listener, router)| {
            let mut stop = shutdown.clone();
            tracing::info!(port = ?listener.local_addr().ok().map(|a| a.port()), "probes and /metrics listening");
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.requested().await })
                    .await
            })
        });
        tracing::info!(port = self.port, "rowpipe-upload listening");
        crate::serve::serve(self.listener, self.router, self.limits, shutdown).await?;
        sweeper.abort();
        gauges.abort();
        if let Some(server) = metrics_server {
            server.abort();
        }
        tracing::info!("rowpipe-upload stopped");
        Ok(())
    }
}
