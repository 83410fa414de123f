//! The real upload binary as an OS process of a [`TestApp`].
//!
//! Tests about an upload instance dying (`kill -9` mid-body) need the
//! service in a process of its own: killing the in-process one would take
//! the test with it. Cargo names only a crate's own binaries to its tests
//! (`CARGO_BIN_EXE_*`), so tests of other crates find `rowpipe-upload` (and
//! the `rowpipe` CLI, [`cli_binary`]) by asking cargo to build it: a no-op
//! when it is fresh, and the path cargo reports is the binary of this very
//! workspace and profile.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::app::{TOKEN, TestApp};

/// An upload-service OS process (the real binary) on a port of its own.
pub struct UploadProcess {
    pub child: tokio::process::Child,
    /// `http://127.0.0.1:<port>`.
    pub address: String,
}

impl UploadProcess {
    /// `kill -9`: the process gets no chance to record anything.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The path of the `rowpipe-upload` binary, built if it is missing or stale.
pub fn upload_binary() -> anyhow::Result<std::path::PathBuf> {
    workspace_binary("rowpipe-upload", "rowpipe-upload")
}

/// The path of the `rowpipe` CLI binary, built if it is missing or stale.
pub fn cli_binary() -> anyhow::Result<std::path::PathBuf> {
    workspace_binary("rowpipe-cli", "rowpipe")
}

/// The path of binary `bin` of workspace package `package`, built by cargo
/// (once per test process) in the profile of the running test.
fn workspace_binary(package: &str, bin: &str) -> anyhow::Result<std::path::PathBuf> {
    static BUILT: OnceLock<Mutex<HashMap<String, Result<std::path::PathBuf, String>>>> =
        OnceLock::new();
    let built = BUILT.get_or_init(Default::default);
    let mut built = built
        .lock()
        .map_err(|_| anyhow::anyhow!("a build of a workspace binary panicked"))?;
    built
        .entry(bin.to_string())
        .or_insert_with(|| build_binary(package, bin).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_binary(package: &str, bin: &str) -> anyhow::Result<std::path::PathBuf> {
    let release = std::env::current_exe()
        .map(|p| p.components().any(|c| c.as_os_str() == "release"))
        .unwrap_or(false);
    let mut cmd = std::process::Command::new(env!("CARGO"));
    cmd.args([
        "build",
        "-p",
        package,
        "--bin",
        bin,
        "--message-format=json",
        "--quiet",
    ])
    .current_dir(env!("CARGO_MANIFEST_DIR"))
    .stderr(Stdio::inherit());
    if release {
        cmd.arg("--release");
    }
    let output = cmd
        .output()
        .with_context(|| format!("running cargo build -p {package}"))?;
    if !output.status.success() {
        bail!("cargo build -p {package} failed ({})", output.status);
    }
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == bin
            && let Some(exe) = message["executable"].as_str()
        {
            return Ok(exe.into());
        }
    }
    bail!("cargo build -p {package} named no {bin} executable")
}

/// A port free at the moment of asking (the process binds it right after).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl TestApp {
    /// Start the real upload binary on this app's database and stream,
    /// configured through its environment like a deployment (`extra` on
    /// top), and wait until it answers.
    pub async fn spawn_upload_process(&self, extra: &[(&str, &str)]) -> UploadProcess {
        self.try_spawn_upload_process(extra)
            .await
            .unwrap_or_else(|e| panic!("starting rowpipe-upload: {e:#}"))
    }

    async fn try_spawn_upload_process(
        &self,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<UploadProcess> {
        let binary = tokio::task::spawn_blocking(upload_binary).await??;
        let port = free_port()?;
        let mut cmd = tokio::process::Command::new(binary);
        for k in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ] {
            cmd.env_remove(k);
        }
        cmd.env("DATABASE_URL", &self.db.url)
            .env("REDIS_URL", &self.redis_url)
            .env("ROWPIPE_STREAM", &self.stream)
            .env("ROWPIPE_GROUP", &self.group)
            .env(
                "ROWPIPE_REDIS_CLUSTER",
                self.stream_config.redis_cluster.to_string(),
            )
            .env(
                "ROWPIPE_STREAM_SHARDS",
                self.stream_config.stream_shards.to_string(),
            )
            .env("ROWPIPE_LISTEN", format!("127.0.0.1:{port}"))
            .env("ROWPIPE_AUTH_TOKENS", TOKEN)
            .env("RUST_LOG", "warn");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).kill_on_drop(true);
        let child = cmd.spawn().context("spawn rowpipe-upload")?;
        let process = UploadProcess {
            child,
            address: format!("http://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        loop {
            let health = self
                .client
                .get(format!("{}/healthz", process.address))
                .send()
                .await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return Ok(process);
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("rowpipe-upload did not answer on port {port} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
