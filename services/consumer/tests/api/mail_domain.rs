//! The deliverability check (`ROWPIPE_CHECK_MAIL_DOMAIN=mx`) against a real
//! DNS server the test starts on a loopback port ([`TestDns`]): one zone
//! for each answer the check must tell apart, the cache counted at the
//! server, and the whole pipeline (rejects with suggestions, unverified
//! rows, counts) on each database.

use std::time::{Duration, Instant};

use hickory_resolver::proto::rr::RecordType;
use rowpipe_consumer::config::Config;
use rowpipe_consumer::mail_domain::MailDomains;
use rowpipe_core::deliverability::{DomainVerdict, UnverifiedReason};
use rowpipe_testkit::{Backend, TestDns, Zone, spawn_app};

use crate::CONSUMER_BIN;

/// The zones every test here serves. Any other name is NXDOMAIN.
fn zones() -> Vec<(String, Zone)> {
    [
        ("mx.test", Zone::Mx),
        ("address.test", Zone::AddressOnly),
        ("nullmx.test", Zone::NullMx),
        ("empty.test", Zone::Empty),
        ("servfail.test", Zone::ServFail),
        ("silent.test", Zone::Silent),
    ]
    .into_iter()
    .map(|(d, z)| (d.to_string(), z))
    .collect()
}

fn check(dns: &TestDns, settings: &[&str]) -> std::sync::Arc<MailDomains> {
    let server = dns.addr().to_string();
    let mut args = vec!["--check-mail-domain", "mx", "--dns-servers", &server];
    args.extend_from_slice(settings);
    let config: Config = rowpipe_testkit::config::parse(args).expect("settings");
    config.validate().expect("valid settings");
    MailDomains::from_config(&config)
        .expect("resolver")
        .expect("the check is on")
}

fn unknown_reason(v: &DomainVerdict) -> Option<UnverifiedReason> {
    match v {
        DomainVerdict::Unknown(u) => Some(u.reason),
        _ => None,
    }
}

