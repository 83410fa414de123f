//! Building and running a consumer process.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use rowpipe_core::shutdown::Shutdown;
use rowpipe_core::store::Store;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::mail_domain::MailDomains;
use crate::reclaim::ReclaimTurns;
use crate::worker::{Health, ServedShards, Worker};

/// A built consumer: connected, schema checked, HTTP port bound.
pub struct Application {
    config: Arc<Config>,
    store: Store,
    redis: rowpipe_core::stream::Connection,
    health: Arc<Health>,
    /// The shards this process serves, each with its reclaim turns.
    shards: ServedShards,
    /// The deliverability check its workers share (one cache per process).
    mail_domains: Option<Arc<MailDomains>>,
    listener: TcpListener,
    port: u16,
    base_name: String,
}

impl Application {
    /// Connect, refuse an old schema, join the group, bind the metrics port.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        // Install the Prometheus recorder before anything records.
        rowpipe_core::telemetry::metrics();
        let store = Store::connect(&config.database).await?;
        // Refuse rather than migrate: many replicas must not race to change
        // the schema; the migration Job (`rowpipe migrate`) does that.
        store.check_schema().await?;
        let mut redis = config.stream.redis_target().connect().await?;
        rowpipe_core::stream::ensure_groups(
            &mut redis,
            &config.stream.shards(),
            &config.stream.group,
        )
        .await?;
        let mut shards = ServedShards::new();
        for shard in config.served_shards()? {
            shards.push((
                shard,
                Arc::new(ReclaimTurns::new(config.reclaim_interval())),
            ));
        }
        let listener = TcpListener::bind(config.metrics_listen).await?;
        let port = listener.local_addr()?.port();
        let base_name = config.consumer_base_name();
        let mail_domains = MailDomains::from_config(&config)?;
        Ok(Self {
            config: Arc::new(config),
            store,
            redis,
            health: Arc::new(Health::default()),
            shards,
            mail_domains,
            listener,
            port,
            base_name,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A worker with its own connections, for tests that drive batches.
    /// It serves every shard of the process, its first turn on the
    /// `index`-th (so the workers start spread over the shards).
    pub async fn worker(&self, index: usize) -> anyhow::Result<Worker> {
        let mut shards = self.shards.clone();
        let first = index % shards.len().max(1);
        shards.rotate_left(first);
        Worker::new(
            format!("{}-w{index}", self.base_name),
            self.config.clone(),
            self.store.clone(),
            self.redis.clone(),
            self.health.clone(),
            shards,
        )
        .await
        .map(|w| w.with_mail_domains(self.mail_domains.clone()))
    }

    /// Run workers, housekeeping and the HTTP port until shutdown, then
    /// finish the batches in hand within the grace period.
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> anyhow::Result<()> {
        metrics::gauge!("rowpipe_consumer_ready").set(1.0);
        register_event_counters();
        let mut workers = Vec::new();
        for i in 0..self.config.workers {
            let worker = self.worker(i).await?;
            tracing::info!(consumer = %worker.name(), stream = %self.config.stream.stream, shards = %self.config.stream.stream_shards, served = ?self.shards.iter().map(|(s, _)| s).collect::<Vec<_>>(), group = %self.config.stream.group, "consumer started");
            workers.push(tokio::spawn(worker.run(shutdown.clone())));
        }
        let housekeeping = tokio::spawn(crate::maintenance::run(
            self.store.clone(),
            self.redis.clone(),
            self.config.clone(),
            Duration::from_secs(5),
            shutdown.clone(),
        ));
        let router = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/metrics", get(rowpipe_core::telemetry::metrics_endpoint))
            .with_state(self.health.clone());
        let mut http_shutdown = shutdown.clone();
        let http = tokio::spawn(async move {
            axum::serve(self.listener, router)
                .with_graceful_shutdown(async move { http_shutdown.requested().await })
                .await
        });

        let mut s = shutdown.clone();
        s.requested().await;
        tracing::info!("shutdown requested: finishing the batches in hand");
        let grace = Duration::from_secs(self.config.shutdown_grace_secs);
        let drained = tokio::time::timeout(grace, futures::future::join_all(workers)).await;
        if drained.is_err() {
            tracing::warn!(
                "grace period over; exiting with batches still pending (they will be reclaimed)"
            );
        }
        housekeeping.abort();
        http.abort();
        self.store.close().await;
        tracing::info!("rowpipe-consumer stopped");
        Ok(())
    }
}

async fn readyz(State(health): State<Arc<Health>>) -> impl IntoResponse {
    let ready = health.ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({
            "ready": ready,
            "redis": health.redis_ok.load(std::sync::atomic::Ordering::Relaxed),
            "database": health.db_ok.load(std::sync::atomic::Ordering::Relaxed),
            "database_error": health.database_error(),
        })),
    )
}

/// Counters of events that may never happen, exported from the start at 0
/// (every label value they take): an alert or a panel on `increase()` sees
/// no increase in a series born at 1, so the first dead letter or
/// incomplete upload would go unseen (`RowpipeDeadLetters`,
/// `RowpipeUploadsIncomplete`).
fn register_event_counters() {
    for name in [
        "rowpipe_uploads_incomplete_total",
        "rowpipe_consumer_reclaimed_total",
        "rowpipe_consumer_batch_reruns_total",
        "rowpipe_consumer_batch_splits_total",
        "rowpipe_consumer_group_recreated_total",
    ] {
        metrics::counter!(name).absolute(0);
    }
    for cause in rowpipe_core::stream::dead_letter::Cause::ALL {
        metrics::counter!("rowpipe_consumer_dead_lettered_total", "cause" => cause.code())
            .absolute(0);
    }
    for fault in ["outage", "row", "unknown"] {
        metrics::counter!("rowpipe_db_errors_total", "fault" => fault).absolute(0);
    }
    metrics::counter!("rowpipe_redis_errors_total", "program" => "consumer").absolute(0);
}
