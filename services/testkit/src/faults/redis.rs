//! A redis-server of the test's own, so a test can restart Redis mid-ingest
//! without taking the shared one from under every other test.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::services::require_binary;

/// A redis-server with AOF persistence (`appendfsync always`, so an
/// acknowledged write survives the restart) that can be restarted on the
/// same port and data directory.
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
