//! What `stocklock admin` prints: aligned tables for people, JSON for scripts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::pb;

pub(super) fn to_system_time(t: &pbjson_types::Timestamp) -> SystemTime {
    UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
}

pub(super) fn age(t: &pbjson_types::Timestamp) -> String {
    let elapsed = SystemTime::now().duration_since(to_system_time(t)).unwrap_or_default();
    humantime::format_duration(Duration::from_secs(elapsed.as_secs())).to_string()
}

pub(super) fn time(t: &Option<pbjson_types::Timestamp>) -> String {
    t.as_ref().map(|t| humantime::format_rfc3339_millis(to_system_time(t)).to_string()).unwrap_or_default()
}

pub(super) fn record_row(r: &pb::StockRecord) -> Vec<String> {
    vec![
        r.sku.clone(),
        r.warehouse_id.clone(),
        r.available.clone(),
        r.physical.clone(),
        r.reserved.clone(),
        r.in_transit.clone(),
        r.locked.clone(),
        r.oversold.clone(),
        r.live_locks.to_string(),
    ]
}

pub(super) fn lock_row(l: &pb::Lock) -> Vec<String> {
    let expires_in = l
        .expires_at
        .as_ref()
        .and_then(|t| to_system_time(t).duration_since(SystemTime::now()).ok())
        .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
        .unwrap_or_else(|| "0s".into());
    vec![
        l.lock_id.clone(),
        l.quantity.clone(),
        l.holder.clone(),
        l.order_id.clone(),
        l.created_at.as_ref().map(age).unwrap_or_default(),
        expires_in,
        l.batch_id.clone(),
    ]
}

pub(super) fn unlock_row(r: &pb::ForceUnlockRequest) -> Vec<String> {
    let state = match r.state() {
        pb::ForceUnlockState::Pending => "pending",
        pb::ForceUnlockState::Executed if r.single_step => "executed (policy)",
        pb::ForceUnlockState::Executed => "executed",
        pb::ForceUnlockState::Rejected => "rejected",
        pb::ForceUnlockState::Expired => "expired",
        pb::ForceUnlockState::Unspecified => "unknown",
    };
    vec![
        r.id.clone(),
        state.into(),
        r.requester.clone(),
        r.items.len().to_string(),
        r.reason.clone(),
        r.decided_by.clone(),
        r.released_lock_ids.len().to_string(),
        r.created_at.as_ref().map(age).unwrap_or_default(),
    ]
}

pub(super) fn letter_row(l: &pb::DeadLetter) -> Vec<String> {
    let mut fields: Vec<_> = l.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    fields.sort();
    vec![time(&l.at), l.reason().as_str_name().to_owned(), l.error.clone(), fields.join(" ")]
}

pub(super) fn event_row(e: &pb::AuditEvent) -> Vec<String> {
    let mut details: Vec<_> =
        e.details.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}={v}")).collect();
    details.sort();
    vec![
        time(&e.at),
        e.action.clone(),
        e.actor.clone(),
        e.sku.clone(),
        e.warehouse_id.clone(),
        e.lock_ids.join(","),
        e.reason.clone(),
        details.join(" "),
    ]
}

/// Prints rows as an aligned table, or, with `--json`, the service's
/// messages themselves in the protobuf JSON mapping (the mapping of the HTTP
/// API): an object, or an array of them, per call.
pub(super) struct Output {
    pub(super) json: bool,
}

impl Output {
    /// `messages` as JSON, or `rows()` under `columns` as a table.
    pub(super) fn show<T: serde::Serialize + ?Sized>(
        &self,
        messages: &T,
        columns: &[&str],
        rows: impl FnOnce() -> Vec<Vec<String>>,
    ) {
        if self.json {
            match serde_json::to_string(messages) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("cannot print the answer as JSON: {e}"),
            }
            return;
        }
        self.table(columns, rows());
    }

    fn table(&self, columns: &[&str], rows: Vec<Vec<String>>) {
        if rows.is_empty() {
            println!("(none)");
            return;
        }
        let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            println!("{}", padded.join("  ").trim_end());
        };
        line(columns.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>().iter().map(String::as_str).collect());
        for row in &rows {
            line(row.iter().map(String::as_str).collect());
        }
    }
}
