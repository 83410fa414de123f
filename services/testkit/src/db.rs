//! A database of the test's own on each supported backend.
//!
//! Each test creates a fresh PostgreSQL/MariaDB database or SQLite file, so
//! tests run in parallel without seeing each other's rows, and a failed test
//! leaves its database behind for inspection.

use std::path::PathBuf;

use anyhow::Context;
use rowpipe_core::config::DatabaseConfig;
use rowpipe_core::store::Store;

/// The three supported databases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    MySql,
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

    /// The database's name on its server.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A [`Store`] on this database (a pool of 4), migrated: for tests that
    /// drive the store directly, without the upload service.
    pub async fn store(&self) -> Store {
        let store = Store::connect(&DatabaseConfig {
            db_max_connections: 4,
            ..DatabaseConfig::for_url(&self.url)
        })
        .await
        .expect("connect");
        store.migrate().await.expect("migrate");
        store
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
