//! Traces and metrics, end to end. A binary of its own because it installs
//! the process-wide tracing subscriber and Prometheus recorder, which would
//! otherwise mix with the other tests' uploads.
//!
//! A real OTLP/HTTP receiver runs inside the test and decodes what the
//! upload service (in-process) and two consumer processes export.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message;
use rowpipe_testkit::{Backend, generate_contacts, spawn_app};

const CONSUMER_BIN: &str = env!("CARGO_BIN_EXE_rowpipe-consumer");

type Received = Arc<Mutex<Vec<(String, Span)>>>;

async fn receive(State(spans): State<Received>, body: Bytes) -> Vec<u8> {
    if let Ok(req) = ExportTraceServiceRequest::decode(body) {
        store(&spans, req, "http");
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// The same receiver over gRPC (the exporter's default protocol).
struct GrpcReceiver(Received);

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        store(&self.0, request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Keep every span with its service name (suffixed with the protocol it came by).
fn store(spans: &Received, req: ExportTraceServiceRequest, protocol: &str) {
    {
        let mut out = spans.lock().expect("lock");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
                .and_then(|a| a.value.as_ref())
                .map(text)
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push((format!("{service}/{protocol}"), span));
                }
            }
        }
    }
}

fn text(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        _ => String::new(),
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .map(text)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Every non-comment line is `name{labels} value`; returns name+labels → value.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(
                rest.starts_with("TYPE ") || rest.starts_with("HELP "),
                "bad comment line {line:?}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "unclosed labels in {line:?}");
        }
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        out.insert(series.to_string(), v);
    }
    out
}

