//! PostgreSQL's own CPU per row for the ways a consumer's batch can reach
//! `contacts`, measured on one connection with no Redis and no consumer in
//! the way: is a design change to the PostgreSQL store worth building?
//!
//! Forms, each on a fresh database migrated by rowpipe (the same table and
//! index; the tests' [`TestDb`]), the same rows (the tests' generated
//! contacts without invalid addresses, about 5% of them repeating an earlier
//! address, half of those in upper case), in 1,000-row batches in file
//! order, each batch's emails sorted as the store sorts them, one
//! transaction per batch:
//!
//! * `batch`: the whole of [`Store::apply_batch`] (ledger lookup, contacts,
//!   the lock of contested emails, the accepted ledger, progress), what a
//!   consumer sends;
//! * `packed`: the store's contacts insert alone (each column packed into
//!   one text parameter, `string_to_array` + `unnest`);
//! * `arrays`: the same insert with each column bound as a native array
//!   (`unnest($1::text[], …)`, binary-encoded), what a PostgreSQL-only pool
//!   would send;
//! * `copy`: `COPY … FROM STDIN (FORMAT binary)` into a session temporary
//!   table (`ON COMMIT DELETE ROWS`), then one `INSERT … SELECT … ON
//!   CONFLICT DO NOTHING` from it: the reference's shape, per batch.
//!
//! CPU is the backend's own time on CPU (`/proc/<pid>/schedstat`), so the
//! client's work does not count; the database must be on this machine.
//!
//! ```text
//! cargo run --release -p rowpipe-testkit --example pg_insert_forms -- \
//!     [rows] [repeats] [duplicate %]
//! ```
//!
//! The server is the tests' (`ROWPIPE_TEST_POSTGRES_URL`, by default
//! `postgres://postgres@127.0.0.1:5432/postgres`); rows default to 300,000,
//! repeats (alternating rounds of every form) to 2, the share of rows
//! repeating an earlier address to 5%. `FORMS=packed,arrays` runs only
//! those forms. Figures are in docs/performance.md.

use std::time::Instant;

use anyhow::{Context, bail};
use rowpipe_core::config::DatabaseConfig;
use rowpipe_core::store::{NewUpload, Store};
use rowpipe_core::validate::normalize_email;
use rowpipe_core::verdict::{JudgedRow, RowVerdict};
use rowpipe_testkit::{Backend, TestDb, generate_contacts};
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, Row};

const BATCH: usize = 1000;
const FORMS: [&str; 4] = ["batch", "packed", "arrays", "copy"];

/// One valid row: (normalized email, email as written, row number).
type Contact = (String, String, i64);

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let rows: usize = args.next().map_or(Ok(300_000), |a| a.parse())?;
    let repeats: usize = args.next().map_or(Ok(2), |a| a.parse())?;
    let duplicates: u32 = args.next().map_or(Ok(5), |a| a.parse())?;
    // The generated file's rows, as the consumer would judge them.
    let contacts: Vec<Contact> = generate_contacts(rows, duplicates, 0, 2026)
        .emails
        .into_iter()
        .zip(1..)
        .filter_map(|(raw, row)| Some((normalize_email(&raw, Default::default())?, raw, row)))
        .collect();
    let batches: Vec<Vec<Contact>> = contacts.chunks(BATCH).map(by_email).collect();
    println!(
        "# PostgreSQL CPU per row by insert form: {} valid rows ({duplicates}% repeating an earlier address) \
         in {} batches, {repeats} alternating rounds",
        contacts.len(),
        batches.len()
    );
    // `FORMS=packed,arrays` runs only those.
    let only = std::env::var("FORMS").unwrap_or_default();
    let mut figures: Vec<(&str, Vec<(f64, f64)>)> = FORMS
        .iter()
        .filter(|f| only.is_empty() || only.split(',').any(|o| o == **f))
        .map(|f| (*f, vec![]))
        .collect();
    for round in 0..repeats {
        for (form, runs) in figures.iter_mut() {
            let db = TestDb::create(Backend::Postgres).await?;
            let result = run(&db.url, form, &batches).await;
            db.drop_db().await;
            let (cpu_ns, secs) = result?;
            let n = contacts.len() as f64;
            let per_row = cpu_ns as f64 / 1000.0 / n;
            println!(
                "round {round} {form:>6}: {per_row:6.2} µs of backend CPU per row, {:8.0} rows/s",
                n / secs
            );
            runs.push((per_row, n / secs));
        }
    }
    println!(
        "\n| form | backend CPU µs/row (each round) | rows/s on one connection (each round) |"
    );
    println!("|---|---|---|");
    for (form, runs) in &figures {
        let cpu: Vec<String> = runs.iter().map(|r| format!("{:.2}", r.0)).collect();
        let rate: Vec<String> = runs.iter().map(|r| format!("{:.0}", r.1)).collect();
        println!("| {form} | {} | {} |", cpu.join(", "), rate.join(", "));
    }
    Ok(())
}

/// The name stored with a row (the generated file's names are not kept).
fn name_of(row: i64) -> String {
    format!("Person {row}")
}

/// A batch as the store sends it: the earliest row of each email, in email order.
fn by_email(chunk: &[Contact]) -> Vec<Contact> {
    let mut rows = chunk.to_vec();
    rows.sort_by(|a, b| (&a.0, a.2).cmp(&(&b.0, b.2)));
    rows.dedup_by(|b, a| a.0 == b.0);
    rows
}

