//! The client against the real service on a real redis-server: retries
//! across a Redis pause take effect exactly once, refusals come back at
//! once, and a call ends within its deadline.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use stocklock_client::{RetryPolicy, pb};
use tonic::Code;

fn lock_request(quantity: &str) -> pb::LockRequest {
    pb::LockRequest {
        candidates: None,
        sku: "SKU-1".into(),
        warehouse_id: "WH-A".into(),
        quantity: quantity.into(),
        order_id: "order-1".into(),
        holder: "checkout".into(),
        ttl: Some(pbjson_types::Duration { seconds: 600, nanos: 0 }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_sent_while_redis_is_paused_is_taken_exactly_once() {
    let service = start(RetryPolicy::default()).await;
    stock(&service, "10").await;
    let pid = service.redis.pid().unwrap();
    signal(pid, "-STOP");
    let client = service.client.clone();
    let lock = tokio::spawn(async move { client.lock(lock_request("3")).await });
    // Longer than the store timeout: the first attempts fail, retryable.
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(pid, "-CONT");
    let lock = lock.await.unwrap().expect("the lock went through once Redis answered");
    assert_eq!(lock.lock.unwrap().quantity, "3");
    let record = record(&service).await;
    assert_eq!((record.locked.as_str(), record.live_locks), ("3", 1), "taken once");
}

#[tokio::test]
async fn a_refusal_comes_back_at_once_and_changes_nothing() {
    let service = start(RetryPolicy::default()).await;
    stock(&service, "2").await;
    let started = Instant::now();
    let refused = service.client.lock(lock_request("5")).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "refusal took {:?}", started.elapsed());
    assert_eq!(record(&service).await.locked, "0");
}

#[tokio::test]
async fn a_call_ends_within_its_deadline_while_redis_stays_away() {
    let policy = RetryPolicy { deadline: Duration::from_millis(1500), ..RetryPolicy::default() };
    let service = start(policy).await;
    stock(&service, "10").await;
    let pid = service.redis.pid().unwrap();
    signal(pid, "-STOP");
    let started = Instant::now();
    let failed = service.client.lock(lock_request("1")).await.unwrap_err();
    let took = started.elapsed();
    signal(pid, "-CONT");
    assert!(stocklock_client::transient(&failed), "{failed:?}");
    assert!(took < Duration::from_millis(2500), "the call took {took:?}");
}

/// The gRPC service config for clients in other languages
/// (`client/service-config.json`) retries exactly what this client does,
/// names only unary RPCs of the proto (a 10 s timeout would end a
/// WatchAvailability stream), and is valid JSON.
#[test]
fn the_service_config_matches_the_client_and_the_proto() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("service-config.json")).unwrap()).unwrap();
    let method = &config["methodConfig"][0];
    let codes: Vec<&str> =
        method["retryPolicy"]["retryableStatusCodes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    let by_name = |name: &str| match name {
        "UNAVAILABLE" => Code::Unavailable,
        "DEADLINE_EXCEEDED" => Code::DeadlineExceeded,
        "RESOURCE_EXHAUSTED" => Code::ResourceExhausted,
        "ABORTED" => Code::Aborted,
        other => panic!("unexpected code {other}"),
    };
    for code in &codes {
        assert!(stocklock_client::transient(&tonic::Status::new(by_name(code), "")), "{code}");
    }
    assert_eq!(codes.len(), 4, "every code the client retries");
    let proto = std::fs::read_to_string(root.join("../proto/stocklock/v1/stocklock.proto")).unwrap();
    for name in method["name"].as_array().unwrap() {
        let rpc = name["method"].as_str().unwrap();
        let line = proto.lines().find(|l| l.trim_start().starts_with(&format!("rpc {rpc}("))).unwrap_or_else(|| {
            panic!("{rpc} is not an RPC of the proto");
        });
        assert!(!line.contains("stream"), "{rpc} streams: a call timeout would end it");
    }
}
