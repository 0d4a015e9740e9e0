//! Prometheus metrics, served as text at the HTTP listener's `/metrics`.
//!
//! Metrics are process-wide by nature, so they live in one static registry.
//! Label values come from small closed sets (methods, codes, reasons, script
//! names) or from warehouses, which a shop has a handful of; there is never
//! a label per SKU, per lock or per caller.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of RPC metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// `Service/Method`, e.g. `InventoryService/Lock`.
    pub method: String,
    /// The gRPC status code name, e.g. `Ok`.
    pub code: String,
}

/// Labels of lock outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The warehouse of the line.
    pub warehouse: String,
    /// `OK` or the error reason.
    pub reason: String,
}

/// Labels of Redis metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisLabels {
    /// The script or command, e.g. `lock`.
    pub op: String,
}

/// Labels of Redis errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RedisErrorLabels {
    /// The script or command.
    pub op: String,
    /// `timeout`, `unavailable`, `out_of_memory` or `other`.
    pub kind: String,
}

/// Labels of per-warehouse gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WarehouseLabels {
    /// The warehouse.
    pub warehouse: String,
}

/// Labels of forced unlocks.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ForceUnlockLabels {
    /// `approved` or `policy`.
    pub mode: String,
}

/// Labels of the durability waits.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurabilityLabels {
    /// `durable` (enough replicas acknowledged in time) or `not_durable`.
    pub outcome: &'static str,
}

/// Labels of shed calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShedLabels {
    /// `queue_full`, `queue_wait` or `deadline`.
    pub reason: &'static str,
}

/// Labels of the invariant auditor's findings.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    /// `locked_drift`, `broken_expiry_index`, `late_expiry` or `oversold`.
    pub kind: &'static str,
}

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// RPC latency by method and code.
    pub rpc_duration: Family<RpcLabels, Histogram>,
    /// Lock lines by warehouse and outcome.
    pub lock_outcomes: Family<OutcomeLabels, Counter>,
    /// Redis round trips by script or command.
    pub redis_duration: Family<RedisLabels, Histogram>,
    /// Redis failures.
    pub redis_errors: Family<RedisErrorLabels, Counter>,
    /// Live locks (refreshed periodically).
    pub live_locks: Gauge,
    /// Live locks older than the stale threshold (refreshed periodically).
    pub stale_locks: Gauge,
    /// Locks the sweeper returned to availability.
    pub expired_locks: Counter,
    /// How long the oldest expired-but-unswept lock has been waiting.
    pub sweeper_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Forced unlocks executed.
    pub force_unlocks: Family<ForceUnlockLabels, Counter>,
    /// Stock-change entries not yet delivered to the consumer group.
    pub ingest_lag: Gauge,
    /// Stock-change entries delivered but not acknowledged.
    pub ingest_pending: Gauge,
    /// Entries in the dead-letter stream.
    pub ingest_dead_letters: Gauge,
    /// 1 on every replica configured to follow a warehouse database's binlog.
    pub cdc_enabled: Gauge,
    /// 1 on the replica that follows the warehouse database's binlog.
    pub cdc_leader: Gauge,
    /// Seconds since the server wrote the binlog event the follower is at, while it is behind.
    pub cdc_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Binlog bytes the server wrote that the follower has not applied.
    pub cdc_lag_bytes: Gauge,
    /// Binlog rows applied as stock writes.
    pub cdc_rows_applied: Counter,
    /// Binlog rows that could not be applied, sent to the dead-letter stream.
    pub cdc_dead_letters: Counter,
    /// Times the follower restarted at its checkpoint after a fault.
    pub cdc_restarts: Counter,
    /// Calls refused by the rate limit.
    pub rate_limited: Counter,
    /// 1 while a warehouse breaks the lock-health rule.
    pub warehouse_unhealthy: Family<WarehouseLabels, Gauge>,
    /// Primary changes followed through Sentinel.
    pub failovers: Counter,
    /// Mutations that waited for replica acknowledgements, by outcome.
    pub durability: Family<DurabilityLabels, Counter>,
    /// Calls refused by overload protection before they started.
    pub shed: Family<ShedLabels, Counter>,
    /// Records breaking each invariant in the auditor's last pass.
    pub invariant_violations: Family<ViolationLabels, Gauge>,
    /// Records the auditor's last pass checked.
    pub invariant_records: Gauge,
    /// Records that changed while the auditor's last pass read them, so their
    /// `locked` was not compared with the sum of their locks.
    pub invariant_unsummed_records: Gauge,
    /// Completed auditor passes.
    pub invariant_passes: Counter,
    /// Records breaking an invariant in the last self-check of a warehouse
    /// (an auditor pass over it when it started breaking the lock-health rule).
    pub self_check_violations: Family<WarehouseLabels, Gauge>,
}

