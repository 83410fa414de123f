//! Start-up checks: a consumer refuses an unmigrated schema instead of
//! racing other replicas to migrate it, and rejects bad configuration.

use clap::Parser;
use rowpipe_consumer::config::Config;
use rowpipe_consumer::startup::Application;
use rowpipe_testkit::{Backend, TestDb, fresh_stream, redis_url};

fn config(database_url: &str) -> Config {
    Config::try_parse_from([
        "rowpipe-consumer",
        "--database-url",
        database_url,
        "--redis-url",
        &redis_url(),
        "--stream",
        &fresh_stream(),
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .expect("config")
}

async fn a_consumer_refuses_to_start_on_an_unmigrated_database(backend: Backend) {
    let db = TestDb::create(backend).await.expect("database");
    let err = match Application::build(config(&db.url)).await {
        Ok(_) => panic!("the consumer started on an unmigrated database"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("not migrated") && err.contains("rowpipe migrate"),
        "{err}"
    );
    db.drop_db().await;
}

rowpipe_testkit::on_databases!(a_consumer_refuses_to_start_on_an_unmigrated_database: Sqlite, Postgres, MySql);

#[tokio::test]
async fn invalid_configuration_is_refused_with_a_clear_message() {
    let mut c = config("oracle://db/x");
    let err = match Application::build(c.clone()).await {
        Ok(_) => panic!("started with an oracle:// DATABASE_URL"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("postgres://, mysql:// or sqlite://"), "{err}");
    c.database.database_url = "sqlite://x.db".into();
    c.batch_size = 0;
    let err = match Application::build(c).await {
        Ok(_) => panic!("started with a zero batch size"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("ROWPIPE_BATCH_SIZE"), "{err}");
}
