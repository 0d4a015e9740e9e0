//! Wires the service together and runs it until shutdown: Redis (given or
//! embedded), scripts, health, reflection, the sweeper, and graceful drain.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::{RedisMode, ServeConfig};
use crate::domain::{Error, EventHub, StockStore};
use crate::edge::admission::{Admission, AdmissionLayer};
use crate::edge::auth::{Access, AccessLayer, Authenticator};
use crate::embedded_redis::EmbeddedRedis;
use crate::grpc::admin::ForceUnlockPolicy;
use crate::grpc::{AdminApi, InventoryApi};
use crate::http::HttpState;
use crate::pb;
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::inventory_service_server::InventoryServiceServer;
use crate::store::redis::{DurabilitySettings, IngestSettings, RedisSettings, RedisStore, Topology};
use crate::workers::sweeper;

/// How often health checks Redis.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A configuration error, with what to change.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The embedded redis-server did not start.
    #[error("embedded Redis: {0}")]
    EmbeddedRedis(#[from] std::io::Error),
    /// Redis could not be reached or the scripts not loaded.
    #[error("Redis at {url}: {source}")]
    Store {
        /// The URL that was tried (without credentials).
        url: String,
        /// What went wrong.
        source: Error,
    },
    /// A TLS certificate or key could not be read.
    #[error("TLS: {0}")]
    Tls(String),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The sockets the service serves on.
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// HTTP: availability in JSON, probes, OpenAPI.
    pub http: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses.
    pub async fn bind(config: &ServeConfig) -> std::io::Result<Self> {
        let bind = |addr: std::net::SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        };
        Ok(Self { grpc: bind(config.listen).await?, http: bind(config.http_listen).await? })
    }
}

