//! The integration-test harness: real Redis, real databases, real processes.
//!
//! Every test gets its own stream key and its own database (a fresh
//! PostgreSQL/MariaDB database or SQLite file), so tests run in parallel.
//! Services are found through `REDIS_URL`, `ROWPIPE_TEST_POSTGRES_URL` and
//! `ROWPIPE_TEST_MYSQL_URL` (set by `scripts/test`), defaulting to the local
//! ports; a missing service fails the test with a message, never skips it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::{Rng, SeedableRng};
use redis::aio::ConnectionManager;
use rowpipe_core::config::{DatabaseConfig, StreamConfig, TelemetryConfig};
use rowpipe_core::shutdown::{self, ShutdownTrigger};
use rowpipe_core::store::Store;
use serde_json::Value;
use sqlx::Row;

/// The three supported databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn admin_url(backend: Backend) -> String {
    match backend {
        Backend::Postgres => std::env::var("ROWPIPE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        Backend::MySql => std::env::var("ROWPIPE_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
        Backend::Sqlite => String::new(),
    }
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{db}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A database of its own for one test.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    name: String,
    dir: Option<PathBuf>,
}

impl TestDb {
    pub async fn create(backend: Backend) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let name = format!("rp_{}", uuid::Uuid::new_v4().simple());
        match backend {
            Backend::Sqlite => {
                let dir = std::env::temp_dir().join(format!("rowpipe-test-{name}"));
                std::fs::create_dir_all(&dir)?;
                let url = format!("sqlite://{}", dir.join("test.db").display());
                Ok(Self {
                    backend,
                    url,
                    name,
                    dir: Some(dir),
                })
            }
            Backend::Postgres | Backend::MySql => {
                let admin = admin_url(backend);
                let mut con = connect_admin(&admin).await?;
                let ddl = if backend == Backend::MySql {
                    format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
                } else {
                    format!("CREATE DATABASE \"{name}\"")
                };
                sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
                    .execute(&mut con)
                    .await?;
                Ok(Self {
                    backend,
                    url: with_database(&admin, &name),
                    name,
                    dir: None,
                })
            }
        }
    }

    /// Remove the database (best effort; a failed test leaves it for inspection).
    pub async fn drop_db(&self) {
        match self.backend {
            Backend::Sqlite => {
                if let Some(dir) = &self.dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            Backend::Postgres | Backend::MySql => {
                if let Ok(mut con) = connect_admin(&admin_url(self.backend)).await {
                    let ddl = if self.backend == Backend::MySql {
                        format!("DROP DATABASE IF EXISTS `{}`", self.name)
                    } else {
                        format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name)
                    };
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
                        .execute(&mut con)
                        .await;
                }
            }
        }
    }
}

async fn connect_admin(url: &str) -> anyhow::Result<sqlx::AnyConnection> {
    use sqlx::Connection;
    sqlx::AnyConnection::connect(url).await.with_context(|| {
        format!(
            "cannot reach the test database at {}: start it or run the suite through scripts/test, which finds or starts PostgreSQL and MariaDB",
            rowpipe_core::config::redact(url)
        )
    })
}

/// A test's own stream key.
pub fn fresh_stream() -> String {
    format!("rowpipe:test:{}", uuid::Uuid::new_v4().simple())
}

pub const TOKEN: &str = "test-token";

