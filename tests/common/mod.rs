//! Test harness: every test gets its own redis-server (on a free port) and
//! its own stocklock, started through the same `server::run` as the binary,
//! on port 0. Dropping the [`TestService`] stops both.
//!
//! With `STOCKLOCK_TEST_REDIS=cluster`, [`start`] gives each test its own
//! three-primary Redis Cluster instead, and the service runs in cluster
//! mode over 16 partitions: the same tests, across shards.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use stocklock::config::{Cli, Command, ServeConfig};
use stocklock::embedded_redis::EmbeddedRedis;
use stocklock::pb;
use stocklock::pb::inventory_service_client::InventoryServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub type Client = InventoryServiceClient<Channel>;

pub struct TestService {
    pub client: Client,
    pub redis: Option<EmbeddedRedis>,
    pub cluster: Option<Cluster>,
    pub addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    pub redis_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), stocklock::server::RunError>>>,
}

pub fn config(redis_url: &str, extra: &[&str]) -> ServeConfig {
    let mut args = vec!["stocklock", "serve", "--redis-url", redis_url, "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    match Cli::try_parse_from(args).expect("test config parses").command {
        Command::Serve(config) => *config,
        _ => unreachable!("parsed serve"),
    }
}

/// A fresh Redis and a service on it.
pub async fn start() -> TestService {
    start_with(&[]).await
}

/// A fresh Redis and a service on it, with extra `serve` flags.
pub async fn start_with(extra: &[&str]) -> TestService {
    if std::env::var("STOCKLOCK_TEST_REDIS").as_deref() == Ok("cluster") {
        let cluster = Cluster::start(3, 0).await;
        let mut args = vec!["--redis-mode", "cluster"];
        args.extend_from_slice(extra);
        let mut service = serve(&cluster.urls(), &args).await;
        service.cluster = Some(cluster);
        return service;
    }
    let redis = EmbeddedRedis::start(Path::new("redis-server")).await.expect("redis-server starts (is it installed?)");
    let mut service = serve(&redis.url(), extra).await;
    service.redis = Some(redis);
    service
}