/// Latency buckets: 100 µs steps below 1 ms, then coarser up to 10 s.
fn latency_buckets() -> Vec<f64> {
    let fine = (1..=10).map(|i| f64::from(i) * 0.0001);
    let coarse = [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
    std::iter::once(0.00005).chain(fine).chain(coarse).collect()
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("stocklock");
        let histogram = || Histogram::new(latency_buckets());
        let rpc_duration = Family::<RpcLabels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let redis_duration = Family::<RedisLabels, Histogram>::new_with_constructor(histogram as fn() -> Histogram);
        let metrics = Self {
            registry: Registry::default(),
            rpc_duration: rpc_duration.clone(),
            lock_outcomes: Family::default(),
            redis_duration: redis_duration.clone(),
            redis_errors: Family::default(),
            live_locks: Gauge::default(),
            stale_locks: Gauge::default(),
            expired_locks: Counter::default(),
            sweeper_lag_seconds: Gauge::default(),
            force_unlocks: Family::default(),
            ingest_lag: Gauge::default(),
            ingest_pending: Gauge::default(),
            ingest_dead_letters: Gauge::default(),
            cdc_enabled: Gauge::default(),
            cdc_leader: Gauge::default(),
            cdc_lag_seconds: Gauge::default(),
            cdc_lag_bytes: Gauge::default(),
            cdc_rows_applied: Counter::default(),
            cdc_dead_letters: Counter::default(),
            cdc_restarts: Counter::default(),
            rate_limited: Counter::default(),
            warehouse_unhealthy: Family::default(),
            failovers: Counter::default(),
            durability: Family::default(),
            shed: Family::default(),
            invariant_violations: Family::default(),
            invariant_records: Gauge::default(),
            invariant_unsummed_records: Gauge::default(),
            invariant_passes: Counter::default(),
            self_check_violations: Family::default(),
        };
        // A gauge of 1 rather than an OpenMetrics info metric: the classic
        // text format, which many scrapers still ask for, has no info type.
        let build = Family::<Vec<(&'static str, &'static str)>, Gauge>::default();
        build
            .get_or_create(&vec![
                ("version", env!("CARGO_PKG_VERSION")),
                // `docker build --build-arg REVISION=...` (k8s/Dockerfile) sets it.
                ("revision", option_env!("STOCKLOCK_REVISION").unwrap_or("unknown")),
            ])
            .set(1);
        registry.register(
            "build_info",
            "The running build: its version, and the git revision it was built from when the build said so",
            build,
        );
        registry.register("rpc_duration_seconds", "gRPC call latency by method and status code", rpc_duration);
        registry.register(
            "lock_outcomes",
            "Lock and BatchLock lines by warehouse and outcome reason",
            metrics.lock_outcomes.clone(),
        );
        registry.register("redis_duration_seconds", "Redis round trips by script or command", redis_duration);
        registry.register("redis_errors", "Redis failures by script or command and kind", metrics.redis_errors.clone());
        registry.register("live_locks", "Live locks", metrics.live_locks.clone());
        registry.register("stale_locks", "Live locks older than the stale threshold", metrics.stale_locks.clone());
        registry.register("expired_locks", "Locks the sweeper returned to availability", metrics.expired_locks.clone());
        registry.register(
            "sweeper_lag_seconds",
            "How long the oldest expired lock has waited for the sweeper",
            metrics.sweeper_lag_seconds.clone(),
        );
        registry.register("force_unlocks", "Forced unlocks executed, by approval mode", metrics.force_unlocks.clone());
        registry.register(
            "ingest_lag",
            "Stock-change entries not yet delivered to the consumer group",
            metrics.ingest_lag.clone(),
        );
        registry.register(
            "ingest_pending",
            "Stock-change entries delivered but not acknowledged",
            metrics.ingest_pending.clone(),
        );
        registry.register(
            "ingest_dead_letters",
            "Entries in the ingestion dead-letter stream",
            metrics.ingest_dead_letters.clone(),
        );
        registry.register(
            "cdc_enabled",
            "1 on every replica configured to follow a warehouse database's binlog",
            metrics.cdc_enabled.clone(),
        );
        registry.register(
            "cdc_leader",
            "1 on the replica that follows the warehouse database's binlog",
            metrics.cdc_leader.clone(),
        );
        registry.register(
            "cdc_lag_seconds",
            "Seconds since the server wrote the binlog event the follower is at, while it is behind (0 when caught up)",
            metrics.cdc_lag_seconds.clone(),
        );
        registry.register(
            "cdc_lag_bytes",
            "Binlog bytes the server wrote that the follower has not applied",
            metrics.cdc_lag_bytes.clone(),
        );
        registry.register("cdc_rows_applied", "Binlog rows applied as stock writes", metrics.cdc_rows_applied.clone());
        registry.register(
            "cdc_dead_letters",
            "Binlog rows that could not be applied, sent to the dead-letter stream",
            metrics.cdc_dead_letters.clone(),
        );
        registry.register(
            "cdc_restarts",
            "Times the binlog follower restarted at its checkpoint after a fault",
            metrics.cdc_restarts.clone(),
        );
        registry.register("rate_limited", "Calls refused by the query rate limit", metrics.rate_limited.clone());
        registry.register(
            "warehouse_unhealthy",
            "1 while a warehouse's lock success rate breaks the health rule",
            metrics.warehouse_unhealthy.clone(),
        );
        registry.register(
            "redis_failovers",
            "Redis primary changes followed through Sentinel (each bumps the fencing epoch)",
            metrics.failovers.clone(),
        );
        registry.register(
            "durability_waits",
            "Mutations that waited for replica acknowledgements (WAIT), by outcome",
            metrics.durability.clone(),
        );
        registry.register(
            "shed_calls",
            "Calls refused before they started: concurrency limit and queue full, queue wait over, deadline passed",
            metrics.shed.clone(),
        );
        registry.register(
            "invariant_violations",
            "Stock records breaking each invariant in the auditor's last pass",
            metrics.invariant_violations.clone(),
        );
        registry.register(
            "invariant_records",
            "Stock records the auditor's last pass checked",
            metrics.invariant_records.clone(),
        );
        registry.register(
            "invariant_unsummed_records",
            "Stock records that changed while the auditor's last pass read them, so their locked figure was not compared",
            metrics.invariant_unsummed_records.clone(),
        );
        registry.register("invariant_passes", "Completed invariant auditor passes", metrics.invariant_passes.clone());
        registry.register(
            "invariant_self_check_violations",
            "Stock records breaking an invariant in the last self-check of a warehouse that started breaking the lock-health rule",
            metrics.self_check_violations.clone(),
        );
        // Every label value exists from the start: dashboards and alerts see
        // zeros, not missing series.
        for outcome in ["durable", "not_durable"] {
            let _ = metrics.durability.get_or_create(&DurabilityLabels { outcome });
        }
        for reason in ["queue_full", "queue_wait", "deadline"] {
            let _ = metrics.shed.get_or_create(&ShedLabels { reason });
        }
        for kind in crate::domain::Violation::ALL {
            let _ = metrics.invariant_violations.get_or_create(&ViolationLabels { kind: kind.as_str() });
        }
        Self { registry, ..metrics }
    }

    /// The metrics in the OpenMetrics text format, which Prometheus's
    /// classic text parser also reads.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Records one Redis round trip.
    pub fn redis(&self, op: &str, took: Duration, error: Option<&'static str>) {
        self.redis_duration.get_or_create(&RedisLabels { op: op.to_owned() }).observe(took.as_secs_f64());
        if let Some(kind) = error {
            self.redis_errors.get_or_create(&RedisErrorLabels { op: op.to_owned(), kind: kind.to_owned() }).inc();
        }
    }

    /// Records the outcome of one lock line.
    pub fn lock_outcome(&self, warehouse: &str, reason: &str) {
        self.lock_outcomes
            .get_or_create(&OutcomeLabels { warehouse: warehouse.to_owned(), reason: reason.to_owned() })
            .inc();
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_resolve_100_microseconds_below_a_millisecond() {
        let buckets = latency_buckets();
        for step in 1..=10 {
            let edge = f64::from(step) * 0.0001;
            assert!(buckets.iter().any(|b| (b - edge).abs() < 1e-12), "no bucket at {edge}");
        }
        assert!(buckets.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn encodes_with_the_prefix() {
        METRICS.lock_outcome("WH-A", "OK");
        METRICS
            .rpc_duration
            .get_or_create(&RpcLabels { method: "InventoryService/Lock".into(), code: "Ok".into() })
            .observe(0.00042);
        let text = METRICS.encode();
        assert!(
            text.contains(
                "stocklock_rpc_duration_seconds_bucket{le=\"0.0005\",method=\"InventoryService/Lock\",code=\"Ok\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("stocklock_lock_outcomes_total{warehouse=\"WH-A\",reason=\"OK\"}"), "{text}");
        assert!(text.contains("# TYPE stocklock_rpc_duration_seconds histogram"), "{text}");
        let build = format!("stocklock_build_info{{version=\"{}\",revision=", env!("CARGO_PKG_VERSION"));
        assert!(text.contains(&build), "{text}");
    }
}
