//! The real consumer binary as OS processes of a [`TestApp`].
//!
//! Tests about what a process does (crashes under `kill -9`, SIGTERM,
//! several processes racing for one group, outages lived through) run the
//! binary itself, configured through its environment like a deployment.

use std::process::Stdio;

use crate::app::TestApp;

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

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl TestApp {
    /// Environment for a consumer process of this app.
    pub fn consumer_env(&self) -> Vec<(String, String)> {
        vec![
            ("DATABASE_URL".into(), self.db.url.clone()),
            ("REDIS_URL".into(), self.redis_url.clone()),
            ("ROWPIPE_STREAM".into(), self.stream.clone()),
            ("ROWPIPE_GROUP".into(), self.group.clone()),
            (
                "ROWPIPE_REDIS_CLUSTER".into(),
                self.stream_config.redis_cluster.to_string(),
            ),
            (
                "ROWPIPE_STREAM_SHARDS".into(),
                self.stream_config.stream_shards.to_string(),
            ),
            ("ROWPIPE_METRICS_LISTEN".into(), "127.0.0.1:0".into()),
            ("ROWPIPE_CLAIM_IDLE_MS".into(), "3000".into()),
            ("RUST_LOG".into(), "warn".into()),
        ]
    }

    /// Start the real consumer binary as a separate process.
    pub fn spawn_consumer(&self, binary: &str, extra: &[(&str, &str)]) -> ConsumerProcess {
        let mut cmd = tokio::process::Command::new(binary);
        // The test process may carry these (from a developer's shell, or a
        // test that set them for the in-process service); a consumer that
        // inherited them would run differently from what the test asked for
        // in `extra`.
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

    /// Kill the test's consumer processes, then [`TestApp::cleanup`].
    pub async fn cleanup_with(self, consumers: &mut [ConsumerProcess]) {
        for c in consumers.iter_mut() {
            c.kill().await;
        }
        self.cleanup().await;
    }
}
