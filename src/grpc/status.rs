//! The one table from domain errors to gRPC statuses. Each error becomes one
//! code, an `ErrorInfo` with its reason (domain `stocklock.v1`) and the
//! figures a client needs, plus `BadRequest` field violations for bad input
//! and `PreconditionFailure` violations for each short line.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::domain::Error;

/// The `ErrorInfo.domain` of every error this service returns.
pub const ERROR_DOMAIN: &str = "stocklock.v1";

/// How long a client should wait before retrying a transient store error.
const RETRY_AFTER: Duration = Duration::from_millis(100);

fn info(details: &mut ErrorDetails, reason: &str, metadata: &[(&str, String)]) {
    let metadata: HashMap<String, String> = metadata.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    details.set_error_info(reason, ERROR_DOMAIN, metadata);
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let reason = error.reason();
        tracing::Span::current().record("reason", reason);
        let mut details = ErrorDetails::new();
        let code = match &error {
            Error::InvalidArgument { field, description } => {
                details.add_bad_request_violation(field.clone(), description.clone());
                info(&mut details, reason, &[("field", field.clone())]);
                Code::InvalidArgument
            }
            Error::QuantityExceedsLock { locked } => {
                details.add_bad_request_violation("quantity", format!("exceeds the locked quantity {locked}"));
                info(&mut details, reason, &[("field", "quantity".into()), ("locked", locked.clone())]);
                Code::InvalidArgument
            }
            Error::InsufficientStock { shortages } => {
                for s in shortages {
                    details.add_precondition_failure_violation(
                        reason,
                        format!("lines[{}]", s.line),
                        format!(
                            "sku {} in warehouse {}: requested {}, available {}{}",
                            s.record.sku,
                            s.record.warehouse,
                            s.requested,
                            s.available,
                            if s.exists { "" } else { " (no record)" }
                        ),
                    );
                }
                let first = &shortages[0];
                // A line with candidates has a violation per candidate, and is one short line.
                let mut lines: Vec<String> = shortages.iter().map(|s| s.line.to_string()).collect();
                lines.dedup();
                info(
                    &mut details,
                    reason,
                    &[
                        ("sku", first.record.sku.to_string()),
                        ("warehouse_id", first.record.warehouse.to_string()),
                        ("requested", first.requested.clone()),
                        ("available", first.available.clone()),
                        ("line", first.line.to_string()),
                        ("short_lines", lines.join(",")),
                    ],
                );
                Code::FailedPrecondition
            }
            Error::NotAvailable { record, line } => {
                let mut metadata =
                    vec![("sku", record.sku.to_string()), ("warehouse_id", record.warehouse.to_string())];
                if let Some(line) = line {
                    metadata.push(("line", line.to_string()));
                }
                info(&mut details, reason, &metadata);
                Code::NotFound
            }
            Error::LockNotFound { lock_id, ended, moved_to } => {
                let mut metadata = vec![("lock_id", lock_id.clone())];
                if let Some(ended) = ended {
                    metadata.push(("state", format!("{ended:?}").to_uppercase()));
                }
                if let Some(moved_to) = moved_to {
                    metadata.push(("moved_to", moved_to.clone()));
                }
                info(&mut details, reason, &metadata);
                Code::NotFound
            }
            Error::LockExpired { lock_id, available } => {
                let mut metadata = vec![("lock_id", lock_id.clone()), ("state", "EXPIRED".into())];
                if let Some(available) = available {
                    metadata.push(("available", available.clone()));
                }
                info(&mut details, reason, &metadata);
                Code::FailedPrecondition
            }
            Error::LockAlreadyCommitted { lock_id } => {
                info(&mut details, reason, &[("lock_id", lock_id.clone())]);
                Code::FailedPrecondition
            }
            Error::LockForceReleased { lock_id } => {
                info(&mut details, reason, &[("lock_id", lock_id.clone()), ("state", "FORCE_RELEASED".into())]);
                Code::NotFound
            }
            Error::ForceUnlockNotFound { id } => {
                info(&mut details, reason, &[("id", id.clone())]);
                Code::NotFound
            }
            Error::ForceUnlockNotPending { id, state } => {
                info(&mut details, reason, &[("id", id.clone()), ("state", state.clone())]);
                Code::FailedPrecondition
            }
            Error::ForceUnlockExpired { id } => {
                info(&mut details, reason, &[("id", id.clone())]);
                Code::FailedPrecondition
            }
            Error::TwoPersonRule { requester } => {
                info(&mut details, reason, &[("requester", requester.clone())]);
                Code::PermissionDenied
            }
            Error::NoLocksMatched => {
                info(&mut details, reason, &[]);
                Code::FailedPrecondition
            }
            Error::RecordBusy { attempts } => {
                info(&mut details, reason, &[("attempts", attempts.to_string())]);
                Code::Aborted
            }
            Error::RequestInProgress { request_id } => {
                info(&mut details, reason, &[("request_id", request_id.clone())]);
                Code::Aborted
            }
            Error::Unauthenticated(_) => {
                info(&mut details, reason, &[]);
                Code::Unauthenticated
            }
            Error::RoleNotAllowed { role, method } => {
                info(&mut details, reason, &[("role", role.clone()), ("method", method.clone())]);
                Code::PermissionDenied
            }
            Error::RateLimited { retry_after } => {
                details.set_retry_info(Some(*retry_after));
                info(&mut details, reason, &[("retry_after_ms", retry_after.as_millis().to_string())]);
                Code::ResourceExhausted
            }
            Error::Overloaded { retry_after } => {
                details.set_retry_info(Some(*retry_after));
                info(&mut details, reason, &[("retry_after_ms", retry_after.as_millis().to_string())]);
                Code::ResourceExhausted
            }
            Error::DeadlinePassed => {
                info(&mut details, reason, &[]);
                Code::DeadlineExceeded
            }
            Error::HolderMismatch { lock_id } => {
                info(&mut details, reason, &[("lock_id", lock_id.clone())]);
                Code::PermissionDenied
            }
            Error::SessionNotFound { session_id } => {
                info(&mut details, reason, &[("session_id", session_id.clone())]);
                Code::NotFound
            }
            Error::SessionEnded { session_id, .. } => {
                info(&mut details, reason, &[("session_id", session_id.clone())]);
                Code::FailedPrecondition
            }
            Error::LockInSession { lock_id } => {
                info(&mut details, reason, &[("lock_id", lock_id.clone())]);
                Code::FailedPrecondition
            }
            Error::BatchNotFound { batch_id } => {
                info(&mut details, reason, &[("batch_id", batch_id.clone())]);
                Code::NotFound
            }
            Error::IdempotencyKeyReused { request_id } => {
                info(&mut details, reason, &[("request_id", request_id.clone())]);
                Code::AlreadyExists
            }
            Error::UnitScaleInUse { current } => {
                details.add_precondition_failure_violation(reason, "unit_scale", error.to_string());
                info(&mut details, reason, &[("unit_scale", current.to_string())]);
                Code::FailedPrecondition
            }
            Error::NegativeStock { field } => {
                details.add_precondition_failure_violation(reason, field.clone(), error.to_string());
                info(&mut details, reason, &[("field", field.clone())]);
                Code::FailedPrecondition
            }
            Error::StoreTimeout => {
                details.set_retry_info(Some(RETRY_AFTER));
                info(&mut details, reason, &[]);
                Code::DeadlineExceeded
            }
            Error::StoreUnavailable { detail } => {
                tracing::warn!(%detail, "stock store unavailable");
                details.set_retry_info(Some(RETRY_AFTER));
                info(&mut details, reason, &[]);
                return Status::with_error_details(
                    Code::Unavailable,
                    "the stock store is unavailable; retry with the same request_id",
                    details,
                );
            }
            Error::StoreOutOfMemory => {
                tracing::error!("stock store out of memory: writes are refused");
                details.set_retry_info(Some(Duration::from_secs(1)));
                info(&mut details, reason, &[]);
                Code::ResourceExhausted
            }
            Error::Internal { detail } => {
                tracing::error!(%detail, "internal error");
                info(&mut details, reason, &[]);
                return Status::with_error_details(Code::Internal, "internal error", details);
            }
        };
        Status::with_error_details(code, error.to_string(), details)
    }
}
