//! Database faults are not bad rows: a permission taken away, a database
//! made read-only, a statement held up by a lock are waited out, with
//! nothing dead-lettered; a row the database refuses on its own is isolated
//! in a few statements, dead-lettered with the database's error, and can be
//! replayed; an entry cannot choose its own upload sequence.

use std::time::{Duration, Instant};

use rowpipe_testkit::faults::database::{LimitedUser, admin_on, set_read_only};
use rowpipe_testkit::upload_process::cli_binary;
use rowpipe_testkit::{
    Backend, Generated, TestApp, ToggleProxy, eventually, generate_contacts, host_port, spawn_app,
    via_port,
};
use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::CONSUMER_BIN;
use crate::in_process::InProcessWorker;

/// Entries in the app's dead-letter stream.
pub(crate) async fn dead_letters(app: &TestApp) -> u64 {
    let mut con = app.redis.clone();
    redis::cmd("XLEN")
        .arg(format!("{}:dead", app.stream))
        .query_async(&mut con)
        .await
        .expect("XLEN")
}

/// A trigger that makes the insert of one email fail, in each dialect.
fn poison_trigger(backend: Backend) -> Vec<&'static str> {
    match backend {
        Backend::Postgres => vec![
            "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN IF NEW.email = 'poison@example.com' THEN RAISE EXCEPTION 'poisoned row'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER poison BEFORE INSERT ON contacts FOR EACH ROW EXECUTE FUNCTION poison()",
        ],
        Backend::MySql => vec![
            "CREATE TRIGGER poison BEFORE INSERT ON contacts FOR EACH ROW BEGIN IF NEW.email = 'poison@example.com' THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'poisoned row'; END IF; END",
        ],
        Backend::Sqlite => vec![
            "CREATE TRIGGER poison BEFORE INSERT ON contacts WHEN NEW.email = 'poison@example.com' BEGIN SELECT RAISE(ABORT, 'poisoned row'); END",
        ],
    }
}

/// Rows the upload has processed so far.
async fn processed(app: &TestApp, id: &str) -> i64 {
    app.status(id).await["counts"]["processed"]
        .as_i64()
        .unwrap_or(0)
}

/// Ingest a 20,000-row file through two consumer processes (claims idle
/// after 1 s, three deliveries at most) while `outage` holds the database
/// away from them for 15 s; then everything is stored and nothing failed.
async fn an_outage_of_15_seconds_fails_no_row<Start, Stop>(
    app: &TestApp,
    consumer_url: &str,
    start: Start,
    stop: Stop,
) where
    Start: AsyncFnOnce(),
    Stop: AsyncFnOnce(),
{
    let file = generate_contacts(20_000, 15, 0, 41);
    let expected = Generated::oracle(&[&file]);
    let env = [
        ("DATABASE_URL", consumer_url),
        ("ROWPIPE_CLAIM_IDLE_MS", "1000"),
        ("ROWPIPE_MAX_DELIVERIES", "3"),
        ("ROWPIPE_BATCH_SIZE", "200"),
    ];
    let mut procs: Vec<_> = (0..2)
        .map(|_| app.spawn_consumer(CONSUMER_BIN, &env))
        .collect();
    let id = app.upload_ok(file.csv.clone()).await;
    eventually(Duration::from_secs(60), "the ingest to start", || async {
        processed(app, &id).await > 1000
    })
    .await;
    start().await;
    // Batches committed just before the fault may still land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_start = processed(app, &id).await;
    tokio::time::sleep(Duration::from_secs(13)).await;
    assert_eq!(
        processed(app, &id).await,
        at_start,
        "rows were stored during the fault: it was not one"
    );
    stop().await;
    let status = app.wait_completed(&id, Duration::from_secs(300)).await;
    assert_eq!(
        app.table_by_upload(std::slice::from_ref(&id)).await,
        expected
    );
    assert_eq!(status["counts"]["rejected"], 0, "{status}");
    assert!(
        status["counts"]["rejected_by_reason"]["processing_failed"].is_null(),
        "{status}"
    );
    assert_eq!(dead_letters(app).await, 0, "nothing is dead-lettered");
    assert_eq!(app.pending().await, 0);
    for p in procs.iter_mut() {
        p.kill().await;
    }
}

