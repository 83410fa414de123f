//! A redis-server of the test's own, so a test can restart Redis mid-ingest
//! without taking the shared one from under every other test.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::services::require_binary;

/// A redis-server with AOF persistence (by default `appendfsync always`,
/// so an acknowledged write survives the restart) that can be restarted on
/// the same port and data directory.
pub struct OwnRedis {
    pub port: u16,
    pub url: String,
    dir: PathBuf,
    fsync: &'static str,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with_fsync("always").await
    }

    /// With `appendfsync everysec`, the common production setting: a host
    /// crash ([`Self::crash_losing_tail`]) loses up to about a second of
    /// writes Redis had acknowledged.
    pub async fn start_everysec() -> anyhow::Result<Self> {
        Self::start_with_fsync("everysec").await
    }

    async fn start_with_fsync(fsync: &'static str) -> anyhow::Result<Self> {
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
            fsync,
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
                self.fsync,
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

    /// `kill -9` the server and start it again on the same port and data.
    /// The process dying loses nothing the AOF had `write()`n, fsynced or
    /// not (the page cache survives it); see [`Self::crash_losing_tail`] for
    /// the host going down with it.
    pub async fn crash_and_restart(&mut self) -> anyhow::Result<()> {
        self.crash_losing_tail(0).await
    }

    /// `kill -9` the server, drop the last `bytes` of its AOF, and start it
    /// again: what a host crash does to an `appendfsync everysec` Redis
    /// (the writes of the last second, acknowledged but not yet fsynced,
    /// were in the page cache). The cut may fall inside a command; Redis
    /// loads the AOF up to the last whole one (`aof-load-truncated`).
    pub async fn crash_losing_tail(&mut self, bytes: u64) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
        if bytes > 0 {
            let aof = self.latest_aof()?;
            let file = std::fs::OpenOptions::new().write(true).open(&aof)?;
            let len = file.metadata()?.len();
            file.set_len(len.saturating_sub(bytes))?;
        }
        self.spawn().await
    }

    /// The AOF file Redis appends to: the newest `*.incr.aof` of its
    /// `appendonlydir` (Redis 7), or `appendonly.aof` (older servers).
    fn latest_aof(&self) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("appendonlydir");
        if !dir.is_dir() {
            return Ok(self.dir.join("appendonly.aof"));
        }
        let mut incr: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().ends_with(".incr.aof"))
            .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
            .collect();
        incr.sort();
        incr.pop()
            .map(|(_, p)| p)
            .with_context(|| format!("no incremental AOF in {}", dir.display()))
    }

    /// Kill the server and start it again on the same port with nothing:
    /// what a primary without persistence, or a failover to a replica that
    /// had none of the writes, looks like to its clients.
    pub async fn restart_empty(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
        std::fs::remove_dir_all(&self.dir)?;
        std::fs::create_dir_all(&self.dir)?;
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
