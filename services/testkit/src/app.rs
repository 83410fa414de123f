//! The upload service in-process on port 0, with its own database and
//! stream, and what a test reads back from it (HTTP, the table, the group).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use rowpipe_core::shutdown::{self, ShutdownTrigger};
use rowpipe_core::store::Store;
use rowpipe_core::stream::Connection;
use rowpipe_upload::config::Config;
use serde_json::Value;
use sqlx::Row;

use crate::db::{Backend, TestDb};
use crate::services::fresh_stream;

/// The bearer token every test app accepts.
pub const TOKEN: &str = "test-token";

/// The upload service running in-process on a random port, with its own
/// database and stream.
pub struct TestApp {
    pub address: String,
    pub redis_url: String,
    pub db: TestDb,
    pub stream: String,
    pub group: String,
    /// The settings of the stream the programs share: the Redis
    /// deployment (cluster or not) and the shard keys.
    pub stream_config: rowpipe_core::config::StreamConfig,
    pub store: Store,
    pub redis: Connection,
    pub client: reqwest::Client,
    trigger: ShutdownTrigger,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Options for [`spawn_app_with`]: the settings tests vary to see a bound
/// hold. The defaults are the service's own.
#[derive(Clone, Debug)]
pub struct AppOptions {
    pub max_backlog: u64,
    pub max_body_bytes: u64,
    /// A Redis of the test's own (default: the shared one).
    pub redis_url: Option<String>,
    /// `ROWPIPE_UPLOAD_LEASE_SECS`: tests about dead instances shorten it.
    pub upload_lease_secs: u64,
    /// `ROWPIPE_AUTH_TOKENS` (default: [`TOKEN`], an operator token).
    pub auth_tokens: String,
    /// More command-line settings of the upload service (e.g.
    /// `["--max-uploads", "1"]`), for the tests of one setting's bound.
    pub extra_args: Vec<String>,
    /// `redis_url` names the seed nodes of a Redis Cluster
    /// (`ROWPIPE_REDIS_CLUSTER`; consumers of the app get it too).
    pub redis_cluster: bool,
    /// `ROWPIPE_STREAM_SHARDS` of the upload service and its consumers.
    pub stream_shards: u16,
}

impl Default for AppOptions {
    fn default() -> Self {
        let defaults: Config = crate::config::parse::<Config, _, &str>([])
            .unwrap_or_else(|e| panic!("the upload service's defaults: {e:#}"));
        Self {
            max_backlog: defaults.max_backlog,
            max_body_bytes: defaults.max_body_bytes,
            redis_url: None,
            upload_lease_secs: defaults.lease.upload_lease_secs,
            auth_tokens: TOKEN.to_string(),
            extra_args: Vec::new(),
            redis_cluster: false,
            stream_shards: 1,
        }
    }
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, AppOptions::default()).await
}

pub async fn spawn_app_with(backend: Backend, options: AppOptions) -> TestApp {
    try_spawn_app(backend, options)
        .await
        .unwrap_or_else(|e| panic!("spawning the test app on {backend:?}: {e:#}"))
}

/// The upload service's configuration for one test: the service's defaults
/// but for these settings.
fn upload_config(
    db: &TestDb,
    redis_url: &str,
    stream: &str,
    options: &AppOptions,
) -> anyhow::Result<Config> {
    let max_backlog = options.max_backlog.to_string();
    let max_body_bytes = options.max_body_bytes.to_string();
    let lease_secs = options.upload_lease_secs.to_string();
    let cluster = options.redis_cluster.to_string();
    let shards = options.stream_shards.to_string();
    let mut args: Vec<&str> = vec![
        "--redis-cluster",
        &cluster,
        "--stream-shards",
        &shards,
        // The test's own servers, database and stream.
        "--database-url",
        &db.url,
        "--redis-url",
        redis_url,
        "--stream",
        stream,
        // Port 0: tests run side by side, each on a free port.
        "--listen",
        "127.0.0.1:0",
        // Authentication on, as in production, with the token the helpers send.
        "--auth-tokens",
        &options.auth_tokens,
        // Tests lower these to see the backlog bound and the 413 hold.
        "--max-backlog",
        &max_backlog,
        "--max-body-bytes",
        &max_body_bytes,
        // A test that stops the service mid-upload should not wait the
        // production grace period to see the upload failed.
        "--shutdown-grace-secs",
        "5",
        "--upload-lease-secs",
        &lease_secs,
    ];
    args.extend(options.extra_args.iter().map(String::as_str));
    crate::config::parse(args)
}

