//! The client's test harness: a redis-server and a stocklock on it, on free
//! ports, that a test can stop and start again on the same address.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use stocklock::config::{Cli, Command};
use stocklock::embedded_redis::EmbeddedRedis;
use stocklock_client::{Client, RetryPolicy, pb};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;

/// A running service: what stops it, and what it returns.
type Running = (oneshot::Sender<()>, JoinHandle<Result<(), stocklock::server::RunError>>);

/// A redis-server and a stocklock on it (stopped when dropped).
pub struct Service {
    pub redis: EmbeddedRedis,
    pub client: Client,
    pub addr: SocketAddr,
    running: Option<Running>,
}

pub async fn start(policy: RetryPolicy) -> Service {
    let redis = EmbeddedRedis::start(Path::new("redis-server")).await.expect("redis-server starts");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let running = Some(serve(&redis.url(), grpc).await);
    let client = loop {
        if let Ok(client) = Client::connect(format!("http://{addr}")).await {
            let ready = client.get_availability(pb::GetAvailabilityRequest { sku: "-".into(), ..Default::default() });
            if !matches!(ready.await, Err(s) if s.code() == Code::Unavailable) {
                break client.with_policy(policy);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    Service { redis, client, addr, running }
}

async fn serve(redis_url: &str, grpc: tokio::net::TcpListener) -> Running {
    let args = [
        "stocklock",
        "serve",
        "--redis-url",
        redis_url,
        "--listen",
        "127.0.0.1:0",
        "--store-timeout",
        "200ms",
        "--min-ttl",
        "100ms",
        "--sweep-interval",
        "100ms",
    ];
    let Command::Serve(config) = Cli::try_parse_from(args).unwrap().command else { unreachable!("serve") };
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (shutdown, stop) = oneshot::channel::<()>();
    let listeners = stocklock::server::Listeners { grpc, http };
    let handle = tokio::spawn(stocklock::server::run(*config, listeners, async {
        let _ = stop.await;
    }));
    (shutdown, handle)
}

impl Service {
    /// Stops the service (Redis stays) and waits for it to exit.
    pub async fn stop(&mut self) {
        let (shutdown, handle) = self.running.take().expect("the service runs");
        let _ = shutdown.send(());
        handle.await.unwrap().unwrap();
    }

    /// Starts the service again on the same address.
    pub async fn restart(&mut self) {
        let grpc = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.running = Some(serve(&self.redis.url(), grpc).await);
    }
}

pub fn signal(pid: u32, sig: &str) {
    assert!(std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

pub async fn stock(service: &Service, physical: &str) {
    let request = pb::SetStockRequest {
        sku: "SKU-1".into(),
        warehouse_id: "WH-A".into(),
        physical: physical.into(),
        source_version: 1,
        ..Default::default()
    };
    service.client.set_stock(request).await.unwrap();
}

pub async fn record(service: &Service) -> pb::StockRecord {
    let request = pb::GetAvailabilityRequest { sku: "SKU-1".into(), warehouse_id: "WH-A".into() };
    service.client.get_availability(request).await.unwrap().records.remove(0)
}

/// Waits up to `limit` for `check` to hold.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while started.elapsed() < limit {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