/// A service on an existing Redis.
pub async fn serve(redis_url: &str, extra: &[&str]) -> TestService {
    let config = config(redis_url, extra);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listeners = listeners(listener).await;
    let http_addr = listeners.http.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let handle = tokio::spawn(stocklock::server::run(config, listeners, async {
        let _ = rx.await;
    }));
    let client = connect(addr).await;
    TestService {
        client,
        redis: None,
        cluster: None,
        addr,
        http_addr,
        redis_url: redis_url.to_owned(),
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

/// The gRPC listener given, and an HTTP one on a free port.
pub async fn listeners(grpc: tokio::net::TcpListener) -> stocklock::server::Listeners {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    stocklock::server::Listeners { grpc, http }
}

pub async fn connect(addr: std::net::SocketAddr) -> Client {
    let endpoint = Channel::from_shared(format!("http://{addr}")).unwrap().timeout(Duration::from_secs(5));
    for _ in 0..200 {
        if let Ok(channel) = endpoint.connect().await {
            // The listener accepts before the service is wired; wait for health.
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
            let request = tonic_health::pb::HealthCheckRequest { service: String::new() };
            if health.check(request).await.is_ok() {
                return InventoryServiceClient::new(channel);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("stocklock did not come up on {addr}");
}

impl TestService {
    /// Stops the service and waits for it to exit.
    pub async fn stop(mut self) -> Result<(), stocklock::server::RunError> {
        let _ = self.shutdown.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap()
    }

    /// A raw Redis connection to the service's Redis (or cluster), for looking behind the API.
    pub async fn redis_conn(&self) -> RawConn {
        if self.cluster.is_some() {
            let nodes: Vec<&str> = self.redis_url.split(',').collect();
            let client = redis::cluster::ClusterClient::new(nodes).unwrap();
            return RawConn::Cluster(client.get_async_connection().await.unwrap());
        }
        let client = redis::Client::open(self.redis_url.as_str()).unwrap();
        RawConn::Single(client.get_multiplexed_async_connection().await.unwrap())
    }

    /// Stops the service's Redis (every node of a cluster).
    pub async fn stop_redis(&mut self) {
        match (self.redis.take(), self.cluster.take()) {
            (Some(redis), _) => redis.stop().await.unwrap(),
            (None, Some(cluster)) => drop(cluster),
            (None, None) => panic!("no Redis to stop"),
        }
    }

    /// The service's keys: one partition on one Redis, 16 on a cluster.
    pub fn keys(&self) -> stocklock::store::redis::Keys {
        stocklock::store::redis::Keys::new("sl", if self.cluster.is_some() { 16 } else { 1 })
    }

    /// The keys of a record.
    pub fn record_keys(&self, sku: &str, warehouse: &str) -> stocklock::store::redis::RecordKeys {
        self.keys().record(&stocklock::domain::RecordKey::parse_id(&format!("{sku}|{warehouse}")).unwrap())
    }

    /// The partition of `sku`.
    pub fn partition(&self, sku: &str) -> usize {
        self.keys().partition_of(&stocklock::domain::Sku::parse(sku, "sku").unwrap())
    }

    /// Sets a record's stock with a fresh source_version.
    pub async fn stock(&self, sku: &str, warehouse: &str, physical: &str) -> pb::StockRecord {
        self.stock_scaled(sku, warehouse, physical, 0).await
    }

    pub async fn stock_scaled(&self, sku: &str, warehouse: &str, physical: &str, unit_scale: u32) -> pb::StockRecord {
        let version =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 / 1000;
        self.client
            .clone()
            .set_stock(pb::SetStockRequest {
                sku: sku.into(),
                warehouse_id: warehouse.into(),
                physical: physical.into(),
                unit_scale,
                source_version: version,
                ..Default::default()
            })
            .await
            .expect("set_stock")
            .into_inner()
            .record
            .unwrap()
    }

    pub async fn record(&self, sku: &str, warehouse: &str) -> pb::StockRecord {
        let response = self
            .client
            .clone()
            .get_availability(pb::GetAvailabilityRequest { sku: sku.into(), warehouse_id: warehouse.into() })
            .await
            .expect("get_availability")
            .into_inner();
        response.records.into_iter().next().unwrap()
    }

    pub async fn available(&self, sku: &str, warehouse: &str) -> String {
        self.record(sku, warehouse).await.available
    }

    pub async fn lock(
        &self,
        sku: &str,
        warehouse: &str,
        quantity: &str,
        request_id: &str,
    ) -> Result<pb::LockResponse, Status> {
        self.client.clone().lock(lock_request(sku, warehouse, quantity, request_id)).await.map(|r| r.into_inner())
    }

    pub async fn release(&self, lock_id: &str, request_id: &str) -> Result<pb::ReleaseResponse, Status> {
        self.client
            .clone()
            .release(pb::ReleaseRequest {
                lock_id: lock_id.into(),
                request_id: request_id.into(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

pub fn lock_request(sku: &str, warehouse: &str, quantity: &str, request_id: &str) -> pb::LockRequest {
    pb::LockRequest {
        sku: sku.into(),
        warehouse_id: warehouse.into(),
        quantity: quantity.into(),
        ttl: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
        order_id: format!("order-{request_id}"),
        request_id: request_id.into(),
        holder: "order-service".into(),
    }
}

pub fn batch_line(sku: &str, warehouse: &str, quantity: &str) -> pb::BatchLockLine {
    pb::BatchLockLine { sku: sku.into(), warehouse_id: warehouse.into(), quantity: quantity.into() }
}

/// A BatchLock of `lines` by order-service for order-1, TTL 60 s.
pub fn batch(lines: Vec<pb::BatchLockLine>, request_id: &str) -> pb::BatchLockRequest {
    pb::BatchLockRequest {
        lines,
        ttl: secs(60),
        order_id: "order-1".into(),
        request_id: request_id.into(),
        holder: "order-service".into(),
    }
}

pub fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

pub fn millis(ms: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

/// The ErrorInfo reason of a status; panics when there is none.
pub fn reason(status: &Status) -> String {
    let info = status.get_details_error_info().unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "stocklock.v1");
    info.reason
}

/// Asserts the code and reason of a failed call, and returns the status.
#[track_caller]
pub fn expect_error<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, expected_reason: &str) -> Status {
    let status = result.expect_err("the call should have failed");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(&status), expected_reason, "{status:?}");
    status
}

/// The BadRequest field violations of a status.
pub fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub type AuthedChannel = tonic::service::interceptor::InterceptedService<Channel, Bearer>;

/// The tokens of the test token file: `<role>-token-0123456789` for principals
/// checkout (service), other-service (service), transfer (reader), alice and
/// bob (operator) and root (admin).
pub const TOKENS: &str = "\
checkout-token-0123456789  checkout       service
other-token-0123456789     other-service  service
transfer-token-0123456789  transfer       reader
alice-token-0123456789     alice          operator
bob-token-0123456789       bob            operator
root-token-0123456789      root           admin
";

/// A fresh token file with `content`.
pub fn token_file(content: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("stocklock-tokens-{:016x}", rand_u64()));
    std::fs::write(&path, content).unwrap();
    path
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish()
}

/// A fresh Redis and a service with authentication on (the [`TOKENS`] file).
pub async fn start_authed(extra: &[&str]) -> TestService {
    let path = token_file(TOKENS);
    let mut args = vec!["--auth-tokens", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    start_with(&args).await
}

impl TestService {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    /// An InventoryService client sending `token` (None: no authorization).
    pub async fn inventory_as(&self, token: Option<&str>) -> InventoryServiceClient<AuthedChannel> {
        let value = token.map(|t| format!("Bearer {t}").parse().unwrap());
        InventoryServiceClient::with_interceptor(self.channel().await, Bearer(value))
    }

    /// An AdminService client sending `token`.
    pub async fn admin_as(&self, token: Option<&str>) -> pb::admin_service_client::AdminServiceClient<AuthedChannel> {
        let value = token.map(|t| format!("Bearer {t}").parse().unwrap());
        pb::admin_service_client::AdminServiceClient::with_interceptor(self.channel().await, Bearer(value))
    }

    /// An AdminService client without credentials (authentication off).
    pub async fn admin(&self) -> pb::admin_service_client::AdminServiceClient<Channel> {
        pb::admin_service_client::AdminServiceClient::new(self.channel().await)
    }
}

/// A plain HTTP/1.1 GET: (status, body as JSON, raw headers).
pub async fn http_get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, serde_json::Value, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: stocklock\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    (status, json, head.to_owned())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else { return out };
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
}

/// Appends an entry to a stream of the service's Redis.
pub async fn xadd(svc: &TestService, stream: &str, fields: &[(&str, &str)]) -> String {
    let mut conn = svc.redis_conn().await;
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query_async(&mut conn).await.unwrap()
}

/// A raw connection to one Redis or to a cluster.
#[derive(Clone)]
pub enum RawConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RawConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// A Redis Cluster of `redis-server --cluster-enabled yes` nodes on
/// loopback, made with `redis-cli --cluster create`; stopped on drop.
pub struct Cluster {
    pub nodes: Vec<EmbeddedRedis>,
}

impl Cluster {
    /// `primaries` primaries with the slots split evenly, each with
    /// `replicas` replicas that the cluster promotes when it fails.
    pub async fn start(primaries: usize, replicas: usize) -> Self {
        let mut nodes = Vec::with_capacity(primaries * (1 + replicas));
        while nodes.len() < primaries * (1 + replicas) {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let conf = format!("stocklock-nodes-{port}-{}.conf", std::process::id());
            let args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &conf,
                "--cluster-node-timeout",
                "2000",
                // Replicas sync at once, not after the default 5 s wait for company.
                "--repl-diskless-sync-delay",
                "0",
            ];
            // A port taken between the probe and the bind: try another.
            if let Ok(node) = EmbeddedRedis::start_on(Path::new("redis-server"), port, &args).await {
                nodes.push(node);
            }
        }
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let output = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli runs (apt-get install redis-tools)");
        assert!(output.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&output.stdout));
        let cluster = Self { nodes };
        for node in &cluster.nodes {
            let port = node.port();
            let ok = eventually(Duration::from_secs(20), || async move {
                let info = node_command(port, redis::cmd("CLUSTER").arg("INFO")).await;
                matches!(info, Ok(redis::Value::VerbatimString { ref text, .. }) if text.contains("cluster_state:ok"))
                    || matches!(info, Ok(redis::Value::BulkString(ref b)) if String::from_utf8_lossy(b).contains("cluster_state:ok"))
            })
            .await;
            assert!(ok, "cluster node {port} did not reach cluster_state:ok");
        }
        cluster
    }

    /// The nodes' URLs, comma-separated, as `--redis-url` takes them.
    pub fn urls(&self) -> String {
        self.nodes.iter().map(EmbeddedRedis::url).collect::<Vec<_>>().join(",")
    }

    /// The port of the node that serves `slot`.
    /// (As the first node that answers sees it: a test may have killed some.)
    pub async fn owner_of(&self, slot: u16) -> u16 {
        for node in &self.nodes {
            let Ok(slots) = node_command(node.port(), redis::cmd("CLUSTER").arg("SLOTS")).await else { continue };
            let ranges: Vec<(u16, u16, (String, u16))> = redis::from_redis_value(trim_slots(slots)).unwrap();
            return ranges
                .into_iter()
                .find(|(low, high, _)| (*low..=*high).contains(&slot))
                .map(|(_, _, (_, port))| port)
                .unwrap();
        }
        panic!("no cluster node answers");
    }
}

/// CLUSTER SLOTS entries cut to (low, high, (host, port)) of the primary.
fn trim_slots(slots: redis::Value) -> redis::Value {
    let redis::Value::Array(entries) = slots else { panic!("CLUSTER SLOTS: {slots:?}") };
    redis::Value::Array(
        entries
            .into_iter()
            .map(|entry| {
                let redis::Value::Array(mut fields) = entry else { panic!("CLUSTER SLOTS entry") };
                let redis::Value::Array(mut primary) = fields.remove(2) else { panic!("CLUSTER SLOTS primary") };
                primary.truncate(2);
                fields.truncate(2);
                fields.push(redis::Value::Array(primary));
                redis::Value::Array(fields)
            })
            .collect(),
    )
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            let _ = std::fs::remove_file(std::env::temp_dir().join(format!(
                "stocklock-nodes-{}-{}.conf",
                node.port(),
                std::process::id()
            )));
        }
    }
}

/// One command to one node, outside the cluster client.
pub async fn node_command(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<redis::Value> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await?;
    cmd.query_async(&mut conn).await
}

/// Sends `sig` (e.g. "-STOP", "-KILL") to process `pid`, such as a test's redis-server.
pub fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
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

/// Scrapes /metrics into `name{labels}` -> value.
pub async fn scrape(svc: &TestService) -> std::collections::HashMap<String, f64> {
    let (status, body, _) = http_get(svc.http_addr, "/metrics", None).await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("metrics are text").to_owned();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(f64::NAN))))
        .collect()
}

