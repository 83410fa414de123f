//! The batch rules of `Store::apply_batch`, driven one batch at a time on
//! each real database: redelivery (the same batch again, a batch split
//! differently, a winner that was displaced meanwhile) changes neither the
//! table nor the counts, and the duplicates export lists exactly the losers;
//! counts still add up across a rolling upgrade from consumers that wrote
//! them into `uploads` (before migration 0002); the same rows stored by
//! several consumers at once still count once.

use rowpipe_core::store::Store;
use rowpipe_core::verdict::{JudgedRow, RowVerdict};
use rowpipe_testkit::{Backend, TestDb};

use crate::fixtures::{accepted, new_upload, rejected};

/// Which statements the store sends: the server's own (on MariaDB, a
/// contacts insert that returns who holds each email), or on MariaDB
/// MySQL's, which lock every email to learn it: the path a MySQL server
/// takes, covered here.
#[derive(Clone, Copy, Debug)]
enum Statements {
    Servers,
    MySqls,
}

async fn open(db: &TestDb, statements: Statements) -> Store {
    let store = db.store().await;
    match statements {
        Statements::Servers => store,
        Statements::MySqls => store.without_insert_returning(),
    }
}

fn valid(upload: &str, seq: i64, row: i64, email: &str) -> JudgedRow {
    accepted(upload, seq, row, email, Some(format!("row {row}")))
}

/// (email, upload, row) of every stored contact.
async fn stored(store: &Store) -> Vec<(String, String, i64)> {
    let sql = match store.dialect() {
        rowpipe_core::store::Dialect::MySql => {
            "SELECT email, upload_id, `row_number` FROM contacts ORDER BY email"
        }
        _ => "SELECT email, upload_id, \"row_number\" FROM contacts ORDER BY email",
    };
    sqlx::query_as::<_, (String, String, i64)>(sql)
        .fetch_all(store.pool())
        .await
        .expect("dump contacts")
}

/// (processed, inserted, rejected) as counted in `uploads`.
async fn counts(store: &Store, id: &str) -> (i64, i64, i64) {
    let u = store
        .get_upload(id)
        .await
        .expect("get upload")
        .expect("upload exists");
    (u.counts.processed, u.counts.inserted, u.counts.rejected)
}

async fn duplicates(store: &Store, id: &str) -> Vec<i64> {
    store
        .duplicate_rows_page(id, 0, 1000)
        .await
        .expect("duplicates page")
        .into_iter()
        .map(|(row, _)| row)
        .collect()
}

async fn redelivered_batches_change_neither_the_table_nor_the_counts(backend: Backend) {
    redelivered_batches_change_neither_the_table_nor_the_counts_with(backend, Statements::Servers)
        .await
}