fn refusal(v: &DomainVerdict) -> &str {
    match v {
        DomainVerdict::Refuses(why) => why,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn each_kind_of_domain_gets_its_verdict_from_a_real_server() {
    let dns = TestDns::start(zones(), 300).await.expect("dns");
    let check = check(&dns, &["--dns-timeout-ms", "400"]);

    assert_eq!(check.verdict("mx.test").await, DomainVerdict::Accepts);
    // No MX, but an address: RFC 5321's implicit MX.
    assert_eq!(check.verdict("address.test").await, DomainVerdict::Accepts);
    assert!(refusal(&check.verdict("nullmx.test").await).contains("null MX (RFC 7505)"));
    assert!(refusal(&check.verdict("nxdomain.test").await).contains("NXDOMAIN"));
    assert!(refusal(&check.verdict("empty.test").await).contains("no MX record and no A or AAAA"));
    assert_eq!(
        unknown_reason(&check.verdict("servfail.test").await),
        Some(UnverifiedReason::ServerFailure)
    );
    let started = Instant::now();
    let silent = check.verdict("silent.test").await;
    assert_eq!(
        unknown_reason(&silent),
        Some(UnverifiedReason::Timeout),
        "{silent:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the timeout bounds the lookup: {:?}",
        started.elapsed()
    );

    // An MX answer needs no address lookup; only a domain without MX asks
    // for A and AAAA.
    assert_eq!(dns.queries("mx.test", RecordType::MX), 1);
    assert_eq!(dns.queries("mx.test", RecordType::A), 0);
    assert_eq!(dns.queries("address.test", RecordType::A), 1);
    assert_eq!(dns.queries("address.test", RecordType::AAAA), 1);
    assert_eq!(dns.queries("nxdomain.test", RecordType::A), 0);

    // Asked again, every answer comes from the cache, negative ones and
    // failures too (within the failure TTL).
    let before = dns.total_queries();
    for d in [
        "mx.test",
        "address.test",
        "nullmx.test",
        "nxdomain.test",
        "empty.test",
        "servfail.test",
        "silent.test",
    ] {
        check.verdict(d).await;
    }
    assert_eq!(dns.total_queries(), before, "a second round asks nothing");
}

#[tokio::test]
async fn a_server_that_is_not_there_leaves_domains_unverified() {
    // A port nobody listens on: the lookup fails (or times out), it never
    // refuses the domain.
    let unused = std::net::UdpSocket::bind("127.0.0.1:0").expect("port");
    let port = unused.local_addr().expect("addr").port();
    drop(unused);
    let config: Config = rowpipe_testkit::config::parse([
        "--check-mail-domain",
        "mx",
        "--dns-servers",
        &format!("127.0.0.1:{port}"),
        "--dns-timeout-ms",
        "300",
    ])
    .expect("settings");
    let check = MailDomains::from_config(&config)
        .expect("resolver")
        .expect("on");
    let v = check.verdict("mx.test").await;
    assert!(unknown_reason(&v).is_some(), "{v:?}");
}

#[tokio::test]
async fn answers_are_kept_for_their_ttl_within_the_floor() {
    // Records with a TTL of 1 s.
    let dns = TestDns::start(zones(), 1).await.expect("dns");
    // Floor 1 s: the answer expires with its TTL and is asked again.
    let short = check(&dns, &["--dns-min-ttl-secs", "1"]);
    short.verdict("mx.test").await;
    short.verdict("nxdomain.test").await;
    short.verdict("mx.test").await;
    assert_eq!(dns.queries("mx.test", RecordType::MX), 1);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    short.verdict("mx.test").await;
    short.verdict("nxdomain.test").await;
    assert_eq!(
        dns.queries("mx.test", RecordType::MX),
        2,
        "expired, asked again"
    );
    assert_eq!(
        dns.queries("nxdomain.test", RecordType::MX),
        2,
        "negative TTL too"
    );

    // The default floor (60 s) keeps a 1 s answer well past its TTL.
    let floored = check(&dns, &[]);
    floored.verdict("address.test").await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    floored.verdict("address.test").await;
    assert_eq!(dns.queries("address.test", RecordType::MX), 1);
}

/// A consumer process of `app` with the check on, asking `dns`, with one
/// more setting.
fn checking_consumer(
    app: &rowpipe_testkit::TestApp,
    dns: &TestDns,
    setting: (&str, &str),
) -> rowpipe_testkit::ConsumerProcess {
    let server = dns.addr().to_string();
    app.spawn_consumer(
        CONSUMER_BIN,
        &[
            ("ROWPIPE_CHECK_MAIL_DOMAIN", "mx"),
            ("ROWPIPE_DNS_SERVERS", &server),
            setting,
        ],
    )
}

/// Rows over every kind of domain, through the upload service and a real
/// consumer with the check on: refused domains are rejects with their
/// reason and a suggestion where one fits, failed lookups are stored and
/// counted as unverified, and the counts add up.
async fn the_pipeline_rejects_refused_domains_and_stores_unverified_ones(backend: Backend) {
    let dns = TestDns::start(zones(), 300).await.expect("dns");
    let app = spawn_app(backend).await;
    let mut consumer = checking_consumer(&app, &dns, ("ROWPIPE_DNS_TIMEOUT_MS", "300"));
    let csv = "name,email\n\
               Ann,ann@mx.test\n\
               Bea,bea@address.test\n\
               Cy,cy@nullmx.test\n\
               Di,di@nowhere.test\n\
               Ed,ed@empty.test\n\
               Flo,flo@servfail.test\n\
               Gus,gus@silent.test\n\
               Jane,jane@gmial.com\n\
               Bob,bob@example.con\n\
               Ann Again,ANN@mx.test\n\
               Bad,not-an-email\n\
               Kim,\"kim@gmail,com\"\n";
    let id = app.upload_ok(csv.as_bytes().to_vec()).await;
    let status = app.wait_completed(&id, Duration::from_secs(120)).await;
    let c = &status["counts"];
    assert_eq!(c["read"], 12, "{status}");
    // ann, bea, flo, gus stored; ANN@mx.test a duplicate.
    assert_eq!(c["inserted"], 4, "{status}");
    assert_eq!(c["duplicates"], 1, "{status}");
    assert_eq!(c["rejected"], 7, "{status}");
    assert_eq!(c["rejected_by_reason"]["no_mail_domain"], 5, "{status}");
    assert_eq!(c["unverified"], 2, "{status}");

    let rejects = app.get_text(&format!("/v1/uploads/{id}/rejects")).await;
    let mut lines = rejects.lines();
    assert_eq!(
        lines.next(),
        Some("row_number,reason,message,fields,suggestion")
    );
    let rows: Vec<&str> = lines.collect();
    let row = |n: i64| {
        rows.iter()
            .find(|l| l.starts_with(&format!("{n},")))
            .unwrap_or_else(|| panic!("row {n} in {rejects}"))
            .to_string()
    };
    assert!(row(3).contains("null MX (RFC 7505)"), "{}", row(3));
    assert!(row(4).contains("does not exist (NXDOMAIN)"), "{}", row(4));
    assert!(row(5).contains("no MX record"), "{}", row(5));
    let jane = row(8);
    assert!(
        jane.contains("did you mean jane@gmail.com?") && jane.ends_with(",jane@gmail.com"),
        "{jane}"
    );
    let bob = row(9);
    assert!(bob.ends_with(",bob@example.com"), "{bob}");
    assert!(row(11).starts_with("11,invalid_syntax,"), "{}", row(11));
    assert!(
        row(3).ends_with(','),
        "no suggestion for nullmx.test: {}",
        row(3)
    );
    // Every reject gets a suggestion where one fits, not only DNS ones.
    let kim = row(12);
    assert!(
        kim.starts_with("12,invalid_domain,") && kim.ends_with(",kim@gmail.com"),
        "{kim}"
    );

    let unverified = app.get_text(&format!("/v1/uploads/{id}/unverified")).await;
    let mut lines = unverified.lines();
    assert_eq!(
        lines.next(),
        Some("row_number,reason,message,fields,domain,suggestion")
    );
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 2, "{unverified}");
    assert!(
        rows[0].starts_with("6,dns_server_failure,") && rows[0].contains("servfail.test"),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].starts_with("7,dns_timeout,") && rows[1].contains("silent.test"),
        "{}",
        rows[1]
    );
    // Stored all the same.
    let stored: Vec<String> = app.contacts_dump().await.into_iter().map(|r| r.0).collect();
    assert!(
        stored.contains(&"flo@servfail.test".to_string()),
        "{stored:?}"
    );
    assert!(
        stored.contains(&"gus@silent.test".to_string()),
        "{stored:?}"
    );
    // One lookup per domain: mx.test was asked once for its two rows.
    assert_eq!(dns.queries("mx.test", RecordType::MX), 1);
    app.cleanup_with(std::slice::from_mut(&mut consumer)).await;
}