async fn a_revoked_insert_privilege_is_waited_out_and_nothing_is_dead_lettered(backend: Backend) {
    let app = spawn_app(backend).await;
    let user = LimitedUser::create(&app.db)
        .await
        .expect("a user of the test's own");
    an_outage_of_15_seconds_fails_no_row(
        &app,
        &user.url,
        async || user.revoke_insert("contacts").await.expect("REVOKE"),
        async || user.grant_insert("contacts").await.expect("GRANT"),
    )
    .await;
    user.drop_user().await.expect("drop the user");
    app.cleanup().await;
}

rowpipe_testkit::on_databases!(a_revoked_insert_privilege_is_waited_out_and_nothing_is_dead_lettered: Postgres, MySql);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_gone_read_only_is_waited_out_and_nothing_is_dead_lettered() {
    let app = spawn_app(Backend::Postgres).await;
    let db = &app.db;
    an_outage_of_15_seconds_fails_no_row(
        &app,
        &app.db.url,
        async || set_read_only(db, true).await.expect("read-only"),
        // Sessions are left as they are: the consumers must drop the
        // connections that went read-only by themselves.
        async || set_read_only(db, false).await.expect("read-write"),
    )
    .await;
    app.cleanup().await;
}

/// A connection of the test's that holds the contacts table locked until
/// [`TableLock::release`].
struct TableLock {
    con: sqlx::AnyConnection,
    backend: Backend,
}

impl TableLock {
    async fn take(app: &TestApp) -> Self {
        let backend = app.db.backend;
        let mut con = match backend {
            Backend::Sqlite => sqlx::AnyConnection::connect(&app.db.url)
                .await
                .expect("connect"),
            _ => admin_on(&app.db).await.expect("connect"),
        };
        let statements: &[&str] = match backend {
            Backend::Postgres => &["BEGIN", "LOCK TABLE contacts IN ACCESS EXCLUSIVE MODE"],
            Backend::MySql => &["LOCK TABLES contacts WRITE"],
            Backend::Sqlite => &["BEGIN IMMEDIATE"],
        };
        for sql in statements {
            con.execute(AssertSqlSafe(sql.to_string()))
                .await
                .expect("lock");
        }
        Self { con, backend }
    }

    async fn release(mut self) {
        let sql = match self.backend {
            Backend::MySql => "UNLOCK TABLES",
            _ => "ROLLBACK",
        };
        self.con
            .execute(AssertSqlSafe(sql.to_string()))
            .await
            .expect("unlock");
    }
}

async fn a_statement_held_up_by_a_lock_times_out_and_its_batch_goes_through_after(
    backend: Backend,
) {
    let app = spawn_app(backend).await;
    let mut csv = String::from("name,email\n");
    for i in 1..=300 {
        csv.push_str(&format!("L{i},l{i}@example.com\n"));
    }
    let id = app.upload_ok(csv.into_bytes()).await;
    let lock = TableLock::take(&app).await;
    let mut worker = InProcessWorker::start(&app, &["--db-statement-timeout-ms", "1000"]).await;
    let health = worker.health();
    let upload = id.clone();
    let run = tokio::spawn(async move {
        worker
            .run_until_completed(&upload, Duration::from_secs(120))
            .await
    });
    // Without a statement timeout the batch would wait on the lock, and
    // readiness would never hear of it.
    eventually(
        Duration::from_secs(30),
        "the held-up statement to time out and the database to be reported not ready",
        || async { health.database_error().is_some() },
    )
    .await;
    let code = health.database_error();
    assert!(!health.ready(), "{code:?}");
    lock.release().await;
    let reports = run.await.expect("the worker's task");
    let status = app.status(&id).await;
    assert_eq!(status["status"], "completed", "{status}");
    assert_eq!(status["counts"]["inserted"], 300, "{status}");
    assert_eq!(
        reports.iter().map(|r| r.dead_lettered).sum::<usize>(),
        0,
        "timed out ({code:?}): {reports:?}"
    );
    assert!(health.ready(), "ready again once the batch went in");
    app.cleanup().await;
}

rowpipe_testkit::on_databases!(a_statement_held_up_by_a_lock_times_out_and_its_batch_goes_through_after: Postgres, MySql, Sqlite);