async fn try_spawn_app(backend: Backend, options: AppOptions) -> anyhow::Result<TestApp> {
    rowpipe_core::telemetry::install_crypto_provider();
    let db = TestDb::create(backend).await?;
    let stream = fresh_stream();
    let redis_url = options.redis_url.clone().unwrap_or_else(crate::redis_url);
    let config = upload_config(&db, &redis_url, &stream, &options)?;
    let group = config.stream.group.clone();
    let stream_config = config.stream.clone();
    let store = Store::connect(&config.database).await?;
    store.migrate().await?;
    let redis = stream_config
        .redis_target()
        .connect()
        .await
        .with_context(|| {
            "cannot reach Redis: set REDIS_URL or run the suite through scripts/test".to_string()
        })?;
    let (trigger, handle) = shutdown::channel();
    let app = rowpipe_upload::startup::Application::build(config, handle).await?;
    let address = format!("http://127.0.0.1:{}", app.port());
    let server = tokio::spawn(app.run_until_stopped());
    Ok(TestApp {
        address,
        redis_url,
        db,
        stream,
        group,
        stream_config,
        store,
        redis,
        client: reqwest::Client::new(),
        trigger,
        server,
    })
}

impl TestApp {
    /// POST a raw CSV body.
    pub async fn upload_csv(&self, body: Vec<u8>) -> reqwest::Response {
        self.upload_csv_with("", body).await
    }

