//! Logs, traces and RPC metrics.
//!
//! - [`init`] installs the log subscriber (text or JSON) and, when the
//!   standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set,
//!   an OpenTelemetry layer exporting spans over OTLP/gRPC. Export runs on the
//!   SDK's batch processor with a bounded queue: a slow or absent collector
//!   costs dropped spans (the SDK counts and logs them), never a slower call.
//! - [`ObserveLayer`] wraps every gRPC service: one span per call (continuing
//!   the caller's W3C `traceparent`), and the call's latency by method and
//!   status code.

use std::task::{Context, Poll};
use std::time::Instant;

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use super::layer::{BoxFuture, take_ready};
use crate::metrics::{METRICS, RpcLabels};

/// Most spans waiting for export; beyond it spans are dropped, not waited for.
const EXPORT_QUEUE: usize = 4096;

/// Keeps the trace exporter alive; dropping it flushes what is queued.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("stocklock: flushing traces failed: {e}");
        }
    }
}

fn otlp_configured() -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| !v.is_empty()))
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs logging and, when configured, trace export. Call once, inside a
/// Tokio runtime.
pub fn init(format: LogFormat) -> Result<TelemetryGuard, String> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).with_filter(filter()).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_filter(filter()).boxed(),
    };
    let provider = if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                opentelemetry_sdk::trace::BatchConfigBuilder::default().with_max_queue_size(EXPORT_QUEUE).build(),
            )
            .build();
        let resource = opentelemetry_sdk::Resource::builder().with_service_name("stocklock").build();
        Some(SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource).build())
    } else {
        None
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let traces = provider.as_ref().map(|p| {
        // Spans only: the OTel layer takes the RPC and Redis spans, not every log line's level.
        tracing_opentelemetry::layer().with_tracer(p.tracer("stocklock")).with_filter(EnvFilter::new("stocklock=debug"))
    });
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| format!("installing the log subscriber: {e}"))?;
    if provider.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    Ok(TelemetryGuard { provider })
}

/// Reads W3C trace context from HTTP/2 headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The tower layer that traces and measures every gRPC call.
#[derive(Clone, Copy, Debug, Default)]
pub struct ObserveLayer;

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner }
    }
}

/// The service [`ObserveLayer`] wraps around each gRPC service.
#[derive(Clone, Debug)]
pub struct Observe<S> {
    inner: S,
}

/// `Service/Method` of a gRPC path, e.g. `InventoryService/Lock`.
fn method_of(path: &str) -> String {
    let path = path.trim_start_matches('/');
    match path.split_once('/') {
        Some((service, method)) => format!("{}/{method}", service.rsplit('.').next().unwrap_or(service)),
        None => path.to_owned(),
    }
}

impl<S, B> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method_of(request.uri().path());
        // Debug level: without a trace exporter (whose layer takes debug
        // spans) the span is disabled and costs nothing on the hot path.
        let span = tracing::debug_span!(
            "rpc",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            sku = tracing::field::Empty,
            warehouse = tracing::field::Empty,
            request_id = tracing::field::Empty,
            lock_id = tracing::field::Empty,
            reason = tracing::field::Empty,
        );
        let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
        let _ = span.set_parent(parent);
        let mut inner = take_ready(&mut self.inner);
        let started = Instant::now();
        Box::pin(
            async move {
                let result = inner.call(request).await;
                if let Ok(response) = &result {
                    // Errors are trailers-only responses, with the status in the
                    // headers; a success sends it in the trailers, after the body.
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
                    let span = tracing::Span::current();
                    span.record("rpc.grpc.status_code", code as i32);
                    METRICS
                        .rpc_duration
                        .get_or_create(&RpcLabels { method, code: format!("{code:?}") })
                        .observe(started.elapsed().as_secs_f64());
                }
                result
            }
            .instrument(span),
        )
    }
}

/// Records request attributes on the current RPC span.
pub fn record_request(sku: &str, warehouse: &str, request_id: &str) {
    let span = tracing::Span::current();
    if !sku.is_empty() {
        span.record("sku", sku);
    }
    if !warehouse.is_empty() {
        span.record("warehouse", warehouse);
    }
    if !request_id.is_empty() {
        span.record("request_id", request_id);
    }
}

#[cfg(test)]
mod tests {
    use super::method_of;

    #[test]
    fn names_methods_without_the_package() {
        assert_eq!(method_of("/stocklock.v1.InventoryService/Lock"), "InventoryService/Lock");
        assert_eq!(method_of("/grpc.health.v1.Health/Check"), "Health/Check");
    }
}
