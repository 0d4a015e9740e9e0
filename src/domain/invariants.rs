//! The invariants the auditor checks on every record, and the repair of a
//! record that broke them.

use super::{RecordKey, StockView, UnitScale};

/// What one record looked like to the auditor, in the record's scaled units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordCheck {
    /// The record.
    pub record: RecordKey,
    /// The stored `locked` figure.
    pub locked: i64,
    /// The quantity of every lock the record holds (unswept expired ones
    /// included); `None` when the record changed while the auditor read it
    /// slice by slice, so no sum of one state exists (a later pass tries again).
    pub sum_of_locks: Option<i64>,
    /// The stored count of live locks.
    pub live: i64,
    /// How many locks the record holds; `None` as for `sum_of_locks`.
    pub count_of_locks: Option<i64>,
    /// Locks with no expiry entry: they would never expire.
    pub locks_without_expiry: u64,
    /// Expiry entries with no lock.
    pub expiries_without_lock: u64,
    /// How long ago the oldest unswept lock expired (0: none).
    pub overdue_ms: i64,
    /// Available by the stored figures; negative means oversold.
    pub available: i64,
    /// The record's unit scale.
    pub unit_scale: UnitScale,
}

/// A broken invariant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Violation {
    /// `locked` is not the sum of the record's locks, or `live` not their count.
    LockedDrift,
    /// A lock without an expiry, or an expiry without a lock.
    BrokenExpiryIndex,
    /// A lock outlived its expiry by more than the sweep bound.
    LateExpiry,
    /// Available is negative: stock was promised twice (reported, not repaired:
    /// it takes a person to decide which order goes without).
    Oversold,
}

impl Violation {
    /// Every kind, for metrics that report zeros too.
    pub const ALL: [Self; 4] = [Self::LockedDrift, Self::BrokenExpiryIndex, Self::LateExpiry, Self::Oversold];

    /// The metric label and log name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LockedDrift => "locked_drift",
            Self::BrokenExpiryIndex => "broken_expiry_index",
            Self::LateExpiry => "late_expiry",
            Self::Oversold => "oversold",
        }
    }
}

impl RecordCheck {
    /// The invariants this record breaks; a lock may stay unswept for up to `sweep_bound_ms`.
    pub fn violations(&self, sweep_bound_ms: i64) -> Vec<Violation> {
        let mut found = Vec::new();
        if self.sum_of_locks.is_some_and(|sum| sum != self.locked)
            || self.count_of_locks.is_some_and(|count| count != self.live)
        {
            found.push(Violation::LockedDrift);
        }
        if self.locks_without_expiry > 0 || self.expiries_without_lock > 0 {
            found.push(Violation::BrokenExpiryIndex);
        }
        if self.overdue_ms > sweep_bound_ms {
            found.push(Violation::LateExpiry);
        }
        if self.available < 0 {
            found.push(Violation::Oversold);
        }
        found
    }
}

/// What a repair changed.
#[derive(Clone, Debug)]
pub struct Repair {
    /// `locked` before, in scaled units.
    pub locked_before: i64,
    /// `locked` after.
    pub locked_after: i64,
    /// Locks that were given the expiry they lacked.
    pub fixed_expiries: u64,
    /// Expiry entries without a lock, dropped.
    pub dropped_expiries: u64,
    /// The record after the repair.
    pub record: StockView,
    /// True when this answer replays an earlier call with the same request_id.
    pub replayed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Sku, WarehouseId};

    #[test]
    fn classifies_violations() {
        let record = RecordKey::new(Sku::parse("S", "sku").unwrap(), WarehouseId::parse("W", "w").unwrap());
        let healthy = RecordCheck {
            record,
            locked: 5,
            sum_of_locks: Some(5),
            live: 2,
            count_of_locks: Some(2),
            locks_without_expiry: 0,
            expiries_without_lock: 0,
            overdue_ms: 100,
            available: 0,
            unit_scale: UnitScale::new(0, "unit_scale").unwrap(),
        };
        assert!(healthy.violations(1000).is_empty());
        let broken =
            RecordCheck { locked: 7, expiries_without_lock: 1, overdue_ms: 5000, available: -2, ..healthy.clone() };
        assert_eq!(broken.violations(1000), Violation::ALL.to_vec());
        let miscounted = RecordCheck { live: 3, ..healthy.clone() };
        assert_eq!(miscounted.violations(1000), [Violation::LockedDrift]);
        let busy = RecordCheck { locked: 7, live: 3, sum_of_locks: None, count_of_locks: None, ..healthy };
        assert!(busy.violations(1000).is_empty(), "an unsummed record shows no drift");
    }
}
