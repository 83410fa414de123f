//! [`on_databases!`](crate::on_databases): one test body, one `#[tokio::test]`
//! per database, so each backend fails (and can be run) on its own.

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
