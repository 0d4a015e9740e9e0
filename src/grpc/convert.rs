//! Domain values to protobuf messages, and the well-known time types.

use std::time::Duration;

use rust_decimal::Decimal;

use crate::domain::{
    Error, Granted, LifecycleEvent, LockCommand, LockOutcome, LockView, ReleaseKind, SessionView, StockView,
    WatchPosition, format_scaled,
};
use crate::pb;

/// Redis time in ms since the epoch to a protobuf Timestamp.
pub(super) fn timestamp(ms: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

pub(super) fn proto_duration(d: Duration) -> pbjson_types::Duration {
    pbjson_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

/// A protobuf Duration to a std one; negative or malformed is invalid.
pub(super) fn std_duration(d: &pbjson_types::Duration, field: &str) -> Result<Duration, Error> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Error::invalid(field, "must be a non-negative duration"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

pub(crate) fn record(view: &StockView) -> pb::StockRecord {
    let scale = view.unit_scale;
    pb::StockRecord {
        sku: view.record.sku.to_string(),
        warehouse_id: view.record.warehouse.to_string(),
        available: scale.format(view.available()),
        physical: scale.format(view.physical),
        reserved: scale.format(view.reserved),
        in_transit: scale.format(view.in_transit),
        locked: scale.format(view.locked),
        oversold: scale.format(view.oversold()),
        unit_scale: scale.get(),
        version: view.version,
        source_version: view.source_version,
        live_locks: view.live_locks,
    }
}

/// Sum of `available` over records that may differ in unit scale, exactly.
pub(crate) fn total_available<'a>(views: impl IntoIterator<Item = &'a StockView>) -> String {
    views.into_iter().map(|v| Decimal::new(v.available(), v.unit_scale.get())).sum::<Decimal>().normalize().to_string()
}

/// A session as the API shows it.
pub(super) fn session(view: &SessionView) -> pb::Session {
    pb::Session {
        session_id: view.session_id.to_string(),
        holder: view.holder.clone(),
        ttl: Some(proto_duration(view.ttl)),
        expires_at: Some(timestamp(view.expires_at_ms)),
    }
}

pub(super) fn lock(view: &LockView) -> pb::Lock {
    pb::Lock {
        lock_id: view.lock_id.to_string(),
        sku: view.lock_id.record.sku.to_string(),
        warehouse_id: view.lock_id.record.warehouse.to_string(),
        quantity: view.unit_scale.format(view.quantity),
        fencing_token: view.lock_id.token,
        expires_at: Some(timestamp(view.expires_at_ms)),
        created_at: Some(timestamp(view.created_at_ms)),
        max_expires_at: Some(timestamp(view.max_expires_at_ms)),
        ttl: Some(proto_duration(view.ttl)),
        order_id: view.order_id.clone(),
        holder: view.holder.clone(),
        batch_id: view.batch_id.clone().unwrap_or_default(),
        state: pb::LockState::Active.into(),
        session_id: view.lock_id.session().map(|s| s.to_string()).unwrap_or_default(),
    }
}

pub(super) fn release_outcome(kind: ReleaseKind) -> pb::ReleaseOutcome {
    match kind {
        ReleaseKind::Released => pb::ReleaseOutcome::Released,
        ReleaseKind::AlreadyReleased => pb::ReleaseOutcome::AlreadyReleased,
        ReleaseKind::AlreadyExpired => pb::ReleaseOutcome::AlreadyExpired,
        ReleaseKind::ForceReleased => pb::ReleaseOutcome::ForceReleased,
    }
}

pub(super) fn scaled(value: i64, scale: u32) -> String {
    format_scaled(value, scale)
}

/// The action of a lifecycle event as the contract names it.
fn availability_action(action: &str) -> pb::AvailabilityAction {
    use pb::AvailabilityAction as A;
    match action {
        "lock" => A::Lock,
        "renew" => A::Renew,
        "release" => A::Release,
        "commit" => A::Commit,
        "expire" => A::Expire,
        "force_release" => A::ForceRelease,
        "stock.set" => A::StockSet,
        "stock.adjust" => A::StockAdjust,
        "transfer.out" => A::TransferOut,
        "transfer.in" => A::TransferIn,
        "record.repair" => A::RecordRepair,
        _ => A::Unspecified,
    }
}

/// A reason as the contract's enum (every reason the service gives is one
/// of its values; a test checks that).
pub(super) fn error_reason(reason: &str) -> pb::ErrorReason {
    pb::ErrorReason::from_str_name(reason).unwrap_or(pb::ErrorReason::Internal)
}

/// An event as a watcher sees it.
pub(super) fn availability_event(event: &LifecycleEvent, position: &WatchPosition) -> pb::AvailabilityEvent {
    pb::AvailabilityEvent {
        event_id: position.to_string(),
        at: Some(timestamp(event.id.ms as i64)),
        action: availability_action(event.field("action")).into(),
        sku: event.record().0.to_owned(),
        warehouse_id: event.record().1.to_owned(),
        available: event.available(),
        available_before: event.decimal("available_before"),
        locked: event.decimal("locked"),
        physical: event.decimal("physical"),
        reserved: event.decimal("reserved"),
        in_transit: event.decimal("in_transit"),
        version: event.field("version").parse().unwrap_or_default(),
        lock_id: event.lock_id(),
        fencing_token: event.field("token").parse().unwrap_or_default(),
        quantity: event.decimal("quantity"),
        holder: event.field("holder").to_owned(),
        order_id: event.field("order_id").to_owned(),
    }
}

/// The first event of a watch without a resume position: the record as it is.
pub(super) fn snapshot_event(view: &StockView, position: &WatchPosition) -> pb::AvailabilityEvent {
    let record = record(view);
    pb::AvailabilityEvent {
        event_id: position.to_string(),
        action: pb::AvailabilityAction::Snapshot.into(),
        sku: record.sku,
        warehouse_id: record.warehouse_id,
        available: record.available.clone(),
        available_before: record.available,
        locked: record.locked,
        physical: record.physical,
        reserved: record.reserved,
        in_transit: record.in_transit,
        version: record.version,
        ..Default::default()
    }
}

/// What each line of a BatchLock got: its locks (the allocation), the
/// quantities, and its candidates' figures when it was not filled.
pub(super) fn line_results(cmd: &LockCommand, outcome: &LockOutcome) -> Vec<pb::BatchLockLineResult> {
    cmd.lines
        .iter()
        .enumerate()
        .map(|(number, line)| {
            let q = line.quantity.decimal();
            let requested = Decimal::new(q.mantissa, q.scale);
            let locks: Vec<&Granted> = outcome.granted.iter().filter(|g| g.line == number).collect();
            let locked: Decimal = locks.iter().map(|g| Decimal::new(g.lock.quantity, g.lock.unit_scale.get())).sum();
            let figures = outcome.short.get(number).map_or(&[][..], Vec::as_slice);
            pb::BatchLockLineResult {
                line: u32::try_from(number).unwrap_or(u32::MAX),
                requested: requested.normalize().to_string(),
                locked: locked.normalize().to_string(),
                short: (requested - locked).max(Decimal::ZERO).normalize().to_string(),
                locks: locks.iter().map(|g| lock(&g.lock)).collect(),
                candidates: figures
                    .iter()
                    .map(|f| pb::CandidateAvailability {
                        warehouse_id: f.record.warehouse.to_string(),
                        available: f.available.clone(),
                        exists: f.exists,
                    })
                    .collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_split_milliseconds() {
        let ts = timestamp(1_700_000_000_123);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
    }

    #[test]
    fn durations_must_be_non_negative() {
        assert!(std_duration(&pbjson_types::Duration { seconds: -1, nanos: 0 }, "ttl").is_err());
        assert!(std_duration(&pbjson_types::Duration { seconds: 0, nanos: -5 }, "ttl").is_err());
        assert_eq!(std_duration(&pbjson_types::Duration { seconds: 2, nanos: 5 }, "ttl").unwrap(), Duration::new(2, 5));
    }

    /// The contract publishes exactly the reasons the service gives, by the
    /// names ErrorInfo carries on the wire.
    #[test]
    fn error_reason_enum_publishes_every_reason() {
        for name in crate::domain::reason::ALL {
            let value = pb::ErrorReason::from_str_name(name);
            assert!(value.is_some(), "ErrorReason lacks {name}");
            assert_eq!(value.unwrap().as_str_name(), *name);
        }
        let published = (1..200).filter_map(|n| pb::ErrorReason::try_from(n).ok()).count();
        assert_eq!(published, crate::domain::reason::ALL.len(), "ErrorReason has values the service never gives");
    }

    /// Every action the scripts write has its value in the contract.
    #[test]
    fn availability_actions_are_named() {
        let scripts: String =
            std::fs::read_dir("lua").unwrap().map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap()).collect();
        let mut emitted = 0;
        for (i, _) in scripts.match_indices("emit(pk.events, '") {
            let rest = &scripts[i + "emit(pk.events, '".len()..];
            let action = &rest[..rest.find('\'').unwrap()];
            assert_ne!(availability_action(action), pb::AvailabilityAction::Unspecified, "{action} has no value");
            emitted += 1;
        }
        assert!(emitted >= 11, "found {emitted} emits: has emit() changed its shape?");
    }
}
