//! What any gRPC tool sees: health, reflection, and the embedded default.

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt;
use stocklock::pb::inventory_service_client::InventoryServiceClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn reflection_lists_the_services() {
    let svc = start().await;
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", svc.addr)).unwrap().connect().await.unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["stocklock.v1.InventoryService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
}

#[tokio::test]
async fn without_a_redis_url_the_service_embeds_its_own_redis() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clap_config = {
        use clap::Parser;
        match stocklock::config::Cli::try_parse_from(["stocklock", "serve"]).unwrap().command {
            stocklock::config::Command::Serve(config) => *config,
            _ => unreachable!(),
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(stocklock::server::run(clap_config, listeners(listener).await, async {
        let _ = rx.await;
    }));
    let client: InventoryServiceClient<_> = connect(addr).await;
    let mut client = client;
    let set = client
        .set_stock(stocklock::pb::SetStockRequest {
            sku: "S".into(),
            warehouse_id: "W".into(),
            physical: "3".into(),
            source_version: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(set.into_inner().record.unwrap().available, "3");
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), handle).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn an_invalid_configuration_is_refused_with_a_message() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = config("redis://127.0.0.1:1/", &["--default-ttl", "2h"]);
    let error = stocklock::server::run(config, listeners(listener).await, std::future::pending()).await.unwrap_err();
    assert!(error.to_string().contains("--default-ttl"), "{error}");
}

#[tokio::test]
async fn an_unreachable_redis_fails_start_up_quickly() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = config("redis://127.0.0.1:1/", &["--store-timeout", "200ms"]);
    let started = std::time::Instant::now();
    let error = stocklock::server::run(config, listeners(listener).await, std::future::pending()).await.unwrap_err();
    assert!(error.to_string().contains("127.0.0.1:1"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn data_of_an_older_layout_is_refused_not_misread() {
    let redis = stocklock::embedded_redis::EmbeddedRedis::start(std::path::Path::new("redis-server")).await.unwrap();
    // What the previous layout left: the partition count, no layout version.
    let mut conn = redis::Client::open(redis.url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET").arg("sl:partitions").arg(1).query_async(&mut conn).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let result = stocklock::server::run(config(&redis.url(), &[]), listeners(listener).await, async {}).await;
    let message = result.expect_err("old data is refused").to_string();
    assert!(message.contains("layout 1") && message.contains("--key-prefix"), "{message}");

    // What layouts 2 and 3 left: their version marks.
    for older in ["2", "3"] {
        let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
        let _: () = redis::cmd("SET").arg("sl:layout").arg(older).query_async(&mut conn).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let result = stocklock::server::run(config(&redis.url(), &[]), listeners(listener).await, async {}).await;
        let message = result.expect_err("an older layout is refused").to_string();
        assert!(message.contains(&format!("layout {older}")) && message.contains("(4)"), "{message}");
    }
}
