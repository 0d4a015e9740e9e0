//! The continuous invariant auditor: on every `interval`, one replica (the
//! one that takes the lease) checks every stock record against its lock
//! set and exports what it found, so drift shows up on a dashboard within
//! minutes instead of in a customer's complaint.
//!
//! The checks (see [`crate::domain::RecordCheck`]): `locked` is the sum of
//! the record's locks (read in slices; a record that changes while it is
//! read is summed at a later pass and counted in
//! `stocklock_invariant_unsummed_records` meanwhile); every lock has an expiry and every expiry a lock; no
//! lock stays unswept longer than `sweep_bound` past its expiry; available
//! is not negative. A record that breaks one is logged with its figures and
//! counted in `stocklock_invariant_violations{kind}`; `stocklock admin repair`
//! (RepairRecord) mends drift and a broken expiry index from the lock set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::domain::{AdminStore, Violation, WarehouseId, format_scaled};
use crate::metrics::{METRICS, ViolationLabels};

/// Records per SCAN step.
const SCAN_COUNT: usize = 500;

/// When and how the auditor runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Time between passes (over all replicas together).
    pub interval: Duration,
    /// How long past its expiry a lock may stay unswept before it counts as late.
    pub sweep_bound: Duration,
}

/// What one pass found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Records checked.
    pub records: u64,
    /// Records that changed while they were read, so not summed.
    pub unsummed: u64,
    /// Records breaking each invariant.
    pub violations: HashMap<Violation, u64>,
}

/// Checks every record once, logging each record that breaks an invariant.
pub async fn check_all<S: AdminStore>(store: &S, sweep_bound: Duration) -> Result<Pass, crate::domain::Error> {
    check_pass(store, sweep_bound, None).await
}

/// The self-check: checks every record of `warehouse` once, as
/// [`check_all`] does, when the warehouse starts breaking the lock-health
/// rule, so drift behind its failures is found at once, not at the next pass.
pub async fn check_warehouse<S: AdminStore>(
    store: &S,
    sweep_bound: Duration,
    warehouse: &WarehouseId,
) -> Result<Pass, crate::domain::Error> {
    check_pass(store, sweep_bound, Some(warehouse)).await
}

async fn check_pass<S: AdminStore>(
    store: &S,
    sweep_bound: Duration,
    warehouse: Option<&WarehouseId>,
) -> Result<Pass, crate::domain::Error> {
    let bound_ms = i64::try_from(sweep_bound.as_millis()).unwrap_or(i64::MAX);
    let mut pass = Pass::default();
    let mut cursor = 0;
    loop {
        let (checks, next) = store.check_records(cursor, SCAN_COUNT, warehouse).await?;
        for check in checks {
            pass.records += 1;
            pass.unsummed += u64::from(check.sum_of_locks.is_none());
            let found = check.violations(bound_ms);
            if found.is_empty() {
                continue;
            }
            let scale = check.unit_scale.get();
            tracing::warn!(
                sku = %check.record.sku,
                warehouse_id = %check.record.warehouse,
                violations = ?found.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
                locked = %format_scaled(check.locked, scale),
                sum_of_locks = %check.sum_of_locks.map_or_else(|| "not summed".into(), |sum| format_scaled(sum, scale)),
                live = check.live,
                count_of_locks = %check.count_of_locks.map_or_else(|| "not counted".into(), |n| n.to_string()),
                locks_without_expiry = check.locks_without_expiry,
                expiries_without_lock = check.expiries_without_lock,
                overdue_ms = check.overdue_ms,
                available = %format_scaled(check.available, scale),
                "stock record breaks an invariant; `stocklock admin repair` mends drift from the lock set"
            );
            for violation in found {
                *pass.violations.entry(violation).or_default() += 1;
            }
        }
        if next == 0 {
            return Ok(pass);
        }
        cursor = next;
    }
}

/// Runs passes until `stop` turns true.
pub async fn run<S: AdminStore>(store: Arc<S>, settings: Settings, mut stop: watch::Receiver<bool>) {
    loop {
        // A little jitter, so replicas do not all ask for the lease at once.
        let jitter = Duration::from_millis(u64::from(rand::random::<u16>() % 250));
        tokio::select! {
            () = tokio::time::sleep(settings.interval.min(Duration::from_secs(5)) + jitter) => {}
            _ = stop.changed() => return,
        }
        match store.try_lease("invariant-auditor", settings.interval).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "invariant auditor: no lease");
                continue;
            }
        }
        match check_all(store.as_ref(), settings.sweep_bound).await {
            Ok(pass) => {
                METRICS.invariant_records.set(i64::try_from(pass.records).unwrap_or(i64::MAX));
                METRICS.invariant_unsummed_records.set(i64::try_from(pass.unsummed).unwrap_or(i64::MAX));
                for kind in Violation::ALL {
                    let count = pass.violations.get(&kind).copied().unwrap_or(0);
                    METRICS
                        .invariant_violations
                        .get_or_create(&ViolationLabels { kind: kind.as_str() })
                        .set(i64::try_from(count).unwrap_or(i64::MAX));
                }
                METRICS.invariant_passes.inc();
                tracing::debug!(records = pass.records, "invariant audit pass done");
            }
            Err(e) => tracing::warn!(error = %e, "invariant audit pass failed; retrying at the next interval"),
        }
    }
}
