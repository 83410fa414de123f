//! Faults of a test's own database that an operator would cause: a
//! permission revoked ([`LimitedUser`]), the database made read-only as a
//! failover leaves an old primary ([`set_read_only`]). Each acts on the
//! test's database only, through the server's admin connection.

use anyhow::Context;
use sqlx::{AnyConnection, AssertSqlSafe, Connection, Executor};

use crate::db::{Backend, TestDb, admin_url, with_database};

/// A login of the test's own on its database, holding every privilege
/// the programs need on its tables and nothing more (the admin user
/// bypasses privilege checks), so a test can take one away.
pub struct LimitedUser {
    backend: Backend,
    database: String,
    pub name: String,
    /// The test database's URL, logged in as this user.
    pub url: String,
}

impl LimitedUser {
    /// Create the user on `db` (PostgreSQL or MariaDB/MySQL).
    pub async fn create(db: &TestDb) -> anyhow::Result<Self> {
        let name = format!("rpu_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let database = db.name().to_string();
        let mut admin = admin_on(db).await?;
        match db.backend {
            Backend::Postgres => {
                for sql in [
                    format!("CREATE ROLE {name} LOGIN"),
                    format!("GRANT ALL ON ALL TABLES IN SCHEMA public TO {name}"),
                    format!("GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {name}"),
                ] {
                    admin.execute(AssertSqlSafe(sql)).await?;
                }
            }
            Backend::MySql => {
                // Table by table for INSERT, so that one table's can be
                // revoked (a database-wide grant would outrank it).
                let tables: Vec<String> = sqlx::query_scalar(AssertSqlSafe(format!(
                    "SELECT CAST(table_name AS CHAR) FROM information_schema.tables WHERE table_schema = '{database}'"
                )))
                .fetch_all(&mut admin)
                .await?;
                for host in ["%", "localhost"] {
                    let user = format!("'{name}'@'{host}'");
                    admin
                        .execute(AssertSqlSafe(format!(
                            "CREATE USER {user} IDENTIFIED BY ''"
                        )))
                        .await?;
                    admin
                        .execute(AssertSqlSafe(format!(
                            "GRANT SELECT, UPDATE, DELETE, CREATE, DROP, INDEX, ALTER, LOCK TABLES ON `{database}`.* TO {user}"
                        )))
                        .await?;
                    for t in &tables {
                        admin
                            .execute(AssertSqlSafe(format!(
                                "GRANT INSERT ON `{database}`.`{t}` TO {user}"
                            )))
                            .await?;
                    }
                }
            }
            Backend::Sqlite => anyhow::bail!("SQLite has no users"),
        }
        Ok(Self {
            backend: db.backend,
            url: with_user(&db.url, &name),
            database,
            name,
        })
    }

    /// `REVOKE INSERT ON table` from this user.
    pub async fn revoke_insert(&self, table: &str) -> anyhow::Result<()> {
        self.grant_or_revoke("REVOKE", "FROM", table).await
    }

    /// `GRANT INSERT ON table` to this user again.
    pub async fn grant_insert(&self, table: &str) -> anyhow::Result<()> {
        self.grant_or_revoke("GRANT", "TO", table).await
    }

    /// Remove the user (a PostgreSQL role outlives the test's database).
    pub async fn drop_user(self) -> anyhow::Result<()> {
        let mut on_db = connect(&with_database(&admin_url(self.backend), &self.database)).await?;
        match self.backend {
            Backend::Postgres => {
                on_db
                    .execute(AssertSqlSafe(format!("DROP OWNED BY {}", self.name)))
                    .await?;
                on_db
                    .execute(AssertSqlSafe(format!("DROP ROLE {}", self.name)))
                    .await?;
            }
            _ => {
                for host in ["%", "localhost"] {
                    on_db
                        .execute(AssertSqlSafe(format!("DROP USER '{}'@'{host}'", self.name)))
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn grant_or_revoke(&self, verb: &str, to: &str, table: &str) -> anyhow::Result<()> {
        let mut admin = connect(&with_database(&admin_url(self.backend), &self.database)).await?;
        match self.backend {
            Backend::Postgres => {
                admin
                    .execute(AssertSqlSafe(format!(
                        "{verb} INSERT ON {table} {to} {}",
                        self.name
                    )))
                    .await?;
            }
            _ => {
                for host in ["%", "localhost"] {
                    admin
                        .execute(AssertSqlSafe(format!(
                            "{verb} INSERT ON `{}`.`{table}` {to} '{}'@'{host}'",
                            self.database, self.name
                        )))
                        .await?;
                }
            }
        }
        Ok(())
    }
}

/// PostgreSQL: make the test's database read-only for new transactions
/// (`default_transaction_read_only`) and end its sessions, as a failover
/// that leaves clients on a demoted primary; `false` lifts it (sessions
/// left alone: clients must find out by themselves).
pub async fn set_read_only(db: &TestDb, read_only: bool) -> anyhow::Result<()> {
    anyhow::ensure!(db.backend == Backend::Postgres, "PostgreSQL only");
    let mut admin = connect(&admin_url(Backend::Postgres)).await?;
    let name = db.name();
    let setting = if read_only { "on" } else { "off" };
    admin
        .execute(AssertSqlSafe(format!(
            "ALTER DATABASE \"{name}\" SET default_transaction_read_only = {setting}"
        )))
        .await?;
    if read_only {
        admin
            .execute(AssertSqlSafe(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
            )))
            .await?;
    }
    Ok(())
}

/// An admin connection to the test's database itself.
pub async fn admin_on(db: &TestDb) -> anyhow::Result<AnyConnection> {
    connect(&with_database(&admin_url(db.backend), db.name())).await
}

async fn connect(url: &str) -> anyhow::Result<AnyConnection> {
    AnyConnection::connect(url)
        .await
        .with_context(|| format!("connecting to {}", rowpipe_core::config::redact(url)))
}

/// `url` logged in as `user` (no password).
fn with_user(url: &str, user: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let host = rest.split_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_user_replaces_the_url_login() {
        assert_eq!(
            super::with_user("postgres://postgres@127.0.0.1:5432/db?x=1", "u"),
            "postgres://u@127.0.0.1:5432/db?x=1"
        );
        assert_eq!(
            super::with_user("mysql://127.0.0.1:3306/db", "u"),
            "mysql://u@127.0.0.1:3306/db"
        );
    }
}