async fn a_consumer_whose_database_calls_hang_lets_another_take_its_batch_over(backend: Backend) {
    let app = spawn_app(backend).await;
    let proxy = ToggleProxy::start(host_port(&app.db.url))
        .await
        .expect("proxy");
    let mut csv = String::from("name,email\n");
    for i in 1..=300 {
        csv.push_str(&format!("H{i},h{i}@example.com\n"));
    }
    let id = app.upload_ok(csv.into_bytes()).await;
    // A deadline far beyond the test: this worker's calls end only when
    // its path to the database does.
    let settings = [
        "--claim-idle-ms",
        "1000",
        "--db-statement-timeout-ms",
        "600000",
    ];
    let url = via_port(&app.db.url, proxy.port);
    let mut stuck = InProcessWorker::start_on(&app, &url, &settings).await;
    proxy.stall();
    let stuck_turn = tokio::spawn(async move { stuck.turn().await.map(|r| r.is_some()) });
    eventually(
        Duration::from_secs(10),
        "the stuck worker to hold the batch",
        || async { app.pending().await > 0 },
    )
    .await;
    // Without renewals from the stuck worker, its batch is idle after a
    // second and this one takes it over.
    let mut other = InProcessWorker::start(&app, &["--claim-idle-ms", "1000"]).await;
    other
        .run_until_completed(&id, Duration::from_secs(60))
        .await;
    let status = app.status(&id).await;
    assert_eq!(status["counts"]["inserted"], 300, "{status}");
    assert_eq!(status["counts"]["read"], 300, "{status}");
    assert!(
        !stuck_turn.is_finished(),
        "the stuck worker's call was to hang, not fail: {:?}",
        stuck_turn.await
    );
    stuck_turn.abort();
    assert_eq!(app.pending().await, 0);
    drop(proxy);
    app.cleanup().await;
}

rowpipe_testkit::on_databases!(a_consumer_whose_database_calls_hang_lets_another_take_its_batch_over: Postgres, MySql);

/// Run `worker` until `done` holds, failing after `timeout`.
async fn turn_until<F, Fut>(
    worker: &mut InProcessWorker,
    timeout: Duration,
    what: &str,
    mut done: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        let turn = tokio::time::timeout(Duration::from_secs(30), worker.turn()).await;
        turn.expect("a turn ends")
            .unwrap_or_else(|e| panic!("a turn failed: {e:#}"));
    }
}

async fn a_row_the_database_refuses_is_isolated_dead_lettered_and_replayed(backend: Backend) {
    let app = spawn_app(backend).await;
    for sql in poison_trigger(backend) {
        sqlx::raw_sql(AssertSqlSafe(sql.to_string()))
            .execute(app.store.pool())
            .await
            .expect("create trigger");
    }
    let mut csv = String::from("name,email\n");
    for i in 1..=1000 {
        if i == 537 {
            csv.push_str("Poison,poison@example.com\n");
        } else {
            csv.push_str(&format!("P{i},p{i}@example.com\n"));
        }
    }
    let id = app.upload_ok(csv.into_bytes()).await;
    let settings = [
        "--max-deliveries",
        "3",
        "--claim-idle-ms",
        "300",
        "--batch-size",
        "1000",
    ];
    let mut worker = InProcessWorker::start(&app, &settings).await;
    let reports = worker
        .run_until_completed(&id, Duration::from_secs(120))
        .await;
    let status = app.status(&id).await;
    assert_eq!(status["counts"]["inserted"], 999, "{status}");
    assert_eq!(status["counts"]["rejected"], 1, "{status}");
    assert_eq!(
        status["counts"]["rejected_by_reason"]["processing_failed"], 1,
        "{status}"
    );
    // The first delivery halves the batch down to the row (about 16
    // transactions, every other row stored on the way); two more
    // deliveries try it alone.
    let attempts: usize = reports.iter().map(|r| r.store_attempts).sum();
    assert!(
        attempts < 20,
        "{attempts} transactions spent isolating one row in 1,000: {reports:?}"
    );
    assert_eq!(dead_letters(&app).await, 1, "one dead letter");
    let rejects = app.get_text(&format!("/v1/uploads/{id}/rejects")).await;
    let line = rejects.lines().nth(1).unwrap_or("");
    assert!(line.starts_with("537,processing_failed,"), "{rejects}");
    assert!(
        line.contains("poisoned row"),
        "the database's error: {line}"
    );

    let drop = match backend {
        Backend::Postgres => "DROP TRIGGER poison ON contacts",
        _ => "DROP TRIGGER poison",
    };
    sqlx::raw_sql(AssertSqlSafe(drop.to_string()))
        .execute(app.store.pool())
        .await
        .expect("drop trigger");
    let cli = cli_binary().expect("the rowpipe CLI builds");
    let listed = std::process::Command::new(&cli)
        .args(["dead-letters", "list", "--upload", &id])
        .env("REDIS_URL", &app.redis_url)
        .env("ROWPIPE_STREAM", &app.stream)
        .output()
        .expect("rowpipe dead-letters list");
    let listed_text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    assert!(
        listed_text.contains("\trow_refused\t") && listed_text.contains("\t537\t"),
        "{listed_text}"
    );
    let replayed = std::process::Command::new(&cli)
        .args(["dead-letters", "replay", "--upload", &id])
        .env("REDIS_URL", &app.redis_url)
        .env("ROWPIPE_STREAM", &app.stream)
        .output()
        .expect("rowpipe dead-letters replay");
    assert!(replayed.status.success(), "{replayed:?}");
    assert!(
        String::from_utf8_lossy(&replayed.stdout).contains("replayed 1 "),
        "{replayed:?}"
    );
    assert_eq!(
        dead_letters(&app).await,
        0,
        "the replayed letter is trimmed"
    );

    turn_until(
        &mut worker,
        Duration::from_secs(60),
        "the replayed row to be stored",
        || async { app.status(&id).await["counts"]["rejected"] == 0 },
    )
    .await;
    let status = app.status(&id).await;
    let counts = &status["counts"];
    assert_eq!(counts["inserted"], 1000, "{status}");
    assert_eq!(counts["rejected"], 0, "{status}");
    assert!(
        counts["rejected_by_reason"]["processing_failed"].is_null(),
        "{status}"
    );
    assert_eq!(
        counts["read"].as_i64(),
        Some(
            counts["inserted"].as_i64().unwrap_or(0)
                + counts["duplicates"].as_i64().unwrap_or(0)
                + counts["rejected"].as_i64().unwrap_or(0)
        ),
        "read = inserted + duplicates + rejected: {status}"
    );
    let rejects = app.get_text(&format!("/v1/uploads/{id}/rejects")).await;
    assert_eq!(rejects.lines().count(), 1, "only the header: {rejects}");
    assert_eq!(app.pending().await, 0);
    app.cleanup().await;
}