async fn redelivered_batches_change_neither_the_table_nor_the_counts_with(
    backend: Backend,
    statements: Statements,
) {
    let db = TestDb::create(backend).await.expect("test database");
    let store = open(&db, statements).await;
    let a_seq = new_upload(&store, "a").await;
    let b_seq = new_upload(&store, "b").await;

    // Upload "a": rows 1..=6, where 2 and 5 repeat the email of 1 (5 only
    // in case; `valid` lower-cases like the email policy does).
    let a: Vec<JudgedRow> = vec![
        valid("a", a_seq, 1, "one@example.com"),
        valid("a", a_seq, 2, "one@example.com"),
        valid("a", a_seq, 3, "three@example.com"),
        valid("a", a_seq, 4, "four@example.com"),
        valid("a", a_seq, 5, "ONE@example.com"),
        valid("a", a_seq, 6, "six@example.com"),
    ];
    // Later rows first: row 5 holds one@ until row 1 arrives.
    let first = store.apply_batch(&a[3..]).await.expect("batch 4..6");
    assert_eq!(first.inserted, 3, "four@, one@ (row 5) and six@ are new");
    let second = store.apply_batch(&a[..3]).await.expect("batch 1..3");
    assert_eq!(
        second.displaced, 1,
        "row 1 displaces row 5 as holder of one@"
    );
    let table = stored(&store).await;
    let expected = vec![
        ("four@example.com".to_string(), "a".to_string(), 4),
        ("one@example.com".to_string(), "a".to_string(), 1),
        ("six@example.com".to_string(), "a".to_string(), 6),
        ("three@example.com".to_string(), "a".to_string(), 3),
    ];
    assert_eq!(table, expected);
    assert_eq!(counts(&store, "a").await, (6, 4, 0));
    assert_eq!(duplicates(&store, "a").await, vec![2, 5]);

    // Every row again, in one batch and then split differently, twice over
    // (at-least-once delivery): nothing changes, everything is a replay.
    let again = store.apply_batch(&a).await.expect("replay all");
    assert_eq!(again.replayed, 6, "{again:?}");
    assert_eq!((again.inserted, again.accepted), (0, 0), "{again:?}");
    for part in [&a[..2], &a[2..5], &a[5..]] {
        let o = store.apply_batch(part).await.expect("replay part");
        assert_eq!(o.replayed as usize, part.len(), "{o:?}");
    }
    // Two copies of one row inside one batch count once.
    let twice = vec![valid("a", a_seq, 7, "seven@example.com"); 2];
    let o = store.apply_batch(&twice).await.expect("twin rows");
    assert_eq!((o.inserted, o.replayed), (1, 1), "{o:?}");
    assert_eq!(stored(&store).await.len(), 5);
    assert_eq!(counts(&store, "a").await, (7, 5, 0));
    assert_eq!(duplicates(&store, "a").await, vec![2, 5]);

    // Upload "b" was accepted after "a": its row for three@ is a duplicate.
    // A row of "a" that arrives after "b" stored bee@ displaces b's row,
    // and redelivering the displaced row leaves it a duplicate.
    let b = vec![
        valid("b", b_seq, 1, "three@example.com"),
        valid("b", b_seq, 2, "bee@example.com"),
    ];
    store.apply_batch(&b).await.expect("batch b");
    assert_eq!(counts(&store, "b").await, (2, 1, 0));
    assert_eq!(duplicates(&store, "b").await, vec![1]);
    let a8 = vec![valid("a", a_seq, 8, "bee@example.com")];
    let o = store.apply_batch(&a8).await.expect("a row 8");
    assert_eq!(o.displaced, 1, "{o:?}");
    assert_eq!(
        counts(&store, "b").await,
        (2, 0, 0),
        "b's winner was displaced"
    );
    assert_eq!(duplicates(&store, "b").await, vec![1, 2]);
    // The displaced row and the displacing one, redelivered together.
    let both = vec![b[1].clone(), a8[0].clone()];
    let o = store.apply_batch(&both).await.expect("replay b2 + a8");
    assert_eq!(o.replayed, 2, "{o:?}");
    assert_eq!(counts(&store, "a").await, (8, 6, 0));
    assert_eq!(counts(&store, "b").await, (2, 0, 0));
    let held_by_b = stored(&store)
        .await
        .into_iter()
        .filter(|(_, upload, _)| upload == "b")
        .count();
    assert_eq!(held_by_b, 0);
    assert_eq!(stored(&store).await.len(), 6);
    // The view for SQL readers says the same as the API.
    let sql = "SELECT rows_processed, rows_inserted, rows_rejected, rows_duplicate FROM upload_counts WHERE upload_id = 'a'";
    let view: (i64, i64, i64, i64) = sqlx::query_as(sql)
        .fetch_one(store.pool())
        .await
        .expect("upload_counts view");
    assert_eq!(view, (8, 6, 0, 2));

    // Values the compact PostgreSQL form cannot carry (an empty attribute
    // text, a separator character) take the plain VALUES form and arrive intact.
    let mut odd = valid("a", a_seq, 9, "odd@example.com");
    if let RowVerdict::Accept {
        attributes, name, ..
    } = &mut odd.verdict
    {
        *attributes = Some(String::new());
        *name = Some("x\u{1e}y".into());
    }
    store.apply_batch(&[odd]).await.expect("odd row");
    let sql = "SELECT name, attributes FROM contacts WHERE email = 'odd@example.com'";
    let (name, attributes): (Option<String>, Option<String>) = sqlx::query_as(sql)
        .fetch_one(store.pool())
        .await
        .expect("odd row stored");
    assert_eq!(name.as_deref(), Some("x\u{1e}y"));
    assert_eq!(attributes.as_deref(), Some(""));

    store.close().await;
    db.drop_db().await;
}
rowpipe_testkit::on_databases!(redelivered_batches_change_neither_the_table_nor_the_counts: Sqlite, Postgres, MySql);