/// Runs the service on `listeners` until `shutdown` completes, then drains
/// in-flight calls for up to the configured grace period.
pub async fn run(
    config: ServeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let Listeners { grpc: listener, http: http_listener } = listeners;
    config.validate().map_err(RunError::Config)?;
    let auth = match &config.auth_tokens {
        Some(path) => Some(Authenticator::load(path).map_err(RunError::Config)?),
        None => {
            tracing::warn!("authentication is off (no --auth-tokens): any caller may do anything; for local use only");
            None
        }
    };
    let access = Arc::new(Access::new(auth, std::num::NonZeroU32::new(config.query_rate_limit)));
    let tls = tls_config(&config)?;

    // Kept alive until run returns; dropping it stops the child.
    let mut _embedded = None;
    let urls = match config.redis_url.as_slice() {
        [] => {
            let redis = EmbeddedRedis::start(&config.redis_server_bin).await?;
            tracing::warn!(
                url = %redis.url(),
                "no --redis-url given: started a private redis-server without persistence; all stock is lost when stocklock stops"
            );
            let url = redis.url();
            _embedded = Some(redis);
            vec![url]
        }
        urls => urls.to_vec(),
    };
    let topology = match config.redis_mode {
        RedisMode::Standalone => Topology::Standalone { url: urls[0].clone() },
        RedisMode::Cluster => Topology::Cluster {
            nodes: urls.clone(),
            username: config.redis_username.clone(),
            password: config.redis_password.clone(),
        },
        RedisMode::Sentinel => Topology::Sentinel {
            sentinels: urls.clone(),
            master_name: config.redis_master_name.clone(),
            poll: config.redis_failover_poll,
            username: config.redis_username.clone(),
            password: config.redis_password.clone(),
        },
    };
    let url = urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",");
    let settings = RedisSettings {
        topology,
        timeout: config.store_timeout,
        max_hold: config.max_hold,
        retention: config.idempotency_retention,
        key_prefix: config.key_prefix.clone(),
        partitions: config.partitions(),
        request_id_claims: config.request_id_claims,
        audit_max_events: config.audit_max_events,
        force_unlock_ttl: config.force_unlock_ttl,
        durability: (config.durability_replicas > 0)
            .then_some(DurabilitySettings { replicas: config.durability_replicas, timeout: config.durability_timeout }),
    };
    let store = RedisStore::connect(&settings).await.map_err(|source| RunError::Store { url: url.clone(), source })?;
    let store = Arc::new(store);

    let ready = Arc::new(AtomicBool::new(true));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<InventoryServiceServer<InventoryApi<RedisStore>>>().await;
    // v1 for current tools, v1alpha for the many that still only speak it.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_error = |e: tonic_reflection::server::Error| RunError::Config(format!("reflection: {e}"));
    let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut background = vec![
        tokio::spawn(sweeper::run(store.clone(), config.sweep_interval, config.sweep_batch, stop_rx.clone())),
        tokio::spawn(watch_health(store.clone(), health, ready.clone(), stop_rx.clone())),
        tokio::spawn(maintain_access(access.clone(), stop_rx.clone())),
    ];

    {
        let (flusher, stop, retention) = (store.clone(), stop_rx.clone(), config.lock_health_retention);
        background.push(tokio::spawn(async move { flusher.flush_lock_health(retention, stop).await }));
        let rule = HealthRule { threshold: config.health_threshold, min_attempts: config.health_min_attempts };
        let refresh = Refresh {
            every: config.metrics_refresh,
            stale_threshold: config.stale_threshold,
            ingest_group: config.ingest_group.clone(),
        };
        background.push(tokio::spawn(refresh_gauges(store.clone(), refresh, rule, stop_rx.clone())));
    }
    if !config.invariant_check_interval.is_zero() {
        let settings = crate::workers::auditor::Settings {
            interval: config.invariant_check_interval,
            sweep_bound: config.invariant_sweep_bound,
        };
        background.push(tokio::spawn(crate::workers::auditor::run(store.clone(), settings, stop_rx.clone())));
    }
    if !config.no_ingest {
        let settings = IngestSettings {
            group: config.ingest_group.clone(),
            consumer: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
            claim_idle: config.ingest_claim_idle,
        };
        let (store, stop) = (store.clone(), stop_rx.clone());
        background.push(tokio::spawn(async move { store.consume_ingest(settings, stop).await }));
    }
    let http_state = HttpState {
        store: store.clone(),
        access: access.clone(),
        ready: ready.clone(),
        max_skus: config.max_ids_per_call,
        ingest_group: config.ingest_group.clone(),
    };
    let http_addr = http_listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    let mut http_stop = stop_rx.clone();
    background.push(tokio::spawn(async move {
        let app = crate::http::router(http_state).into_make_service_with_connect_info::<std::net::SocketAddr>();
        let served = axum::serve(http_listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP listener failed");
        }
    }));
    let events = EventHub::new(4096);
    let tailer = {
        let (store, events, stop) = (store.clone(), events.clone(), stop_rx.clone());
        let max_len = config.events_max_len;
        tokio::spawn(async move { store.tail_events(events, max_len, stop).await })
    };
    background.push(tailer);
    let events_for_shutdown = events.clone();
    let api = InventoryServiceServer::new(InventoryApi::new(store.clone(), config.limits(), events))
        .max_decoding_message_size(config.max_request_bytes);
    let policy = ForceUnlockPolicy {
        stale_threshold: config.stale_threshold,
        single_step_stale: config.single_step_stale_unlock,
    };
    let admin =
        AdminServiceServer::new(AdminApi::new(store, policy)).max_decoding_message_size(config.max_request_bytes);
    let listen = listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(%listen, http = %http_addr, redis = %url, "stocklock serving");

    if let Some(probe_addr) = config.probe_listen {
        let probe_listener = tokio::net::TcpListener::bind(probe_addr)
            .await
            .map_err(|e| RunError::Config(format!("--probe-listen {probe_addr}: {e}")))?;
        let (probes, mut probe_stop) = (health_service.clone(), stop_rx.clone());
        background.push(tokio::spawn(async move {
            let served = Server::builder()
                .add_service(probes)
                .serve_with_incoming_shutdown(TcpListenerStream::new(probe_listener), async move {
                    let _ = probe_stop.wait_for(|stop| *stop).await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "probe listener failed");
            }
        }));
    }

    let mut drain_rx = stop_rx.clone();
    let mut builder = Server::builder().tcp_nodelay(true);
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    } else {
        tracing::warn!("TLS is off (no --tls-cert): traffic and tokens travel in plaintext; for local use only");
    }
    let server = builder
        .layer(crate::edge::telemetry::ObserveLayer)
        .layer(AccessLayer::new(access))
        .layer(AdmissionLayer::new(Admission::new(crate::edge::admission::Limits {
            max_in_flight: config.max_in_flight,
            max_queued: config.max_queued,
            max_wait: config.max_queue_wait,
        })))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .add_service(admin)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            let _ = drain_rx.wait_for(|stop| *stop).await;
        });
    tokio::pin!(server);

    let result = tokio::select! {
        result = &mut server => result,
        () = shutdown => {
            tracing::info!(grace = ?config.shutdown_grace, "shutting down: draining in-flight calls");
            events_for_shutdown.close();
            let _ = stop_tx.send(true);
            match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("calls still in flight after the grace period; exiting anyway");
                    Ok(())
                }
            }
        }
    };
    let _ = stop_tx.send(true);
    for task in background {
        let _ = task.await;
    }
    tracing::info!("stocklock stopped");
    Ok(result?)
}

