//! The gauges that need a look at the store, refreshed every few seconds,
//! and the lock-health rule applied to the last two complete hours.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::auditor;
use crate::domain::{AdminStore, WarehouseId, breaking_rule};
use crate::metrics::{METRICS, WarehouseLabels};

/// One hour in ms.
const HOUR_MS: i64 = 3_600_000;

/// The lock-health rule: a warehouse whose lock success rate stays under
/// `threshold` for two complete hours in a row, with at least
/// `min_attempts` attempts in each, is unhealthy.
#[derive(Clone, Copy, Debug)]
pub struct HealthRule {
    /// Lowest healthy success rate, e.g. 0.999.
    pub threshold: f64,
    /// Fewer attempts in an hour say nothing about it.
    pub min_attempts: u64,
}

/// What the refresher reads, and how often.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often the gauges are refreshed.
    pub every: Duration,
    /// Locks older than this are stale.
    pub stale_threshold: Duration,
    /// The ingestion consumer group whose backlog is reported.
    pub ingest_group: String,
    /// The lock-health rule.
    pub rule: HealthRule,
    /// How long past its expiry a lock may stay unswept, for the self-check.
    pub sweep_bound: Duration,
    /// Whether a flagged warehouse gets a self-check (off with the auditor).
    pub self_check: bool,
}

/// Keeps the gauges that need a look at the store current, and applies the
/// lock-health rule, until `stop`.
pub async fn run<S: AdminStore>(store: Arc<S>, settings: Settings, mut stop: watch::Receiver<bool>) {
    let mut unhealthy = BTreeSet::new();
    let mut ticker = tokio::time::interval(settings.every);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        if let Ok(stats) = store.lock_stats(settings.stale_threshold).await {
            METRICS.live_locks.set(stats.live as i64);
            METRICS.stale_locks.set(stats.stale as i64);
        }
        if let Ok(stats) = store.ingest_stats(&settings.ingest_group).await {
            METRICS.ingest_lag.set(stats.lag.unwrap_or(0) as i64);
            METRICS.ingest_pending.set(stats.pending as i64);
            METRICS.ingest_dead_letters.set(stats.dead_letters as i64);
        }
        if let Ok(lag) = store.sweeper_lag_ms().await {
            METRICS.sweeper_lag_seconds.set(lag as f64 / 1000.0);
        }
        if let Some(breaking) = apply_rule(store.as_ref(), settings.rule, &unhealthy).await {
            // One warehouse after the other: an outage or an overload breaks
            // the rule for every busy warehouse in the same hour, and each
            // check scans the records, which Redis can least afford then.
            let new: Vec<String> = breaking.difference(&unhealthy).cloned().collect();
            if settings.self_check && !new.is_empty() {
                let (store, sweep_bound) = (store.clone(), settings.sweep_bound);
                tokio::spawn(async move {
                    for warehouse in new {
                        self_check(store.clone(), sweep_bound, warehouse).await;
                    }
                });
            }
            unhealthy = breaking;
        }
    }
}

/// Applies the lock-health rule to the last two complete hours: logs the
/// warehouses that start breaking it, sets `stocklock_warehouse_unhealthy`
/// for those that break it and those that stopped, and returns the set now
/// breaking it (`None` when the counts could not be read).
async fn apply_rule<S: AdminStore>(
    store: &S,
    rule: HealthRule,
    unhealthy: &BTreeSet<String>,
) -> Option<BTreeSet<String>> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    let current = now - now.rem_euclid(HOUR_MS);
    let (earlier, later) = (current - 2 * HOUR_MS, current - HOUR_MS);
    let (Ok(first), Ok(second)) =
        (store.lock_health(earlier, earlier, None).await, store.lock_health(later, later, None).await)
    else {
        return None;
    };
    let breaking = breaking_rule(&first, &second, rule.threshold, rule.min_attempts);
    for warehouse in breaking.difference(unhealthy) {
        tracing::warn!(%warehouse, threshold = rule.threshold, "lock success rate under the health threshold for two consecutive hours");
    }
    for warehouse in unhealthy.union(&breaking) {
        let value = i64::from(breaking.contains(warehouse));
        METRICS.warehouse_unhealthy.get_or_create(&WarehouseLabels { warehouse: warehouse.clone() }).set(value);
    }
    Some(breaking)
}

/// The self-check of a warehouse that started breaking the lock-health
/// rule: an auditor pass over its records now (each record that breaks an
/// invariant is logged), and the count in
/// `stocklock_invariant_self_check_violations{warehouse}`.
async fn self_check<S: AdminStore>(store: Arc<S>, sweep_bound: Duration, warehouse: String) {
    let Ok(id) = WarehouseId::parse(&warehouse, "warehouse_id") else { return };
    // One replica checks a warehouse at most once an hour, however many
    // flag it (every replica applies the rule) or restart.
    if !matches!(store.try_lease(&format!("self-check:{warehouse}"), Duration::from_secs(3600)).await, Ok(true)) {
        return;
    }
    match auditor::check_warehouse(store.as_ref(), sweep_bound, &id).await {
        Ok(pass) => {
            let violating: u64 = pass.violations.values().sum();
            tracing::warn!(%warehouse, records = pass.records, violating, "self-check of a warehouse breaking the lock-health rule");
            let labels = WarehouseLabels { warehouse };
            METRICS.self_check_violations.get_or_create(&labels).set(i64::try_from(violating).unwrap_or(i64::MAX));
        }
        Err(e) => tracing::warn!(%warehouse, error = %e, "self-check of a warehouse failed"),
    }
}
