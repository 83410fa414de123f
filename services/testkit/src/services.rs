//! Where the shared servers are, and the URL surgery tests do on them.
//!
//! Redis, PostgreSQL and MariaDB are found through `REDIS_URL`,
//! `ROWPIPE_TEST_POSTGRES_URL` and `ROWPIPE_TEST_MYSQL_URL` (set by
//! `scripts/test`), defaulting to the local ports. A missing server fails the
//! test with a message saying how to start it; it never skips the test, so a
//! green run always means the code ran against every server.

use anyhow::bail;

use crate::db::Backend;

/// The shared Redis.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A test's own stream key on the shared Redis.
pub fn fresh_stream() -> String {
    format!("rowpipe:test:{}", uuid::Uuid::new_v4().simple())
}

/// The server-level URL test databases are created through (empty for
/// SQLite, which needs no server).
pub(crate) fn admin_url(backend: Backend) -> String {
    match backend {
        Backend::Postgres => std::env::var("ROWPIPE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
        Backend::MySql => std::env::var("ROWPIPE_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
        Backend::Sqlite => String::new(),
    }
}

/// `url` with its database path replaced by `db`, query parameters (e.g.
/// `sslmode`) kept.
pub(crate) fn with_database(url: &str, db: &str) -> String {
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
