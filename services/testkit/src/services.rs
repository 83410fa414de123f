//! Where the shared servers are, and the URL surgery tests do on them.
//!
//! Redis, PostgreSQL and MariaDB are found through `REDIS_URL`,
//! `ROWPIPE_TEST_POSTGRES_URL` and `ROWPIPE_TEST_MYSQL_URL` (set by
//! `scripts/test`), defaulting to the local ports. A missing server fails the
//! test with a message saying how to start it; it never skips the test, so a
//! green run always means the code ran against every server.

use anyhow::bail;

/// The shared Redis.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A test's own stream key on the shared Redis.
pub fn fresh_stream() -> String {
    format!("rowpipe:test:{}", uuid::Uuid::new_v4().simple())
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
