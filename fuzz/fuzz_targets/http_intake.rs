//! Fuzz the whole HTTP intake: a request's headers and body → the upload
//! service's answer, which must never be a 5xx.
//!
//! The service runs in-process (the real router, state and middleware) on a
//! SQLite database in a temporary directory and the shared Redis (`REDIS_URL`,
//! a fresh stream key, emptied after every input so backpressure never
//! blocks). The first four input bytes pick the request's shape; the rest is
//! the body:
//!   byte 0  the route and method (mostly `POST /v1/uploads`)
//!   byte 1  Content-Type (CSV, multipart with boundary `fz`, gzip, JSON, …)
//!   byte 2  Content-Encoding (none, gzip, zstd, an unknown one)
//!   byte 3  the query string (delimiter, header=false, encoding, columns)
//!           and, bit 7, a tenant's token instead of the operator's
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::Request;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const OPERATOR: &str = "fuzz-operator";
const TENANT: &str = "fuzz-tenant";

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    redis: rowpipe_core::stream::Connection,
    stream: String,
    _dir: std::path::PathBuf,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        rowpipe_core::telemetry::install_crypto_provider();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = std::env::temp_dir().join(format!("rowpipe-fuzz-http-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = format!("sqlite://{}/fuzz.db?mode=rwc", dir.display());
        let redis_url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let stream = format!("rowpipe:fuzz:{}", std::process::id());
        let tokens = format!("{OPERATOR},acme={TENANT}");
        let args = [
            "rowpipe-upload",
            "--database-url",
            &db,
            "--redis-url",
            &redis_url,
            "--stream",
            &stream,
            "--listen",
            "127.0.0.1:0",
            "--auth-tokens",
            &tokens,
            "--max-body-bytes",
            "1048576",
            "--body-idle-timeout-secs",
            "5",
        ];
        let config =
            <rowpipe_upload::config::Config as clap::Parser>::try_parse_from(args).expect("config");
        let (router, redis) = runtime.block_on(async {
            let store = rowpipe_core::store::Store::connect(&config.database)
                .await
                .expect("the fuzz database");
            store.migrate().await.expect("migrate");
            let redis = rowpipe_core::stream::RedisTarget::single(&redis_url)
                .connect()
                .await
                .expect("Redis: set REDIS_URL or start redis-server");
            let (trigger, shutdown) = rowpipe_core::shutdown::channel();
            // Held for the process's life: a dropped trigger is a shutdown.
            std::mem::forget(trigger);
            let app = rowpipe_upload::startup::Application::build(config, shutdown)
                .await
                .expect("the upload service");
            (app.router(), redis)
        });
        Harness {
            runtime,
            router,
            redis,
            stream,
            _dir: dir,
        }
    })
}

const CONTENT_TYPES: [&str; 8] = [
    "text/csv",
    "multipart/form-data; boundary=fz",
    "application/gzip",
    "application/octet-stream",
    "",
    "application/json",
    "text/csv; charset=utf-16",
    "multipart/form-data",
];
const ENCODINGS: [&str; 5] = ["", "gzip", "zstd", "br", "identity"];
const QUERIES: [&str; 8] = [
    "",
    "?delimiter=%3B",
    "?header=false",
    "?encoding=latin1",
    "?email_column=2&name_column=1",
    "?filename=f%00.csv",
    "?delimiter=xx",
    "?encoding=nope",
];

fuzz_target!(|data: &[u8]| {
    let [route, ct, enc, query, body @ ..] = data else {
        return;
    };
    let h = harness();
    let token = if query & 0x80 != 0 { TENANT } else { OPERATOR };
    let query = QUERIES[usize::from(query & 7)];
    let (method, uri) = match route % 8 {
        0..=4 => ("POST", format!("/v1/uploads{query}")),
        5 => ("GET", "/v1/uploads?limit=3".to_string()),
        6 => ("GET", "/v1/uploads/0190-nope/rejects".to_string()),
        _ => ("GET", "/v1/uploads/0190-nope".to_string()),
    };
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"));
    let content_type = CONTENT_TYPES[usize::from(*ct) % CONTENT_TYPES.len()];
    if !content_type.is_empty() {
        request = request.header("content-type", content_type);
    }
    let encoding = ENCODINGS[usize::from(*enc) % ENCODINGS.len()];
    if !encoding.is_empty() {
        request = request.header("content-encoding", encoding);
    }
    if enc & 0x80 != 0 {
        request = request.header("idempotency-key", format!("fz-{}", body.len() % 7));
    }
    let request = request.body(Body::from(body.to_vec())).expect("a request");
    let status = h.runtime.block_on(async {
        let response = h.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        // Read the answer to its end, as a client would.
        let _ = axum::body::to_bytes(response.into_body(), 1 << 20).await;
        // No consumer runs: empty the stream so backpressure never waits.
        let mut con = h.redis.clone();
        let _: redis::RedisResult<()> = redis::cmd("XTRIM")
            .arg(&h.stream)
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut con)
            .await;
        let _: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("SETID")
            .arg(&h.stream)
            .arg("rowpipe-consumers")
            .arg("$")
            .query_async(&mut con)
            .await;
        status
    });
    assert!(
        !status.is_server_error(),
        "{method} {content_type:?} {encoding:?} {query:?} answered {status}"
    );
});