rowpipe_testkit::on_databases!(the_pipeline_rejects_refused_domains_and_stores_unverified_ones: Sqlite, Postgres, MySql);

/// 100,000 rows over 50 domains, one consumer process with four workers
/// sharing its cache: each domain is looked up once (the TTL is far longer
/// than the run), counted at the DNS server. The throughput with the check
/// on and off is measured by `scripts/bench --mail-domain`.
async fn rows_over_50_domains_cause_one_lookup_per_domain(backend: Backend) {
    const ROWS: usize = 100_000;
    const DOMAINS: usize = 50;
    let domains: Vec<String> = (0..DOMAINS).map(|i| format!("d{i}.example")).collect();
    let dns = TestDns::start(domains.iter().map(|d| (d.clone(), Zone::Mx)), 3600)
        .await
        .expect("dns");
    let app = spawn_app(backend).await;
    let mut consumer = checking_consumer(&app, &dns, ("ROWPIPE_WORKERS", "4"));
    let mut csv = String::from("email\n");
    for i in 0..ROWS {
        csv.push_str(&format!("user{i}@{}\n", domains[i % DOMAINS]));
    }
    let id = app.upload_ok(csv.into_bytes()).await;
    let status = app.wait_completed(&id, Duration::from_secs(300)).await;
    assert_eq!(status["counts"]["inserted"], ROWS as i64, "{status}");
    assert_eq!(status["counts"]["unverified"], 0, "{status}");
    for d in &domains {
        assert_eq!(dns.queries(d, RecordType::MX), 1, "{d}");
        assert_eq!(dns.queries_for(d), 1, "{d}: no address lookups");
    }
    assert_eq!(dns.total_queries(), DOMAINS);
    app.cleanup_with(std::slice::from_mut(&mut consumer)).await;
}

