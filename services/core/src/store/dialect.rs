//! The SQL flavour behind a `DATABASE_URL`, and the two things every
//! statement spells differently in each: bind placeholders and quoted
//! identifiers. The store writes portable SQL (`?` placeholders, the
//! `row_number` column in ANSI double quotes) and [`Dialect::sql`] rewrites
//! it; statements built piece by piece ask [`Dialect::placeholder`] and
//! [`Dialect::row_number_col`].

use sqlx::migrate::Migrator;

use super::StoreError;
use crate::config::redact;

static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/postgres");
static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/mysql");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// How portable SQL writes the `row_number` column.
const ANSI_ROW_NUMBER: &str = "\"row_number\"";

/// The SQL flavour behind a `DATABASE_URL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    MySql,
    Sqlite,
}

impl Dialect {
    /// From the URL scheme: `postgres`/`postgresql`, `mysql`/`mariadb`, `sqlite`.
    pub fn from_url(url: &str) -> Result<Self, StoreError> {
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "postgres" | "postgresql" => Ok(Self::Postgres),
            "mysql" | "mariadb" => Ok(Self::MySql),
            "sqlite" => Ok(Self::Sqlite),
            _ => Err(StoreError::UnsupportedUrl(redact(url))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgresql",
            Self::MySql => "mysql",
            Self::Sqlite => "sqlite",
        }
    }

    pub(super) fn migrator(self) -> &'static Migrator {
        match self {
            Self::Postgres => &POSTGRES_MIGRATIONS,
            Self::MySql => &MYSQL_MIGRATIONS,
            Self::Sqlite => &SQLITE_MIGRATIONS,
        }
    }

    /// The `row_number` column, quoted: it is a reserved word in MySQL 8 (a
    /// window function). MySQL quotes identifiers with backticks (double
    /// quotes are strings there unless `ANSI_QUOTES` is set), the others
    /// with ANSI double quotes.
    pub fn row_number_col(self) -> &'static str {
        match self {
            Self::MySql => "`row_number`",
            Self::Postgres | Self::Sqlite => ANSI_ROW_NUMBER,
        }
    }

    /// Rewrite portable SQL (`?` placeholders, `"row_number"`) for this dialect.
    pub fn sql(self, portable: &str) -> String {
        match self {
            Self::Sqlite => portable.to_string(),
            Self::MySql => portable.replace(ANSI_ROW_NUMBER, self.row_number_col()),
            Self::Postgres => {
                let mut out = String::with_capacity(portable.len() + 16);
                let mut n = 0;
                for c in portable.chars() {
                    if c == '?' {
                        n += 1;
                        out.push('$');
                        out.push_str(&n.to_string());
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }

    /// The placeholder for the `n`th (1-based) bind parameter.
    pub fn placeholder(self, n: usize, out: &mut String) {
        use std::fmt::Write;
        match self {
            Self::Postgres => {
                let _ = write!(out, "${n}");
            }
            _ => out.push('?'),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn portable_sql_is_rewritten_per_dialect() {
        let sql = "SELECT \"row_number\" FROM t WHERE a = ? AND b = ?";
        assert_eq!(
            Dialect::Postgres.sql(sql),
            "SELECT \"row_number\" FROM t WHERE a = $1 AND b = $2"
        );
        assert_eq!(
            Dialect::MySql.sql(sql),
            "SELECT `row_number` FROM t WHERE a = ? AND b = ?"
        );
        assert_eq!(Dialect::Sqlite.sql(sql), sql);
    }

    #[test]
    fn the_url_scheme_picks_the_dialect() {
        assert_eq!(
            Dialect::from_url("postgresql://x/y").ok(),
            Some(Dialect::Postgres)
        );
        assert_eq!(
            Dialect::from_url("mariadb://x/y").ok(),
            Some(Dialect::MySql)
        );
        assert_eq!(
            Dialect::from_url("sqlite://a.db").ok(),
            Some(Dialect::Sqlite)
        );
        assert!(Dialect::from_url("oracle://x").is_err());
    }
}