    /// POST a raw CSV body with upload options in `query` (e.g.
    /// `?encoding=utf-8`).
    pub async fn upload_csv_with(&self, query: &str, body: Vec<u8>) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/uploads{query}", self.address))
            .bearer_auth(TOKEN)
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .await
            .expect("POST /v1/uploads")
    }

    /// POST a multipart body whose `file` part is `bytes`, named `file_name`
    /// and labelled `mime`.
    pub async fn upload_part(
        &self,
        file_name: &str,
        mime: &str,
        bytes: Vec<u8>,
    ) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(file_name.to_string())
            .mime_str(mime)
            .expect("a valid media type");
        self.client
            .post(format!("{}/v1/uploads", self.address))
            .bearer_auth(TOKEN)
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .expect("POST /v1/uploads")
    }

    /// POST a raw CSV body under an `Idempotency-Key`.
    pub async fn upload_csv_keyed(&self, key: &str, body: Vec<u8>) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/uploads", self.address))
            .bearer_auth(TOKEN)
            .header("content-type", "text/csv")
            .header("idempotency-key", key)
            .body(body)
            .send()
            .await
            .expect("POST /v1/uploads")
    }

    /// Uploads still `receiving` whose lease lapsed more than `grace` ago:
    /// held by no live instance, which the sweeps must not let happen.
    pub async fn receiving_past_lease(&self, grace: Duration) -> Vec<String> {
        let sql = self.store.dialect().sql(
            "SELECT id FROM uploads WHERE status = 'receiving' \
             AND COALESCE(lease_expires_at_ms, updated_at_ms) < ?",
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .bind(rowpipe_core::now_ms() - grace.as_millis() as i64)
            .fetch_all(self.store.pool())
            .await
            .expect("receiving uploads")
    }

    /// Upload and return the upload id (asserting 202).
    pub async fn upload_ok(&self, body: Vec<u8>) -> String {
        let resp = self.upload_csv(body).await;
        let status = resp.status();
        let json: Value = resp.json().await.expect("json body");
        assert_eq!(status.as_u16(), 202, "upload refused: {json}");
        json["upload_id"].as_str().expect("upload_id").to_string()
    }

    /// GET an authenticated path.
    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn status(&self, id: &str) -> Value {
        let path = format!("/v1/uploads/{id}");
        self.get(&path).await.json().await.expect("status json")
    }

    /// GET an authenticated path (e.g. a CSV export) as text.
    pub async fn get_text(&self, path: &str) -> String {
        let response = self.get(path).await;
        response
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Poll the status endpoint until the upload is completed (or fail).
    pub async fn wait_completed(&self, id: &str, timeout: Duration) -> Value {
        let started = Instant::now();
        loop {
            let s = self.status(id).await;
            if s["status"] == "completed" {
                return s;
            }
            assert!(s["status"] != "failed", "upload failed: {s}");
            assert!(
                started.elapsed() < timeout,
                "upload {id} not completed after {timeout:?}: {s}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `email, email_raw, name, upload_id, row_number` of every contact,
    /// ordered by email: the table as a comparable value.
    pub async fn contacts_dump(&self) -> Vec<(String, String, Option<String>, String, i64)> {
        let sql = self.store.dialect().sql(
            "SELECT email, email_raw, name, upload_id, \"row_number\" FROM contacts ORDER BY email",
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(self.store.pool())
            .await
            .expect("dump contacts")
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>(0),
                    r.get::<String, _>(1),
                    r.get::<Option<String>, _>(2),
                    r.get::<String, _>(3),
                    r.get::<i64, _>(4),
                )
            })
            .collect()
    }

    /// The table as (email → (upload index, row number)), each upload id
    /// mapped to its position in `ids`: comparable with
    /// [`Generated::oracle`](crate::Generated::oracle).
    pub async fn table_by_upload<S: AsRef<str>>(
        &self,
        ids: &[S],
    ) -> BTreeMap<String, (usize, i64)> {
        self.contacts_dump()
            .await
            .into_iter()
            .map(|(email, _, _, upload, row)| {
                let idx = ids
                    .iter()
                    .position(|i| i.as_ref() == upload)
                    .expect("known upload");
                (email, (idx, row))
            })
            .collect()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(self.store.pool())
            .await
            .expect("count")
    }

    /// Entries delivered to the group but not acknowledged (over every
    /// shard).
    pub async fn pending(&self) -> u64 {
        self.backlog().await.pending
    }

    /// The group's backlog, summed over the stream's shards.
    pub async fn backlog(&self) -> rowpipe_core::stream::GroupBacklog {
        let mut con = self.redis.clone();
        let mut total = rowpipe_core::stream::GroupBacklog::default();
        for key in self.stream_config.shards().keys() {
            // After a Redis restart the first command on a connection fails
            // while it reconnects.
            let mut answered = None;
            for _ in 0..5 {
                if let Ok(b) = rowpipe_core::stream::backlog(&mut con, key, &self.group).await {
                    answered = Some(b);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            total +=
                answered.unwrap_or_else(|| panic!("cannot read the backlog of {key} from Redis"));
        }
        total
    }

    /// Ask the upload service to shut down (what SIGTERM does).
    pub fn shut_down(&self) {
        self.trigger.trigger();
    }

    /// Stop the upload service and remove the test's database and stream.
    pub async fn cleanup(self) {
        self.trigger.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        let mut con = self.redis.clone();
        // One key per command: on a cluster the keys are in different slots.
        let dead = format!("{}:dead", self.stream);
        for key in self.stream_config.shards().keys().iter().chain([&dead]) {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(key).query_async(&mut con).await;
        }
        self.store.close().await;
        self.db.drop_db().await;
    }
}
