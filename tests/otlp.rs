//! Trace export: the binary, started with the standard OTLP variables, sends
//! its spans to a collector (a minimal one here), continuing the caller's
//! W3C trace context.

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use stocklock::pb;
use tokio_stream::wrappers::TcpListenerStream;

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        self.0.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_the_callers_trace_as_parent() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);

    let redis = stocklock::embedded_redis::EmbeddedRedis::start(std::path::Path::new("redis-server")).await.unwrap();
    let grpc = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let _service = tokio::process::Command::new(env!("CARGO_BIN_EXE_stocklock"))
        .args(["serve", "--redis-url", &redis.url(), "--listen", &grpc.to_string(), "--http-listen", &http.to_string()])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{collector_addr}"))
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut client = connect(grpc).await;
    client
        .set_stock(pb::SetStockRequest {
            sku: "S".into(),
            warehouse_id: "W".into(),
            physical: "5".into(),
            source_version: 1,
            ..Default::default()
        })
        .await
        .unwrap();

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let parent_id = "b7ad6b7169203331";
    let mut request = tonic::Request::new(lock_request("S", "W", "1", "traced"));
    request.metadata_mut().insert("traceparent", format!("00-{trace_id}-{parent_id}-01").parse().unwrap());
    client.lock(request).await.unwrap();

    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let find = || {
        let spans = collector.0.lock().unwrap().clone();
        let rpc = spans.iter().find(|s| hex(&s.trace_id) == trace_id && s.name == "InventoryService/Lock")?.clone();
        let redis = spans.iter().find(|s| s.parent_span_id == rpc.span_id && s.name == "lock")?.clone();
        Some((rpc, redis))
    };
    let mut found = None;
    for _ in 0..100 {
        found = find();
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (rpc, redis_span) = found.expect("the Lock span and its Redis child reached the collector");
    assert_eq!(hex(&rpc.parent_span_id), parent_id, "the caller's span is the parent");
    assert_eq!(hex(&redis_span.trace_id), trace_id);
    let attribute = |span: &Span, key: &str| {
        span.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.clone())
            .and_then(|v| v.value)
            .map(|v| format!("{v:?}"))
    };
    assert!(attribute(&rpc, "request_id").is_some_and(|v| v.contains("traced")), "{:?}", rpc.attributes);
    assert!(attribute(&rpc, "sku").is_some_and(|v| v.contains('S')), "{:?}", rpc.attributes);
}