async fn counts_written_by_consumers_older_than_the_progress_table_still_count(backend: Backend) {
    let db = TestDb::create(backend).await.expect("test database");
    let store = db.store().await;
    let seq = new_upload(&store, "u").await;
    // A consumer built before migration 0002 (still running during a rolling
    // upgrade) adds its counts to the `uploads` row itself.
    sqlx::query(
        "UPDATE uploads SET status = 'queued', rows_enqueued = 3, rows_processed = 2, \
         rows_inserted = 1, rows_rejected = 1 WHERE id = 'u'",
    )
    .execute(store.pool())
    .await
    .expect("old-style counts");
    assert_eq!(counts(&store, "u").await, (2, 1, 1));
    assert!(
        !store.try_complete("u").await.expect("try complete"),
        "one row is still missing"
    );
    // The last row arrives through a current consumer.
    store
        .apply_batch(&[valid("u", seq, 3, "three@example.com")])
        .await
        .expect("batch");
    assert_eq!(counts(&store, "u").await, (3, 2, 1));
    assert!(store.try_complete("u").await.expect("try complete"));
    let done = store
        .get_upload("u")
        .await
        .expect("get upload")
        .expect("upload exists");
    assert_eq!(done.status, rowpipe_core::store::UploadStatus::Completed);
    assert_eq!(done.counts.duplicates, 0);
    store.close().await;
    db.drop_db().await;
}
rowpipe_testkit::on_databases!(counts_written_by_consumers_older_than_the_progress_table_still_count: Sqlite, Postgres, MySql);

fn invalid(upload: &str, seq: i64, row: i64) -> JudgedRow {
    rejected(
        upload,
        seq,
        row,
        format!("row {row}: not an email"),
        format!("{{\"email\":\"nobody-{row}\"}}"),
    )
}

/// Everything a batch leaves behind, comparable across databases.
async fn footprint(store: &Store, uploads: &[&str]) -> String {
    let mut out = format!("{:?}\n", stored(store).await);
    for id in uploads {
        out.push_str(&format!(
            "{id}: {:?} duplicates {:?}\n",
            counts(store, id).await,
            duplicates(store, id).await
        ));
    }
    out
}

/// A slow batch claimed by a second consumer (`XAUTOCLAIM`) while the first
/// still works on it: both store the same rows at the same moment. The
/// result must be what storing them once gives, with no error for either.
async fn the_same_rows_stored_by_several_consumers_at_once_count_once(backend: Backend) {
    the_same_rows_stored_at_once_count_once(backend, [Statements::Servers; 4]).await
}

/// The same, each consumer sending the statements given for it.
async fn the_same_rows_stored_at_once_count_once(backend: Backend, consumers: [Statements; 4]) {
    const CONSUMERS: usize = 4;
    let db = TestDb::create(backend).await.expect("test database");
    let once_db = TestDb::create(backend).await.expect("reference database");
    let mut stores = Vec::new();
    for statements in consumers {
        stores.push(open(&db, statements).await);
    }
    let once = once_db.store().await;
    let mut seqs = Vec::new();
    for id in ["a", "b"] {
        let seq = new_upload(&stores[0], id).await;
        assert_eq!(new_upload(&once, id).await, seq);
        seqs.push(seq);
    }
    // Rounds of 300 rows over both uploads: new emails, repeats within the
    // round and of earlier rounds, rows of "a" that displace "b", rejects.
    for round in 0..6i64 {
        let mut batch = Vec::new();
        for i in 0..150i64 {
            let row = round * 150 + i + 1;
            if i % 5 == 1 {
                batch.push(invalid("a", seqs[0], row));
                batch.push(invalid("b", seqs[1], row));
                continue;
            }
            let email = if i % 5 == 0 {
                format!("shared{}@example.com", i % 20)
            } else {
                format!("r{row}@example.com")
            };
            batch.push(valid("a", seqs[0], row, &email));
            batch.push(valid("b", seqs[1], row, &email));
        }
        once.apply_batch(&batch).await.expect("stored once");
        let mut tasks = Vec::new();
        for (n, store) in stores.iter().enumerate() {
            let store = store.clone();
            // Every consumer holds the same rows; some hold only b's half, as
            // after a claim of part of a batch.
            let rows: Vec<JudgedRow> = if n % 2 == 1 {
                batch
                    .iter()
                    .filter(|r| r.upload_id == "b")
                    .cloned()
                    .collect()
            } else {
                batch.clone()
            };
            // Deadlocks between the copies are transient: the worker retries
            // them, and so does this stand-in for it.
            tasks.push(tokio::spawn(async move {
                loop {
                    match store.apply_batch(&rows).await {
                        Err(e) if e.is_transient() => continue,
                        result => break result,
                    }
                }
            }));
        }
        for t in tasks {
            let outcome = t.await.expect("task");
            outcome.unwrap_or_else(|e| panic!("round {round}: a concurrent copy failed: {e}"));
        }
        assert_eq!(
            footprint(&stores[0], &["a", "b"]).await,
            footprint(&once, &["a", "b"]).await,
            "round {round}: stored by {CONSUMERS} consumers at once vs once"
        );
    }
    for store in &stores {
        store.close().await;
    }
    once.close().await;
    db.drop_db().await;
    once_db.drop_db().await;
}
rowpipe_testkit::on_databases!(the_same_rows_stored_by_several_consumers_at_once_count_once: Sqlite, Postgres, MySql);

