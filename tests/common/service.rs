//! The service under test: a fresh Redis (or Redis Cluster) and a stocklock
//! on it, started through `server::run` on port 0, and its clients.

use super::*;

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
    let mut handle = tokio::spawn(stocklock::server::run(config, listeners, async {
        let _ = rx.await;
    }));
    // Up: it answers health. Or it stopped: say why, at once.
    let client = tokio::select! {
        client = connect(addr) => client,
        ended = &mut handle => panic!("stocklock on {addr} stopped before it served: {ended:?}"),
    };
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
    // Generous: a loaded 2-core machine may take seconds to start a cluster's service.
    for _ in 0..1200 {
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

    /// The keys of a record, one per lock shard (the stock hash is the
    /// same in each).
    pub fn record_keys(&self, sku: &str, warehouse: &str) -> Vec<stocklock::store::redis::RecordKeys> {
        let record = stocklock::domain::RecordKey::parse_id(&format!("{sku}|{warehouse}")).unwrap();
        (0..stocklock::store::redis::LOCK_SHARDS).map(|shard| self.keys().record(&record, shard)).collect()
    }

    /// A record's stock hash.
    pub fn stock_key(&self, sku: &str, warehouse: &str) -> String {
        self.record_keys(sku, warehouse).swap_remove(0).stock
    }

    /// The keys of the record shard of the lock `lock_id`.
    pub fn lock_keys(&self, lock_id: &str) -> stocklock::store::redis::RecordKeys {
        let id = stocklock::domain::LockId::parse(lock_id, "lock_id").unwrap();
        self.keys().lock_record(&id.record, id.token)
    }

    /// Every packed lock of a record, over its shards, read behind the service.
    pub async fn packed_locks(&self, sku: &str, warehouse: &str) -> Vec<String> {
        let mut conn = self.redis_conn().await;
        let mut all = Vec::new();
        for keys in self.record_keys(sku, warehouse) {
            let values: Vec<String> = redis::cmd("HVALS").arg(&keys.locks).query_async(&mut conn).await.unwrap();
            all.extend(values);
        }
        all
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