/// Backend CPU (ns) and seconds for one form on the fresh database at `url`.
async fn run(url: &str, form: &str, batches: &[Vec<Contact>]) -> anyhow::Result<(u64, f64)> {
    let mut config = DatabaseConfig::for_url(url);
    config.db_max_connections = 1;
    let store = Store::connect(&config).await?;
    store.migrate().await?;
    let upload_id = uuid::Uuid::new_v4().to_string();
    let seq = store
        .create_upload(&NewUpload {
            id: upload_id.clone(),
            file_name: None,
            idempotency_key: None,
            tenant: None,
        })
        .await?;
    let now = rowpipe_core::now_ms();
    // Checkpoint first: no form pays for the WAL of the one before.
    if let Err(e) = sqlx::query("CHECKPOINT").execute(store.pool()).await {
        eprintln!("CHECKPOINT not allowed ({e}); forms may share checkpoint work");
    }
    if form == "batch" {
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(store.pool())
            .await?;
        let (cpu0, t0) = (backend_cpu_ns(pid)?, Instant::now());
        for batch in batches {
            let rows: Vec<JudgedRow> = batch
                .iter()
                .map(|(email, raw, row)| JudgedRow {
                    upload_id: upload_id.clone(),
                    upload_seq: seq,
                    row_number: *row,
                    verdict: RowVerdict::Accept {
                        email: email.clone(),
                        email_raw: raw.clone(),
                        name: Some(name_of(*row)),
                        attributes: None,
                    },
                    unverified: None,
                })
                .collect();
            store.apply_batch(&rows).await?;
        }
        let secs = t0.elapsed().as_secs_f64();
        let cpu = backend_cpu_ns(pid)? - cpu0;
        let pid_after: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(store.pool())
            .await?;
        if pid_after != pid {
            bail!("the store's connection was replaced during the run: its CPU is not all counted");
        }
        store.close().await;
        return Ok((cpu, secs));
    }
    store.close().await;

    let mut conn = PgConnection::connect(url).await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await?;
    if form == "copy" {
        conn.execute(
            "CREATE TEMPORARY TABLE staging (e text, r text, m text, a text, n bigint) \
             ON COMMIT DELETE ROWS",
        )
        .await?;
    }
    let packed_sql = rowpipe_core::store::batch::postgres_packed_contacts_insert();
    let arrays_sql = "WITH ins AS (INSERT INTO contacts (email, email_raw, name, attributes, \
         upload_id, upload_seq, \"row_number\", created_at_ms) \
         SELECT e, r, m, a, $6, $7, n, $8 \
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) AS t(e, r, m, a, n) \
         ON CONFLICT (email) DO NOTHING RETURNING email) \
         SELECT COALESCE(string_agg(email, chr(30)), '') FROM ins";
    let copy_sql = "WITH ins AS (INSERT INTO contacts (email, email_raw, name, attributes, \
         upload_id, upload_seq, \"row_number\", created_at_ms) \
         SELECT e, r, m, a, $1, $2, n, $3 FROM staging \
         ON CONFLICT (email) DO NOTHING RETURNING email) \
         SELECT COALESCE(string_agg(email, chr(30)), '') FROM ins";
    let (cpu0, t0) = (backend_cpu_ns(pid)?, Instant::now());
    for batch in batches {
        let mut tx = conn.begin().await?;
        // Every form binds the upload, its seq and the time last.
        let query = match form {
            "packed" => {
                let join = |f: &dyn Fn(&Contact) -> String| {
                    batch.iter().map(f).collect::<Vec<_>>().join("\u{1e}")
                };
                sqlx::query(AssertSqlSafe(packed_sql.as_str()))
                    .bind(join(&|c| c.0.clone()))
                    .bind(join(&|c| c.1.clone()))
                    .bind(join(&|c| name_of(c.2)))
                    .bind(join(&|_| "\u{1f}".to_string()))
                    .bind(join(&|c| c.2.to_string()))
            }
            "arrays" => {
                let emails: Vec<&str> = batch.iter().map(|c| c.0.as_str()).collect();
                let raws: Vec<&str> = batch.iter().map(|c| c.1.as_str()).collect();
                let names: Vec<String> = batch.iter().map(|c| name_of(c.2)).collect();
                let attributes: Vec<Option<&str>> = vec![None; batch.len()];
                let numbers: Vec<i64> = batch.iter().map(|c| c.2).collect();
                sqlx::query(AssertSqlSafe(arrays_sql))
                    .bind(emails)
                    .bind(raws)
                    .bind(names)
                    .bind(attributes)
                    .bind(numbers)
            }
            "copy" => {
                let mut copy = tx
                    .copy_in_raw("COPY staging FROM STDIN (FORMAT binary)")
                    .await?;
                copy.send(copy_binary(batch)).await?;
                copy.finish().await?;
                sqlx::query(AssertSqlSafe(copy_sql))
            }
            other => bail!("unknown form {other}"),
        };
        let inserted: String = query
            .bind(upload_id.as_str())
            .bind(seq)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        std::hint::black_box(inserted);
        tx.commit().await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = backend_cpu_ns(pid)? - cpu0;
    conn.close().await?;
    Ok((cpu, secs))
}

/// A batch in `COPY … (FORMAT binary)`: the signature, then per row the
/// field count and each field as length + bytes (-1 for NULL), then -1.
fn copy_binary(batch: &[Contact]) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.len() * 96 + 21);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    let text = |out: &mut Vec<u8>, v: &str| {
        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    };
    for (email, raw, row) in batch {
        out.extend_from_slice(&5i16.to_be_bytes());
        text(&mut out, email);
        text(&mut out, raw);
        text(&mut out, &name_of(*row));
        out.extend_from_slice(&(-1i32).to_be_bytes());
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&row.to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// Nanoseconds the backend `pid` has spent on CPU (`/proc/<pid>/schedstat`).
fn backend_cpu_ns(pid: i32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/schedstat");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{path}: the database must run on this machine"))?;
    let ns = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{path}: unexpected {text:?}"))?;
    Ok(ns)
}