/// A value too long for its column (strict mode) fails the batch as the
/// rows' fault, so the worker stores the others and records that row as
/// failed with the database's message; nothing of it is stored, on either
/// statement path. (A contacts insert that `IGNORE`d errors to learn which
/// rows it inserted would have stored it cut short.)
async fn a_value_too_long_for_its_column_is_refused_not_cut_short(statements: Statements) {
    let db = TestDb::create(Backend::MySql).await.expect("test database");
    let setup = open(&db, Statements::MySqls).await;
    let seq = new_upload(&setup, "u").await;
    setup
        .apply_batch(&[valid("u", seq, 1, "one@example.com")])
        .await
        .expect("row 1");
    setup.close().await;

    let store = open(&db, statements).await;
    let outcome = store
        .apply_batch(&[
            valid("u", seq, 2, "ONE@example.com"),
            valid("u", seq, 3, "three@example.com"),
        ])
        .await
        .expect("a duplicate and a new row");
    assert_eq!((outcome.accepted, outcome.inserted), (2, 1));
    // `name` is a TEXT column: at most 65,535 bytes.
    let long = accepted("u", seq, 5, "five@example.com", Some("n".repeat(70_000)));
    let err = store
        .apply_batch(&[valid("u", seq, 4, "one@example.com"), long.clone()])
        .await
        .expect_err("a name too long for its column");
    assert_eq!(err.fault(), rowpipe_core::store::Fault::Row, "{err}");
    let err = store
        .apply_batch(std::slice::from_ref(&long))
        .await
        .expect_err("that row alone");
    assert_eq!(err.fault(), rowpipe_core::store::Fault::Row, "{err}");
    assert_eq!(
        stored(&store).await,
        vec![
            ("one@example.com".to_string(), "u".to_string(), 1),
            ("three@example.com".to_string(), "u".to_string(), 3),
        ]
    );
    assert_eq!(counts(&store, "u").await, (3, 2, 0));
    store.close().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_too_long_for_its_column_is_refused_not_cut_short_on_mysql() {
    a_value_too_long_for_its_column_is_refused_not_cut_short(Statements::Servers).await;
}

/// MySQL's statements, on a MariaDB server: the path a MySQL server takes
/// (every email of a batch locked to learn who holds it), and a rolling
/// upgrade where consumers that predate `INSERT … RETURNING` and current
/// ones store the same rows at once.
mod on_mariadb_with_mysql_statements {
    use super::Statements::{MySqls, Servers};
    use rowpipe_testkit::Backend;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redelivered_batches_change_neither_the_table_nor_the_counts() {
        super::redelivered_batches_change_neither_the_table_nor_the_counts_with(
            Backend::MySql,
            MySqls,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_same_rows_stored_by_several_consumers_at_once_count_once() {
        super::the_same_rows_stored_at_once_count_once(Backend::MySql, [MySqls; 4]).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_value_too_long_for_its_column_is_refused_not_cut_short() {
        super::a_value_too_long_for_its_column_is_refused_not_cut_short(MySqls).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consumers_of_both_kinds_storing_the_same_rows_count_them_once() {
        super::the_same_rows_stored_at_once_count_once(
            Backend::MySql,
            [Servers, MySqls, MySqls, Servers],
        )
        .await;
    }
}
