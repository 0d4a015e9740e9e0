//! Lock health: outcomes of lock attempts per warehouse and hour.

use std::collections::BTreeMap;

use super::reason;

/// Whether `reason` counts against the service: the caller did nothing
/// wrong and there was stock, yet the lock failed (the store timed out, was
/// unreachable or out of memory, the service was overloaded and refused to
/// start the call, or an internal error). Refusals on the
/// merits (no stock, bad input, ...) are counted by reason but are the
/// service working.
pub fn is_service_failure(text: &str) -> bool {
    matches!(
        text,
        reason::INV_LOCK_TIMEOUT
            | reason::STORE_UNAVAILABLE
            | reason::STORE_OUT_OF_MEMORY
            | reason::INTERNAL
            | reason::OVERLOADED
            | reason::DEADLINE_PASSED
    )
}

/// The success target the heatmap marks cells against.
pub const SUCCESS_TARGET: f64 = 0.9995;

/// Lock attempts of one warehouse in one hour.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockHealthCell {
    /// The warehouse.
    pub warehouse: String,
    /// Start of the hour, ms since the epoch.
    pub hour_start_ms: i64,
    /// Lines attempted, by outcome reason (`OK` for a lock granted).
    pub by_reason: BTreeMap<String, u64>,
}

impl LockHealthCell {
    /// Every attempt.
    pub fn attempts(&self) -> u64 {
        self.by_reason.values().sum()
    }

    /// Locks granted.
    pub fn locked(&self) -> u64 {
        self.by_reason.get("OK").copied().unwrap_or(0)
    }

    /// Attempts that failed for the service's own reasons.
    pub fn failures(&self) -> u64 {
        self.by_reason.iter().filter(|(reason, _)| is_service_failure(reason)).map(|(_, count)| count).sum()
    }

    /// Share of attempts the service handled correctly (1 with no attempts).
    pub fn success_rate(&self) -> f64 {
        match self.attempts() {
            0 => 1.0,
            n => 1.0 - self.failures() as f64 / n as f64,
        }
    }
}

/// The health rule: warehouses whose success rate stayed under `threshold`
/// in each of two consecutive hours (`earlier`, then `later`), each with at
/// least `min_attempts` attempts.
pub fn breaking_rule(
    earlier: &[LockHealthCell],
    later: &[LockHealthCell],
    threshold: f64,
    min_attempts: u64,
) -> std::collections::BTreeSet<String> {
    let bad = |cells: &[LockHealthCell]| -> std::collections::BTreeSet<String> {
        cells
            .iter()
            .filter(|c| c.attempts() >= min_attempts && c.success_rate() < threshold)
            .map(|c| c.warehouse.clone())
            .collect()
    };
    bad(earlier).intersection(&bad(later)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(warehouse: &str, ok: u64, failed: u64) -> LockHealthCell {
        LockHealthCell {
            warehouse: warehouse.into(),
            hour_start_ms: 0,
            by_reason: [("OK".into(), ok), ("INV_LOCK_TIMEOUT".into(), failed)].into(),
        }
    }

    #[test]
    fn the_rule_needs_two_bad_hours_in_a_row() {
        let earlier = [cell("A", 990, 10), cell("B", 990, 10), cell("C", 5, 5)];
        let later = [cell("A", 995, 5), cell("B", 1000, 0), cell("C", 5, 5)];
        let breaking = breaking_rule(&earlier, &later, 0.999, 100);
        assert_eq!(breaking.into_iter().collect::<Vec<_>>(), ["A"], "B recovered; C has too few attempts");
    }

    #[test]
    fn refusals_on_the_merits_are_not_failures() {
        let cell = LockHealthCell {
            by_reason: [("OK".into(), 990), ("INSUFFICIENT_STOCK".into(), 9), ("STORE_UNAVAILABLE".into(), 1)].into(),
            ..Default::default()
        };
        assert_eq!((cell.attempts(), cell.locked(), cell.failures()), (1000, 990, 1));
        assert!((cell.success_rate() - 0.999).abs() < 1e-12);
    }
}