/// Start (ms since the epoch) of the hour `hours_ago` hours before this one.
pub fn hour_start(hours_ago: i64) -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    now - now.rem_euclid(3_600_000) - hours_ago * 3_600_000
}

/// Sets a record's stock as the admin principal of the [`TOKENS`] file.
pub async fn stock_as_root(
    client: &mut InventoryServiceClient<AuthedChannel>,
    sku: &str,
    warehouse: &str,
    physical: &str,
) {
    let request = pb::SetStockRequest {
        sku: sku.into(),
        warehouse_id: warehouse.into(),
        physical: physical.into(),
        source_version: 1,
        ..Default::default()
    };
    client.set_stock(request).await.expect("set_stock as root");
}

/// Force-unlocks `target` with authentication off: alice requests, bob approves.
pub async fn force_unlock(svc: &TestService, target: pb::lock_selector::Target) {
    let mut admin = svc.admin().await;
    let request = pb::RequestForceUnlockRequest {
        selector: Some(pb::LockSelector { target: Some(target) }),
        reason: "test".into(),
        request_id: "fu".into(),
        operator: "alice".into(),
    };
    let pending = admin.request_force_unlock(request).await.unwrap().into_inner().request.unwrap();
    let approve = pb::ApproveForceUnlockRequest {
        id: pending.id,
        comment: String::new(),
        request_id: "ap".into(),
        operator: "bob".into(),
    };
    admin.approve_force_unlock(approve).await.unwrap();
}
