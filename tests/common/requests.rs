//! Request builders and assertions on failed calls.

use super::*;

pub fn lock_request(sku: &str, warehouse: &str, quantity: &str, request_id: &str) -> pb::LockRequest {
    pb::LockRequest {
        candidates: None,
        sku: sku.into(),
        warehouse_id: warehouse.into(),
        quantity: quantity.into(),
        ttl: Some(pbjson_types::Duration { seconds: 60, nanos: 0 }),
        order_id: format!("order-{request_id}"),
        request_id: request_id.into(),
        holder: "order-service".into(),
        session_id: String::new(),
    }
}

pub fn batch_line(sku: &str, warehouse: &str, quantity: &str) -> pb::BatchLockLine {
    pb::BatchLockLine { candidates: None, sku: sku.into(), warehouse_id: warehouse.into(), quantity: quantity.into() }
}

/// A BatchLock of `lines` by order-service for order-1, TTL 60 s.
pub fn batch(lines: Vec<pb::BatchLockLine>, request_id: &str) -> pb::BatchLockRequest {
    pb::BatchLockRequest {
        policy: 0,
        lines,
        ttl: secs(60),
        order_id: "order-1".into(),
        request_id: request_id.into(),
        holder: "order-service".into(),
        session_id: String::new(),
    }
}

pub fn secs(seconds: i64) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration { seconds, nanos: 0 })
}

pub fn millis(ms: i64) -> Option<pbjson_types::Duration> {
    Some(pbjson_types::Duration { seconds: ms / 1000, nanos: ((ms % 1000) * 1_000_000) as i32 })
}

/// The ErrorInfo reason of a status; panics when there is none.
pub fn reason(status: &Status) -> String {
    let info = status.get_details_error_info().unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "stocklock.v1");
    info.reason
}

/// Asserts the code and reason of a failed call, and returns the status.
#[track_caller]
pub fn expect_error<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, expected_reason: &str) -> Status {
    let status = result.expect_err("the call should have failed");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason(&status), expected_reason, "{status:?}");
    status
}

/// The BadRequest field violations of a status.
pub fn bad_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}
