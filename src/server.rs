//! Wires the service together and runs it until shutdown: the store (on a
//! given or an embedded Redis), the edge layers, the gRPC and HTTP services,
//! the background workers, and graceful drain.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

use crate::config::{RedisMode, ServeConfig};
use crate::domain::{Error, EventHub, EventRetention, IngestConsumer};
use crate::edge::admission::{Admission, AdmissionLayer};
use crate::edge::auth::{Access, AccessLayer, Authenticator};
use crate::embedded_redis::EmbeddedRedis;
use crate::grpc::admin::ForceUnlockPolicy;
use crate::grpc::{AdminApi, InventoryApi};
use crate::http::HttpState;
use crate::pb;
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::inventory_service_server::InventoryServiceServer;
use crate::store::redis::{DurabilitySettings, RedisSettings, RedisStore, Topology};
use crate::workers::{auditor, events, gauges, health, ingest, lock_health, sweeper};

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A configuration error, with what to change: the binary exits with 2.
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
    config.validate().map_err(RunError::Config)?;
    let cdc = config.cdc().map_err(RunError::Config)?;
    if let Some(cdc) = &cdc {
        crate::cdc::check_at_start(cdc).await.map_err(RunError::Config)?;
    }
    let access = Arc::new(access(&config)?);
    let tls = tls_config(&config)?;
    // Kept alive until run returns; dropping it stops the child.
    let (urls, _embedded) = redis_urls(&config).await?;
    let url = urls.iter().map(|u| redact(u)).collect::<Vec<_>>().join(",");
    let store =
        connect(&redis_settings(&config, urls)).await.map_err(|source| RunError::Store { url: url.clone(), source })?;
    let store = Arc::new(store);

    let ready = Arc::new(AtomicBool::new(true));
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<InventoryServiceServer<InventoryApi<RedisStore>>>().await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let events = EventHub::new(4096);
    let binlog = cdc.as_ref().map(|cdc| cdc.name.clone());
    let mut background = spawn_workers(&config, cdc, &store, &access, health, &ready, &events, &stop_rx);
    // One admission for gRPC calls and the HTTP lock routes, which run the same handlers.
    let admission = Admission::new(crate::edge::admission::Limits {
        max_in_flight: config.max_in_flight,
        max_queued: config.max_queued,
        max_wait: config.max_queue_wait,
    });
    let inventory = Arc::new(InventoryApi::new(store.clone(), config.limits(), events.clone(), admission.clone()));
    let http_state = HttpState {
        inventory: inventory.clone(),
        admission: admission.clone(),
        max_request_bytes: config.max_request_bytes,
        store: store.clone(),
        access: access.clone(),
        ready,
        max_skus: config.max_ids_per_call,
        ingest_group: config.ingest_group.clone(),
        binlog,
    };
    let http_addr = listeners.http.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    background.push(tokio::spawn(serve_http(listeners.http, http_state, stop_rx.clone())));
    if let Some(probe_addr) = config.probe_listen {
        let probes = TcpListener::bind(probe_addr)
            .await
            .map_err(|e| RunError::Config(format!("--probe-listen {probe_addr}: {e}")))?;
        background.push(tokio::spawn(serve_probes(probes, health_service.clone(), stop_rx.clone())));
    }

    let api = InventoryServiceServer::from_arc(inventory).max_decoding_message_size(config.max_request_bytes);
    let policy = ForceUnlockPolicy {
        stale_threshold: config.stale_threshold,
        single_step_stale: config.single_step_stale_unlock,
    };
    let admin =
        AdminServiceServer::new(AdminApi::new(store, policy)).max_decoding_message_size(config.max_request_bytes);
    let (reflection_v1, reflection_v1alpha) = reflection()?;
    let listen = listeners.grpc.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(%listen, http = %http_addr, redis = %url, "stocklock serving");

    // The builder's tcp_nodelay applies only to listeners it opens itself;
    // ours come from outside, so the incoming stream sets it on each
    // accepted socket. Without it, Nagle held back the tail of a response
    // until the client's delayed ACK: 40 ms stalls on larger replies.
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    } else {
        tracing::warn!("TLS is off (no --tls-cert): traffic and tokens travel in plaintext; for local use only");
    }
    let mut drain = stop_rx.clone();
    let server = builder
        .layer(crate::edge::telemetry::ObserveLayer)
        .layer(AccessLayer::new(access))
        .layer(AdmissionLayer::new(admission))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api)
        .add_service(admin)
        .serve_with_incoming_shutdown(TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)), async move {
            let _ = drain.wait_for(|stop| *stop).await;
        });
    tokio::pin!(server);

    let result = tokio::select! {
        result = &mut server => result,
        () = shutdown => {
            tracing::info!(grace = ?config.shutdown_grace, "shutting down: draining in-flight calls");
            events.close();
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

/// How long a starting service waits for a Redis that is reachable but slow
/// to answer its first calls (connect, the layout check, loading the
/// scripts), each within the store timeout: a cluster still settling its
/// slots, a loaded machine. Nothing listening, a wrong layout or bad
/// settings fail at once (`tests/server.rs`).
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// Connects the store, again after a timeout until [`STARTUP_PATIENCE`]
/// runs out.
async fn connect(settings: &RedisSettings) -> Result<RedisStore, Error> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        match RedisStore::connect(settings).await {
            Err(Error::StoreTimeout) if started.elapsed() < STARTUP_PATIENCE => {
                tracing::warn!("Redis does not answer in time yet; trying again");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            result => return result,
        }
    }
}

/// Authentication (when a token file is configured) and rate limits.
fn access(config: &ServeConfig) -> Result<Access, RunError> {
    let auth = match &config.auth_tokens {
        Some(path) => Some(Authenticator::load(path).map_err(RunError::Config)?),
        None => {
            tracing::warn!("authentication is off (no --auth-tokens): any caller may do anything; for local use only");
            None
        }
    };
    Ok(Access::new(auth, std::num::NonZeroU32::new(config.query_rate_limit)))
}

/// The configured Redis URLs, or a private redis-server started for them
/// (returned too: it stops when dropped).
async fn redis_urls(config: &ServeConfig) -> Result<(Vec<String>, Option<EmbeddedRedis>), RunError> {
    if !config.redis_url.is_empty() {
        return Ok((config.redis_url.clone(), None));
    }
    let redis = EmbeddedRedis::start(&config.redis_server_bin).await?;
    tracing::warn!(
        url = %redis.url(),
        "no --redis-url given: started a private redis-server without persistence; all stock is lost when stocklock stops"
    );
    Ok((vec![redis.url()], Some(redis)))
}

/// The store's settings: the topology the mode and URLs name, and the
/// limits and retention of the configuration.
fn redis_settings(config: &ServeConfig, urls: Vec<String>) -> RedisSettings {
    let topology = match config.redis_mode {
        RedisMode::Standalone => Topology::Standalone { url: urls[0].clone() },
        RedisMode::Cluster => Topology::Cluster {
            nodes: urls,
            username: config.redis_username.clone(),
            password: config.redis_password.clone(),
        },
        RedisMode::Sentinel => Topology::Sentinel {
            sentinels: urls,
            master_name: config.redis_master_name.clone(),
            poll: config.redis_failover_poll,
            username: config.redis_username.clone(),
            password: config.redis_password.clone(),
        },
    };
    RedisSettings {
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
    }
}

/// Starts every background loop; each ends when `stop` turns true.
#[allow(clippy::too_many_arguments)]
fn spawn_workers(
    config: &ServeConfig,
    cdc: Option<crate::cdc::Settings>,
    store: &Arc<RedisStore>,
    access: &Arc<Access>,
    health: HealthReporter,
    ready: &Arc<AtomicBool>,
    events: &EventHub,
    stop: &watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(sweeper::run(store.clone(), config.sweep_interval, config.sweep_batch, stop.clone())),
        tokio::spawn(health::run(store.clone(), health, ready.clone(), stop.clone())),
        tokio::spawn(crate::edge::auth::maintain(access.clone(), stop.clone())),
    ];
    let gauges = gauges::Settings {
        every: config.metrics_refresh,
        stale_threshold: config.stale_threshold,
        ingest_group: config.ingest_group.clone(),
        rule: gauges::HealthRule { threshold: config.health_threshold, min_attempts: config.health_min_attempts },
        sweep_bound: config.invariant_sweep_bound,
        self_check: !config.invariant_check_interval.is_zero(),
    };
    tasks.push(tokio::spawn(gauges::run(store.clone(), gauges, stop.clone())));
    if !config.invariant_check_interval.is_zero() {
        let settings =
            auditor::Settings { interval: config.invariant_check_interval, sweep_bound: config.invariant_sweep_bound };
        tasks.push(tokio::spawn(auditor::run(store.clone(), settings, stop.clone())));
    }
    tasks.push(tokio::spawn(lock_health::run(store.clone(), config.lock_health_retention, stop.clone())));
    if !config.no_ingest {
        let consumer = IngestConsumer {
            group: config.ingest_group.clone(),
            consumer: format!("{}-{:08x}", std::process::id(), rand::random::<u32>()),
            lease: config.ingest_claim_idle,
            retention: config.idempotency_retention,
        };
        let (store, stop) = (store.clone(), stop.clone());
        tasks.push(tokio::spawn(async move { ingest::run(store.as_ref(), consumer, stop).await }));
    }
    if let Some(cdc) = cdc {
        tasks.push(tokio::spawn(crate::cdc::run(store.clone(), cdc, stop.clone())));
    }
    let keep = EventRetention { max_age: config.events_retention, max_len: config.events_max_len };
    tasks.push(tokio::spawn(events::run(store.clone(), events.clone(), keep, stop.clone())));
    tasks
}

/// Serves the HTTP API until `stop`.
async fn serve_http(listener: TcpListener, state: HttpState<RedisStore>, mut stop: watch::Receiver<bool>) {
    let app = crate::http::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    // As for gRPC: no Nagle delay on the tail of a response.
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an HTTP connection");
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP listener failed");
    }
}

/// Serves the health service alone on the probe listener until `stop`.
async fn serve_probes<H>(listener: TcpListener, probes: H, mut stop: watch::Receiver<bool>)
where
    H: tonic::server::NamedService
        + tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    H::Future: Send + 'static,
{
    let served = Server::builder()
        .add_service(probes)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "probe listener failed");
    }
}

/// Server reflection, v1 for current tools and v1alpha for the many that
/// still only speak it.
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    RunError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let error = |e: tonic_reflection::server::Error| RunError::Config(format!("reflection: {e}"));
    Ok((builder().build_v1().map_err(error)?, builder().build_v1alpha().map_err(error)?))
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
