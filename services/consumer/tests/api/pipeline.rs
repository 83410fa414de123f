//! The walking skeleton: files go in, one contact per email comes out.

use std::time::Duration;

use rowpipe_testkit::{Backend, generate_contacts, spawn_app};

use crate::CONSUMER_BIN;

async fn three_consumer_processes_store_each_email_once(backend: Backend) {
    let app = spawn_app(backend).await;
    let file = generate_contacts(20_000, 12, 2, 42);
    let mut consumers: Vec<_> = (0..3)
        .map(|_| app.spawn_consumer(CONSUMER_BIN, &[]))
        .collect();

    let id = app.upload_ok(file.csv.clone()).await;
    let status = app.wait_completed(&id, Duration::from_secs(240)).await;

    let dump = app.contacts_dump().await;
    let emails: Vec<&String> = dump.iter().map(|r| &r.0).collect();
    let expected: Vec<&String> = file.distinct.iter().collect();
    assert_eq!(
        emails, expected,
        "the table holds exactly the distinct valid emails"
    );
    let counts = &status["counts"];
    assert_eq!(counts["read"], 20_000);
    assert_eq!(
        counts["inserted"].as_u64(),
        Some(file.distinct.len() as u64)
    );
    assert_eq!(counts["rejected"].as_u64(), Some(file.invalid as u64));
    rowpipe_testkit::assert_every_row_counted_once(&status, 20_000);
    assert_eq!(app.pending().await, 0, "nothing left pending");
    app.cleanup_with(&mut consumers).await;
}

rowpipe_testkit::on_databases!(three_consumer_processes_store_each_email_once: Sqlite, Postgres, MySql);

async fn a_second_upload_of_the_same_file_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let file = generate_contacts(3_000, 15, 3, 7);
    let mut consumer = app.spawn_consumer(CONSUMER_BIN, &[]);

    let first = app.upload_ok(file.csv.clone()).await;
    app.wait_completed(&first, Duration::from_secs(120)).await;
    let before = app.contacts_dump().await;

    let second = app.upload_ok(file.csv.clone()).await;
    assert_ne!(first, second);
    let status = app.wait_completed(&second, Duration::from_secs(120)).await;
    let after = app.contacts_dump().await;

    assert_eq!(before, after, "the second upload left the table unchanged");
    assert_eq!(status["counts"]["inserted"], 0);
    assert_eq!(
        status["counts"]["duplicates"].as_u64(),
        Some((file.rows - file.invalid) as u64)
    );
    app.cleanup_with(std::slice::from_mut(&mut consumer)).await;
}

rowpipe_testkit::on_databases!(a_second_upload_of_the_same_file_changes_nothing: Sqlite, Postgres, MySql);
