//! Logs, traces and metrics set-up, the same for every program.
//!
//! * Logs: `RUST_LOG` filters; `ROWPIPE_LOG_FORMAT=json` for collectors.
//! * Traces: exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with
//!   `OTEL_EXPORTER_OTLP_PROTOCOL` = `grpc` (default) or `http/protobuf`.
//!   Sampling follows `OTEL_TRACES_SAMPLER`/`_ARG` (read by the SDK).
//!   With no endpoint, no exporter exists and spans cost next to nothing.
//! * Metrics: one Prometheus recorder per process, rendered by `/metrics`.
//!
//! The W3C trace context travels inside each stream entry; [`inject`] and
//! [`extract`] convert between the current span and those fields.

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::TelemetryConfig;

/// Keeps the trace exporter alive; call [`TelemetryGuard::shutdown`] before
/// exit so buffered spans are flushed (SIGTERM included).
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("trace exporter shutdown: {e}");
        }
    }
}

fn otlp_endpoint_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
        && std::env::var("OTEL_TRACES_EXPORTER").map_or(true, |v| v != "none")
}

fn build_provider(service_name: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
    let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_else(|_| "grpc".into());
    let exporter = match protocol.as_str() {
        "grpc" => SpanExporter::builder().with_tonic().build()?,
        "http/protobuf" => SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .build()?,
        other => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: use grpc or http/protobuf"
        ),
    };
    let name = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service_name.to_string());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// Install logging and tracing for `service_name`. Must run inside a tokio
/// runtime (the gRPC exporter needs one). Call once per process.
pub fn init(service_name: &str, config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    // RUST_LOG filters the logs only: spans for export have their own
    // filter, so quiet logs never switch tracing off, and the exporter's own
    // HTTP/gRPC machinery is never traced into itself.
    let log_filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn,hyper=warn"));
    let trace_filter = EnvFilter::try_from_env("ROWPIPE_TRACE_FILTER").unwrap_or_else(|_| {
        EnvFilter::new(
            "info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,reqwest=off,sqlx=off",
        )
    });
    let fmt_layer = if config.log_format == "json" {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(log_filter)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_filter(log_filter)
            .boxed()
    };
    let (provider, otel_layer) = if otlp_endpoint_configured() {
        let provider = build_provider(service_name)?;
        let tracer = provider.tracer("rowpipe");
        opentelemetry::global::set_tracer_provider(provider.clone());
        (
            Some(provider),
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(trace_filter),
            ),
        )
    } else {
        (None, None)
    };
    tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// The W3C trace-context fields of the current span (empty values dropped).
pub fn inject(span: &tracing::Span) -> Vec<(String, String)> {
    let cx = span.context();
    let mut map: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    let mut out: Vec<(String, String)> = map.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    out.sort();
    out
}

/// Record the span's OpenTelemetry trace and span ids in its `trace_id` and
/// `span_id` fields, so JSON log lines inside it carry them (the span must
/// declare both fields as `Empty`). No-op when tracing is not exported.
pub fn record_trace_ids(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt;
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", sc.trace_id().to_string());
        span.record("span_id", sc.span_id().to_string());
    }
}

/// A context from trace-context fields (an empty context if there are none).
pub fn extract(fields: &[(String, String)]) -> opentelemetry::Context {
    let map: HashMap<String, String> = fields.iter().cloned().collect();
    TraceContextPropagator::new().extract(&map)
}

/// Histogram buckets for durations in seconds (1 ms … 5 min).
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Histogram buckets for batch sizes in rows.
const SIZE_BUCKETS: &[f64] = &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0, 5000.0];

static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus recorder (installed on first use).
pub fn metrics() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_size".into()), SIZE_BUCKETS));
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        // Fails only if another recorder is installed (a test harness); the
        // handle still renders what this recorder records.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// `GET /metrics` body.
pub async fn metrics_endpoint() -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics().render(),
    )
}

/// Install a rustls crypto provider for the whole process (exactly one is
/// compiled in: aws-lc-rs). Call first thing in `main`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