fn sum(metrics: &[HashMap<String, f64>], prefix: &str) -> f64 {
    metrics
        .iter()
        .flat_map(|m| m.iter())
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| *v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_row_can_be_followed_from_upload_to_insert_and_metrics_match_the_counts() {
    let spans: Received = Arc::default();
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!(
        "http://127.0.0.1:{}",
        receiver.local_addr().expect("addr").port()
    );
    let router = axum::Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    tokio::spawn(async move { axum::serve(receiver, router).await });
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let grpc_endpoint = format!(
        "http://127.0.0.1:{}",
        grpc_listener.local_addr().expect("addr").port()
    );
    let grpc_spans = spans.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(GrpcReceiver(grpc_spans)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(grpc_listener))
            .await
    });

    // The in-process upload service exports through the same standard variables.
    // SAFETY: set before any other thread of this test binary reads the environment.
    unsafe {
        std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint);
        std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
        std::env::set_var("OTEL_SERVICE_NAME", "rowpipe-upload");
    }
    let telemetry = rowpipe_core::telemetry::init(
        "rowpipe-upload",
        &rowpipe_core::config::TelemetryConfig {
            log_format: "json".into(),
        },
    )
    .expect("telemetry");

    let app = spawn_app(Backend::Sqlite).await;
    let ports = [free_port(), free_port()];
    // One consumer exports over http/protobuf, the other over gRPC.
    let mut consumers: Vec<_> = ports
        .iter()
        .zip([
            (endpoint.as_str(), "http/protobuf"),
            (grpc_endpoint.as_str(), "grpc"),
        ])
        .map(|(p, (otlp, protocol))| {
            let listen = format!("127.0.0.1:{p}");
            app.spawn_consumer(
                CONSUMER_BIN,
                &[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
                    ("OTEL_SERVICE_NAME", "rowpipe-consumer"),
                    ("ROWPIPE_METRICS_LISTEN", listen.as_str()),
                ],
            )
        })
        .collect();
    let file = generate_contacts(3_000, 10, 3, 11);
    let id = app.upload_ok(file.csv.clone()).await;
    let status = app.wait_completed(&id, Duration::from_secs(120)).await;

    // Metrics: both programs' /metrics parse, and the counters match the upload.
    let upload_metrics = parse_exposition(
        &app.client
            .get(format!("{}/metrics", app.address))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text"),
    );
    let mut consumer_metrics = Vec::new();
    for p in ports {
        let text = app
            .client
            .get(format!("http://127.0.0.1:{p}/metrics"))
            .send()
            .await
            .expect("consumer metrics")
            .text()
            .await
            .expect("text");
        consumer_metrics.push(parse_exposition(&text));
    }
    // A row counted twice would also let the upload complete early.
    rowpipe_testkit::assert_every_row_counted_once(&status, 3_000);
    let c = &status["counts"];
    assert_eq!(
        upload_metrics
            .get("rowpipe_upload_rows_enqueued_total")
            .copied(),
        Some(3_000.0)
    );
    assert_eq!(
        sum(&consumer_metrics, "rowpipe_consumer_rows_inserted_total"),
        c["inserted"].as_f64().unwrap_or(-1.0)
    );
    assert_eq!(
        sum(&consumer_metrics, "rowpipe_consumer_rows_duplicate_total"),
        c["duplicates"].as_f64().unwrap_or(-1.0)
    );
    assert_eq!(
        sum(&consumer_metrics, "rowpipe_consumer_rows_rejected_total"),
        c["rejected"].as_f64().unwrap_or(-1.0)
    );
    assert_eq!(
        sum(&consumer_metrics, "rowpipe_consumer_rows_processed_total"),
        3_000.0
    );
    assert!(
        upload_metrics
            .keys()
            .any(|k| k.starts_with("rowpipe_upload_duration_seconds_bucket"))
    );

    // Traces: flush everything, then follow one row.
    for consumer in &consumers {
        consumer.sigterm();
    }
    for consumer in consumers.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(25), consumer.wait()).await;
    }
    telemetry.shutdown();
    let spans = spans.lock().expect("lock").clone();
    let row: i64 = 1_234;
    let server = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| {
            s.kind == SpanKind::Server as i32
                && attr(s, "rowpipe.upload_id").as_deref() == Some(id.as_str())
        })
        .expect("the upload's server span");
    let in_range = |s: &Span| {
        let start: i64 = attr(s, "rowpipe.row_number_start")
            .and_then(|v| v.parse().ok())
            .unwrap_or(i64::MAX);
        let end: i64 = attr(s, "rowpipe.row_number_end")
            .and_then(|v| v.parse().ok())
            .unwrap_or(i64::MIN);
        start <= row && row <= end && attr(s, "rowpipe.upload_id").as_deref() == Some(id.as_str())
    };
    let producer = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.kind == SpanKind::Producer as i32 && in_range(s))
        .expect("a producer span covering the row");
    assert_eq!(
        producer.trace_id, server.trace_id,
        "producer span is in the upload's trace"
    );
    assert_eq!(
        producer.parent_span_id, server.span_id,
        "producer span is a child of the server span"
    );
    assert_eq!(attr(producer, "messaging.system").as_deref(), Some("redis"));
    let consumer = spans
        .iter()
        .filter(|(service, _)| service.starts_with("rowpipe-consumer/"))
        .map(|(_, s)| s)
        .find(|s| {
            s.kind == SpanKind::Consumer as i32
                && in_range(s)
                && s.links.iter().any(|l| l.span_id == producer.span_id && l.trace_id == producer.trace_id)
        })
        .unwrap_or_else(|| {
            let summary: Vec<String> = spans
                .iter()
                .filter(|(service, _)| service.starts_with("rowpipe-consumer/"))
                .map(|(_, s)| format!("{} kind={} start={:?} end={:?} links={}", s.name, s.kind, attr(s, "rowpipe.row_number_start"), attr(s, "rowpipe.row_number_end"), s.links.len()))
                .take(20)
                .collect();
            panic!("no consumer span linked to the producer span and covering row {row}; consumer spans: {summary:#?}")
        });
    assert_eq!(
        attr(consumer, "messaging.destination.name").as_deref(),
        Some(app.stream.as_str())
    );
    let db = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.kind == SpanKind::Client as i32 && s.parent_span_id == consumer.span_id)
        .expect("a database span under the consumer span");
    assert_eq!(attr(db, "db.system.name").as_deref(), Some("sqlite"));
    assert_eq!(attr(db, "db.operation.name").as_deref(), Some("INSERT"));
    let per_trace = spans
        .iter()
        .filter(|(_, s)| s.trace_id == server.trace_id)
        .count();
    assert!(
        per_trace < 50,
        "the upload's trace stays small: {per_trace} spans"
    );
    app.cleanup().await;
}
