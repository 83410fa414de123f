//! A consumer worker inside the test's own process, driven one batch at a
//! time through [`Worker::run_once`].
//!
//! A test about what a worker does with the batches it gets (dead letters,
//! replays of entries stored already, the completion check after a commit)
//! needs no process of its own: it runs batches until the one it is about
//! has been processed, instead of polling a separate process, and a failed
//! batch fails the test with the worker's own error. Tests about processes
//! (`kill -9`, SIGTERM, several members racing, outages, the periodic sweep)
//! start the real binary instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rowpipe_consumer::config::Config;
use rowpipe_consumer::reclaim::ReclaimTurns;
use rowpipe_consumer::worker::{BatchReport, Health, Worker, WorkerError};
use rowpipe_core::shutdown::{self, Shutdown, ShutdownTrigger};
use rowpipe_core::store::Store;
use rowpipe_testkit::TestApp;

/// One member of a [`TestApp`]'s consumer group.
pub struct InProcessWorker {
    worker: Worker,
    health: Arc<Health>,
    shutdown: Shutdown,
    /// Held, never fired: a dropped trigger reads as a shutdown request.
    _trigger: ShutdownTrigger,
}

impl InProcessWorker {
    /// A worker configured as the consumer binary would be with the
    /// command-line `settings` (e.g. `["--max-deliveries", "3"]`) on top of
    /// its defaults, pointed at `app`'s database, stream and group.
    pub async fn start(app: &TestApp, settings: &[&str]) -> Self {
        Self::start_on(app, &app.db.url, settings).await
    }

    /// [`Self::start`] on `database_url` (the app's database through a
    /// proxy, say) instead of the app's own URL.
    pub async fn start_on(app: &TestApp, database_url: &str, settings: &[&str]) -> Self {
        let mut args = vec![
            "--database-url",
            database_url,
            "--redis-url",
            &app.redis_url,
            "--stream",
            &app.stream,
            "--group",
            &app.group,
        ];
        args.extend_from_slice(settings);
        let config: Config = rowpipe_testkit::config::parse(args).expect("consumer settings");
        config.validate().expect("valid consumer settings");
        // As in a consumer process: the first turn to take over entries
        // other consumers left pending is one interval after start.
        let reclaim_turns = Arc::new(ReclaimTurns::new(config.reclaim_interval()));
        // Its own pool, from its own settings (statement timeouts and all),
        // as a consumer process has.
        let store = Store::connect(&config.database)
            .await
            .expect("the worker's store connects");
        let health = Arc::new(Health::default());
        let worker = Worker::new(
            "in-process".into(),
            Arc::new(config),
            store,
            app.redis.clone(),
            health.clone(),
            vec![(0, reclaim_turns)],
        )
        .await
        .expect("worker connects");
        let (trigger, shutdown) = shutdown::channel();
        Self {
            worker,
            health,
            shutdown,
            _trigger: trigger,
        }
    }

    /// What the worker reports to readiness.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// One turn of the worker ([`Worker::run_once`]), its result as it came.
    pub async fn turn(&mut self) -> Result<Option<BatchReport>, WorkerError> {
        self.worker.run_once(&self.shutdown).await
    }

    /// Run batches until one completes `upload` (its completion check after
    /// the commit), failing after `timeout`. The reports of the batches
    /// that did something, in order.
    pub async fn run_until_completed(
        &mut self,
        upload: &str,
        timeout: Duration,
    ) -> Vec<BatchReport> {
        let deadline = Instant::now() + timeout;
        let mut reports = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let report = match tokio::time::timeout(left, self.worker.run_once(&self.shutdown))
                .await
            {
                Err(_) => panic!("upload {upload} not completed after {timeout:?}: {reports:?}"),
                Ok(batch) => batch.unwrap_or_else(|e| panic!("a batch failed: {e:#}")),
            };
            // `None`: nothing was delivered or due for taking over yet.
            if let Some(report) = report {
                let completed = report.completed_uploads.iter().any(|u| u == upload);
                reports.push(report);
                if completed {
                    return reports;
                }
            }
        }
    }
}