rowpipe_testkit::on_databases!(rows_over_50_domains_cause_one_lookup_per_domain: Sqlite, Postgres, MySql);

/// The store's side: an unverified row is recorded in its batch's
/// transaction and counted once, however often it is delivered, and a
/// redelivery of a row stored verified does not mark it afterwards.
async fn unverified_rows_are_recorded_once_under_redelivery(backend: Backend) {
    use rowpipe_core::deliverability::Unverified;
    let db = rowpipe_testkit::TestDb::create(backend)
        .await
        .expect("test database");
    let store = db.store().await;
    let seq = crate::fixtures::new_upload(&store, "unv").await;
    let mark = |mut r: rowpipe_core::verdict::JudgedRow| {
        r.unverified = Some(Unverified {
            reason: UnverifiedReason::Timeout,
            message: "the DNS lookup of slow.test got no answer within 300 ms".into(),
        });
        r
    };
    let unverified = mark(crate::fixtures::accepted(
        "unv",
        seq,
        1,
        "a@slow.test",
        None,
    ));
    let duplicate = mark(crate::fixtures::accepted(
        "unv",
        seq,
        2,
        "A@slow.test",
        None,
    ));
    let verified = crate::fixtures::accepted("unv", seq, 3, "c@mx.test", None);
    let batch = vec![unverified, duplicate, verified.clone()];
    store.apply_batch(&batch).await.expect("first delivery");
    store.apply_batch(&batch).await.expect("redelivery");
    // Redelivered with a failed lookup this time: already stored verified.
    store
        .apply_batch(&[mark(verified)])
        .await
        .expect("redelivery, now unverified");
    assert_eq!(store.unverified_count("unv").await.expect("count"), 2);
    let rows = store
        .unverified_rows_page("unv", 0, 10)
        .await
        .expect("page");
    let got: Vec<(i64, &str, &str)> = rows
        .iter()
        .map(|r| (r.row_number, r.domain.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "slow.test", "dns_timeout"),
            (2, "slow.test", "dns_timeout")
        ]
    );
    let upload = store.get_upload("unv").await.expect("get").expect("exists");
    assert_eq!(upload.counts.unverified, 2);
    assert_eq!(upload.counts.inserted, 2);
    db.drop_db().await;
}

rowpipe_testkit::on_databases!(unverified_rows_are_recorded_once_under_redelivery: Sqlite, Postgres, MySql);

/// DNS may answer differently when a batch is delivered again: a row an
/// earlier delivery stored stays accepted (its redelivery is then only
/// replayed), while a row nobody stored is rejected as the answer says.
async fn a_redelivered_stored_row_is_not_rejected_by_a_changed_answer(backend: Backend) {
    let dns = TestDns::start(zones(), 300).await.expect("dns");
    let check = check(&dns, &[]);
    let db = rowpipe_testkit::TestDb::create(backend)
        .await
        .expect("test database");
    let store = db.store().await;
    let seq = crate::fixtures::new_upload(&store, "redo").await;
    // Stored by its first delivery (its domain answered then).
    let stored = crate::fixtures::accepted("redo", seq, 1, "ann@gone.test", None);
    store
        .apply_batch(std::slice::from_ref(&stored))
        .await
        .expect("first delivery");
    let fresh = crate::fixtures::accepted("redo", seq, 2, "bob@gone.test", None);
    // gone.test is NXDOMAIN now.
    let mut batch = vec![stored, fresh];
    check.check(&mut batch, Some(&store)).await.expect("check");
    assert!(matches!(
        batch[0].verdict,
        rowpipe_core::verdict::RowVerdict::Accept { .. }
    ));
    assert!(matches!(
        batch[1].verdict,
        rowpipe_core::verdict::RowVerdict::Reject { .. }
    ));
    let outcome = store.apply_batch(&batch).await.expect("redelivery");
    assert_eq!((outcome.replayed, outcome.rejected), (1, 1));
    let counts = store
        .get_upload("redo")
        .await
        .expect("get")
        .expect("exists")
        .counts;
    assert_eq!((counts.inserted, counts.rejected), (1, 1));
    db.drop_db().await;
}

rowpipe_testkit::on_databases!(a_redelivered_stored_row_is_not_rejected_by_a_changed_answer: Sqlite, Postgres, MySql);