rowpipe_testkit::on_databases!(a_row_the_database_refuses_is_isolated_dead_lettered_and_replayed: Sqlite, Postgres, MySql);

async fn an_entry_cannot_choose_its_upload_sequence(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app
        .upload_ok(b"name,email\nFirst,x@example.com\n".to_vec())
        .await;
    let mut worker =
        InProcessWorker::start(&app, &["--max-deliveries", "2", "--claim-idle-ms", "300"]).await;
    worker
        .run_until_completed(&first, Duration::from_secs(60))
        .await;
    let later = app
        .upload_ok(b"name,email\nLater,other@example.com\n".to_vec())
        .await;
    worker
        .run_until_completed(&later, Duration::from_secs(60))
        .await;

    // Entries written by hand: one of the later upload claiming to come
    // before every upload, one of an upload that does not exist.
    let mut con = app.redis.clone();
    for (upload, email, name) in [
        (later.as_str(), "x@example.com", "Forged"),
        ("no-such-upload", "ghost@example.com", "Ghost"),
    ] {
        let _: String = redis::cmd("XADD")
            .arg(&app.stream)
            .arg("*")
            .arg(&[
                ("upload_id", upload),
                ("upload_seq", "-1"),
                ("row_number", "2"),
                ("email", email),
                ("name", name),
            ])
            .query_async(&mut con)
            .await
            .expect("XADD");
    }
    turn_until(
        &mut worker,
        Duration::from_secs(60),
        "the unknown upload's entry to be dead-lettered",
        || async { dead_letters(&app).await == 1 && app.pending().await == 0 },
    )
    .await;

    let rows = app.contacts_dump().await;
    let x = rows.iter().find(|r| r.0 == "x@example.com");
    assert_eq!(
        x.map(|r| r.3.as_str()),
        Some(first.as_str()),
        "the earlier upload's row stays: {rows:?}"
    );
    assert!(
        !rows.iter().any(|r| r.0 == "ghost@example.com"),
        "an entry of no upload is never stored: {rows:?}"
    );
    let letters: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(format!("{}:dead", app.stream))
        .arg("-")
        .arg("+")
        .query_async(&mut con)
        .await
        .expect("XRANGE");
    let cause = letters.ids.first().and_then(|l| l.get::<String>("cause"));
    assert_eq!(cause.as_deref(), Some("unknown_upload"));
    app.cleanup().await;
}

rowpipe_testkit::on_databases!(an_entry_cannot_choose_its_upload_sequence: Postgres, MySql, Sqlite);