/// The upload service running in-process on a random port, with its own
/// database and stream.
pub struct TestApp {
    pub address: String,
    pub redis_url: String,
    pub db: TestDb,
    pub stream: String,
    pub group: String,
    pub store: Store,
    pub redis: ConnectionManager,
    pub client: reqwest::Client,
    trigger: ShutdownTrigger,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Options for [`spawn_app_with`].
#[derive(Clone, Debug)]
pub struct AppOptions {
    pub max_backlog: u64,
    pub max_body_bytes: u64,
    /// A Redis of the test's own (default: the shared one).
    pub redis_url: Option<String>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            max_backlog: 200_000,
            max_body_bytes: 8 * 1024 * 1024 * 1024,
            redis_url: None,
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

async fn try_spawn_app(backend: Backend, options: AppOptions) -> anyhow::Result<TestApp> {
    rowpipe_core::telemetry::install_crypto_provider();
    let db = TestDb::create(backend).await?;
    let stream = fresh_stream();
    let group = "rowpipe-consumers".to_string();
    let redis_url = options.redis_url.clone().unwrap_or_else(crate::redis_url);
    let database = DatabaseConfig {
        database_url: db.url.clone(),
        db_max_connections: 8,
    };
    let store = Store::connect(&database).await?;
    store.migrate().await?;
    let redis = rowpipe_core::stream::connect(&redis_url)
        .await
        .with_context(|| {
            "cannot reach Redis: set REDIS_URL or run the suite through scripts/test".to_string()
        })?;
    let config = rowpipe_upload::config::Config {
        stream: StreamConfig {
            redis_url: redis_url.clone(),
            stream: stream.clone(),
            group: group.clone(),
        },
        database,
        telemetry: TelemetryConfig {
            log_format: "pretty".into(),
        },
        listen: "127.0.0.1:0".parse()?,
        auth_tokens: Some(TOKEN.into()),
        auth_tokens_file: None,
        auth_disabled: false,
        max_body_bytes: options.max_body_bytes,
        max_field_bytes: 64 * 1024,
        max_columns: 512,
        max_row_bytes: 1024 * 1024,
        max_backlog: options.max_backlog,
        enqueue_batch: 500,
        idempotency_window_secs: 3600,
        shutdown_grace_secs: 5,
    };
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
        store,
        redis,
        client: reqwest::Client::new(),
        trigger,
        server,
    })
}

/// A consumer OS process (the real binary).
pub struct ConsumerProcess {
    pub child: tokio::process::Child,
}

impl ConsumerProcess {
    pub fn sigterm(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }
}

impl TestApp {
    /// POST a raw CSV body.
    pub async fn upload_csv(&self, body: Vec<u8>) -> reqwest::Response {
        self.client
            .post(format!("{}/v1/uploads", self.address))
            .bearer_auth(TOKEN)
            .header("content-type", "text/csv")
            .body(body)
            .send()
            .await
            .expect("POST /v1/uploads")
    }

    /// Upload and return the upload id (asserting 202).
    pub async fn upload_ok(&self, body: Vec<u8>) -> String {
        let resp = self.upload_csv(body).await;
        let status = resp.status();
        let json: Value = resp.json().await.expect("json body");
        assert_eq!(status.as_u16(), 202, "upload refused: {json}");
        json["upload_id"].as_str().expect("upload_id").to_string()
    }

    pub async fn status(&self, id: &str) -> Value {
        self.client
            .get(format!("{}/v1/uploads/{id}", self.address))
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET status")
            .json()
            .await
            .expect("status json")
    }

    /// GET an authenticated path (e.g. a CSV export) as text.
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(format!("{}{path}", self.address))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
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