/// The lock-health rule's settings.
struct HealthRule {
    threshold: f64,
    min_attempts: u64,
}

/// What the gauge refresher reads, and how often.
struct Refresh {
    every: Duration,
    stale_threshold: Duration,
    ingest_group: String,
}

/// Keeps the gauges that need a look at Redis current, and applies the
/// lock-health rule to the last two complete hours.
async fn refresh_gauges(store: Arc<RedisStore>, refresh: Refresh, rule: HealthRule, mut stop: watch::Receiver<bool>) {
    use crate::domain::{AdminStore, breaking_rule};
    use crate::metrics::{METRICS, WarehouseLabels};
    const HOUR_MS: i64 = 3_600_000;
    let mut unhealthy = std::collections::BTreeSet::new();
    let mut ticker = tokio::time::interval(refresh.every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if let Ok(stats) = store.lock_stats(refresh.stale_threshold).await {
            METRICS.live_locks.set(stats.live as i64);
            METRICS.stale_locks.set(stats.stale as i64);
        }
        if let Ok(stats) = store.ingest_stats(&refresh.ingest_group).await {
            METRICS.ingest_lag.set(stats.lag.unwrap_or(0) as i64);
            METRICS.ingest_pending.set(stats.pending as i64);
            METRICS.ingest_dead_letters.set(stats.dead_letters as i64);
        }
        if let Ok(lag) = store.sweeper_lag_ms().await {
            METRICS.sweeper_lag_seconds.set(lag as f64 / 1000.0);
        }
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        let current = now - now.rem_euclid(HOUR_MS);
        let (earlier, later) = (current - 2 * HOUR_MS, current - HOUR_MS);
        let cells = match (store.lock_health(earlier, earlier, None).await, store.lock_health(later, later, None).await)
        {
            (Ok(a), Ok(b)) => (a, b),
            _ => continue,
        };
        let breaking = breaking_rule(&cells.0, &cells.1, rule.threshold, rule.min_attempts);
        for warehouse in breaking.difference(&unhealthy) {
            tracing::warn!(
                %warehouse,
                threshold = rule.threshold,
                "lock success rate under the health threshold for two consecutive hours"
            );
        }
        for warehouse in unhealthy.union(&breaking) {
            let value = i64::from(breaking.contains(warehouse));
            METRICS.warehouse_unhealthy.get_or_create(&WarehouseLabels { warehouse: warehouse.clone() }).set(value);
        }
        unhealthy = breaking;
    }
}

/// The server's TLS settings, read from the configured PEM files.
fn tls_config(config: &ServeConfig) -> Result<Option<tonic::transport::ServerTlsConfig>, RunError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| RunError::Tls(format!("cannot read {}: {e}", path.display())))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// Reloads the token file when it changes and forgets idle rate-limit state.
async fn maintain_access(access: Arc<Access>, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(crate::edge::auth::RELOAD_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if let Some(auth) = access.authenticator() {
            auth.reload_if_changed();
        }
        access.retain_recent();
    }
}

/// Reports NOT_SERVING while Redis does not answer, and reloads the scripts
/// before reporting SERVING again (a restarted Redis has none).
async fn watch_health(
    store: Arc<RedisStore>,
    health: HealthReporter,
    ready: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut serving = true;
    let mut ticker = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        let ok = match store.ping().await {
            Ok(()) if !serving => store.load_scripts().await.is_ok(),
            Ok(()) => true,
            Err(_) => false,
        };
        if ok != serving {
            serving = ok;
            ready.store(ok, Ordering::Relaxed);
            let status = if ok { ServingStatus::Serving } else { ServingStatus::NotServing };
            if ok {
                tracing::info!("Redis answers again: SERVING");
            } else {
                tracing::warn!("Redis does not answer: NOT_SERVING");
            }
            health.set_service_status("", status).await;
            health
                .set_service_status(
                    <InventoryServiceServer<InventoryApi<RedisStore>> as tonic::server::NamedService>::NAME,
                    status,
                )
                .await;
        }
    }
    // Tell load balancers to stop sending calls while the server drains.
    ready.store(false, Ordering::Relaxed);
    health.set_service_status("", ServingStatus::NotServing).await;
    health
        .set_service_status(
            <InventoryServiceServer<InventoryApi<RedisStore>> as tonic::server::NamedService>::NAME,
            ServingStatus::NotServing,
        )
        .await;
}

/// The URL without a password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_credentials() {
        assert_eq!(redact("redis://user:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }
}