    /// Environment for a consumer process of this app.
    pub fn consumer_env(&self) -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), self.db.url.clone()),
            ("REDIS_URL".into(), self.redis_url.clone()),
            ("ROWPIPE_STREAM".into(), self.stream.clone()),
            ("ROWPIPE_GROUP".into(), self.group.clone()),
            ("ROWPIPE_METRICS_LISTEN".into(), "127.0.0.1:0".into()),
            ("ROWPIPE_CLAIM_IDLE_MS".into(), "3000".into()),
            ("RUST_LOG".into(), "warn".into()),
        ]
    }

    /// Start the real consumer binary as a separate process.
    pub fn spawn_consumer(&self, binary: &str, extra: &[(&str, &str)]) -> ConsumerProcess {
        let mut cmd = tokio::process::Command::new(binary);
        for k in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "ROWPIPE_WORKERS",
            "ROWPIPE_BATCH_SIZE",
        ] {
            cmd.env_remove(k);
        }
        for (k, v) in self.consumer_env() {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        ConsumerProcess {
            child: cmd.spawn().expect("spawn rowpipe-consumer"),
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

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
            .fetch_one(self.store.pool())
            .await
            .expect("count")
    }

    /// Entries delivered to the group but not acknowledged.
    pub async fn pending(&self) -> u64 {
        let mut con = self.redis.clone();
        // After a Redis restart the first command on a connection fails
        // while it reconnects.
        for _ in 0..5 {
            if let Ok(b) = rowpipe_core::stream::backlog(&mut con, &self.stream, &self.group).await
            {
                return b.pending;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("cannot read the group's backlog from Redis");
    }

    /// Ask the upload service to shut down (what SIGTERM does).
    pub fn shut_down(&self) {
        self.trigger.trigger();
    }

    /// Kill the test's consumer processes, then [`TestApp::cleanup`].
    pub async fn cleanup_with(self, consumers: &mut [ConsumerProcess]) {
        for c in consumers.iter_mut() {
            c.kill().await;
        }
        self.cleanup().await;
    }

    /// Stop the upload service and remove the test's database and stream.
    pub async fn cleanup(self) {
        self.trigger.trigger();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        let mut con = self.redis.clone();
        let _: redis::RedisResult<()> = redis::cmd("DEL")
            .arg(&self.stream)
            .arg(format!("{}:dead", self.stream))
            .query_async(&mut con)
            .await;
        self.store.close().await;
        self.db.drop_db().await;
    }
}

/// A generated contacts file and what a correct load of it must contain.
pub struct Generated {
    pub csv: Vec<u8>,
    /// Normalized emails of the valid rows.
    pub distinct: BTreeSet<String>,
    pub rows: usize,
    pub invalid: usize,
    /// The email field of each row, in file order.
    pub emails: Vec<String>,
}

impl Generated {
    /// What the table must hold after loading `files` in this order: for each
    /// normalized email, the (file index, row number) of its first row.
    pub fn oracle(files: &[&Generated]) -> std::collections::BTreeMap<String, (usize, i64)> {
        let mut out = std::collections::BTreeMap::new();
        for (f, file) in files.iter().enumerate() {
            for (i, raw) in file.emails.iter().enumerate() {
                if let Some(key) = rowpipe_core::validate::normalize_email(raw, Default::default())
                {
                    out.entry(key).or_insert((f, i as i64 + 1));
                }
            }
        }
        out
    }
}

/// `rows` rows of `name,email` with about `dup_percent`% duplicate emails
/// (some differing only in case, repeated far apart) and about
/// `invalid_percent`% invalid addresses, reproducible from `seed`.
pub fn generate_contacts(
    rows: usize,
    dup_percent: u32,
    invalid_percent: u32,
    seed: u64,
) -> Generated {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut csv = String::from("name,email\n");
    let mut emails: Vec<String> = Vec::new();
    let mut distinct = BTreeSet::new();
    let mut invalid = 0;
    let mut all = Vec::with_capacity(rows);
    for i in 0..rows {
        let roll = rng.random_range(0..100);
        let (name, email) = if roll < invalid_percent {
            invalid += 1;
            let bad = match i % 4 {
                0 => format!("user{i}.example.com"),
                1 => format!("user{i}@@example.com"),
                2 => format!("user {i}@example.com"),
                _ => format!("user{i}@localhost"),
            };
            (format!("Bad {i}"), bad)
        } else if roll < invalid_percent + dup_percent && !emails.is_empty() {
            let e = emails[rng.random_range(0..emails.len())].clone();
            let e = if i % 2 == 0 { e.to_uppercase() } else { e };
            (format!("\"Dup, {i}\""), e)
        } else {
            let e = format!(
                "person{i}.{}@example{}.com",
                rng.random_range(0..1000),
                i % 7
            );
            emails.push(e.clone());
            distinct.insert(e.to_lowercase());
            (format!("Person {i}"), e)
        };
        csv.push_str(&name);
        csv.push(',');
        csv.push_str(&email);
        csv.push('\n');
        all.push(email);
    }
    Generated {
        csv: csv.into_bytes(),
        distinct,
        rows,
        invalid,
        emails: all,
    }
}

/// Assert that an upload's status accounts for each of its `rows` exactly
/// once: `inserted + duplicates + rejected = rows`.
#[track_caller]
pub fn assert_every_row_counted_once(status: &Value, rows: i64) {
    let c = &status["counts"];
    let n = |k: &str| c[k].as_i64().unwrap_or(0);
    assert_eq!(
        n("inserted") + n("duplicates") + n("rejected"),
        rows,
        "every row counted once (inserted + duplicates + rejected): {status}"
    );
}

/// Wait until `check` returns true (or fail after `timeout`).
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fail with a clear message when a required binary is missing.
pub fn require_binary(name: &str) -> anyhow::Result<()> {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()?
        .status
        .success();
    if !found {
        bail!("{name} is not installed: run the suite through scripts/test, which installs it");
    }
    Ok(())
}

/// A TCP proxy the test can cut, to take a database "down" and bring it back
/// without touching the real server.
pub struct ToggleProxy {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl ToggleProxy {
    /// Forward 127.0.0.1:<random> to `target` (host:port).
    pub async fn start(target: String) -> anyhow::Result<Self> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            Default::default();
        let (up2, links2) = (up.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                if let Ok(mut l) = links2.lock() {
                    l.retain(|h| !h.is_finished());
                    l.push(link);
                }
            }
        });
        Ok(Self {
            port,
            up,
            links,
            accept,
        })
    }

    /// Cut every connection and refuse new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut l) = self.links.lock() {
            for h in l.drain(..) {
                h.abort();
            }
        }
    }

    /// Accept connections again.
    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for ToggleProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.down();
    }
}

/// host:port of a database URL.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.rsplit_once('@').map(|(_, r)| r).unwrap_or(rest);
    rest.split(['/', '?']).next().unwrap_or(rest).to_string()
}

/// The same URL pointing at another port on 127.0.0.1.
pub fn via_port(url: &str, port: u16) -> String {
    let hp = host_port(url);
    url.replacen(&hp, &format!("127.0.0.1:{port}"), 1)
}

/// Acknowledged entries of a group so far (delivered minus pending).
pub async fn acknowledged(con: &mut ConnectionManager, stream: &str, group: &str) -> u64 {
    use redis::AsyncTypedCommands;
    let groups = con.xinfo_groups(stream).await.expect("XINFO GROUPS").groups;
    let g = groups.into_iter().find(|g| g.name == group).expect("group");
    (g.entries_read.unwrap_or(0) as u64).saturating_sub(g.pending as u64)
}

/// A redis-server of the test's own, with AOF persistence, that can be
/// restarted on the same port and data directory.
pub struct OwnRedis {
    pub port: u16,
    pub url: String,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub async fn start() -> anyhow::Result<Self> {
        require_binary("redis-server")?;
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.local_addr()?.port()
        };
        let dir =
            std::env::temp_dir().join(format!("rowpipe-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let mut me = Self {
            port,
            url: format!("redis://127.0.0.1:{port}"),
            dir,
            child: None,
        };
        me.spawn().await?;
        Ok(me)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--dir",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?;
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Ok(client) = redis::Client::open(self.url.as_str())
                && let Ok(mut con) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut con)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(20) {
                bail!("redis-server did not start on port {}", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop (SHUTDOWN: the AOF is flushed) and start again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if let Ok(client) = redis::Client::open(self.url.as_str())
            && let Ok(mut con) = client.get_multiplexed_async_connection().await
        {
            let _: redis::RedisResult<()> = redis::cmd("SHUTDOWN").query_async(&mut con).await;
        }
        if let Some(mut child) = self.child.take() {
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
        self.spawn().await
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run one async test body, `async fn name(backend: Backend)`, on each listed
/// database: `on_databases!(name: Sqlite, Postgres, MySql);` makes the tests
/// `name::on_sqlite`, `name::on_postgres` and `name::on_mysql`.
#[macro_export]
macro_rules! on_databases {
    ($name:ident: $($backend:ident),+ $(,)?) => {
        mod $name {
            $(
                $crate::on_databases!(@one $name, $backend);
            )+
        }
    };
    (@one $name:ident, Sqlite) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn on_sqlite() {
            super::$name($crate::Backend::Sqlite).await;
        }
    };
    (@one $name:ident, Postgres) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn on_postgres() {
            super::$name($crate::Backend::Postgres).await;
        }
    };
    (@one $name:ident, MySql) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn on_mysql() {
            super::$name($crate::Backend::MySql).await;
        }
    };
}
