//! Operations on locks by people rather than order services: forced unlocks
//! under a two-person rule, the audit trail, and lock statistics.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use super::{Error, LockId, LockView, RequestId, StockStore};

/// Where a forced-unlock request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForceUnlockState {
    /// Waiting for a second operator.
    Pending,
    /// The locks were released.
    Executed,
    /// Rejected or withdrawn.
    Rejected,
    /// Not decided in time.
    Expired,
}

impl ForceUnlockState {
    /// The name stored in Redis and shown in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Executed => "EXECUTED",
            Self::Rejected => "REJECTED",
            Self::Expired => "EXPIRED",
        }
    }
}

/// A lock as a forced-unlock request saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForceUnlockItem {
    /// The lock.
    pub lock_id: LockId,
    /// Its quantity, as a decimal.
    pub quantity: String,
    /// Who held it.
    pub holder: String,
    /// For which order.
    pub order_id: String,
    /// When it was taken (Redis ms).
    pub created_at_ms: i64,
}

/// A forced-unlock request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForceUnlockView {
    /// Its id.
    pub id: String,
    /// Where it stands (Expired is derived from `expires_at_ms`).
    pub state: ForceUnlockState,
    /// Who asked.
    pub requester: String,
    /// Why.
    pub reason: String,
    /// What it would release, as of the request.
    pub items: Vec<ForceUnlockItem>,
    /// Redis ms.
    pub created_at_ms: i64,
    /// A pending request expires at this instant (Redis ms).
    pub expires_at_ms: i64,
    /// When it was decided (Redis ms).
    pub decided_at_ms: Option<i64>,
    /// Who decided.
    pub decided_by: String,
    /// The decider's comment.
    pub decision_reason: String,
    /// Executed by the stale-lock policy, without a second operator.
    pub single_step: bool,
    /// Released on execution.
    pub released: Vec<String>,
    /// Ended by themselves before execution.
    pub skipped: Vec<String>,
}

/// Who approves a forced unlock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Approval {
    /// A second operator, never the requester.
    Operator,
    /// The stale-lock policy, for locks older than the stale threshold.
    Policy,
}

/// One entry of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// The stream id (`<ms>-<seq>`), increasing.
    pub id: String,
    /// Redis time in ms.
    pub at_ms: i64,
    /// What happened, e.g. `stock.set`.
    pub action: String,
    /// Who did it.
    pub actor: String,
    /// The SKU, if the action concerns one record.
    pub sku: String,
    /// The warehouse, if the action concerns one record.
    pub warehouse_id: String,
    /// Locks the action concerns.
    pub lock_ids: Vec<String>,
    /// Why, as given by the actor.
    pub reason: String,
    /// The caller's request_id.
    pub request_id: String,
    /// Action-specific figures.
    pub details: BTreeMap<String, String>,
}

/// Filters of the audit trail, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// From this Redis ms on.
    pub since_ms: Option<i64>,
    /// Up to this Redis ms.
    pub until_ms: Option<i64>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Only this SKU.
    pub sku: Option<String>,
    /// Only this action.
    pub action: Option<String>,
}

/// Counts of live and stale locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockStats {
    /// Live locks.
    pub live: u64,
    /// Live locks older than the stale threshold.
    pub stale: u64,
    /// Creation of the oldest live lock (Redis ms).
    pub oldest_created_at_ms: Option<i64>,
}

/// Ingestion's backlog, for operators and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    /// Entries not yet delivered to the group (None when Redis cannot tell).
    pub lag: Option<u64>,
    /// Entries delivered but not yet acknowledged.
    pub pending: u64,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
}

/// A stock change that could not be applied, set aside in the dead-letter
/// stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its entry id in the dead-letter stream.
    pub id: String,
    /// Why: the reason of the error that refused it.
    pub reason: String,
    /// The error, for people.
    pub error: String,
    /// The change as it came (and where it came from).
    pub fields: Vec<(String, String)>,
}

/// The storage port of the operations.
pub trait AdminStore: StockStore {
    /// The backlog of the ingestion stream's consumer `group`.
    fn ingest_stats(&self, group: &str) -> impl Future<Output = Result<IngestStats, Error>> + Send;

    /// Up to `limit` dead letters, newest first, older than the entry
    /// `before` when given (a previous page's last id); and the id to pass
    /// as `before` for the next page, if there may be one. One bounded call.
    fn dead_letters(
        &self,
        limit: usize,
        before: Option<&str>,
    ) -> impl Future<Output = Result<(Vec<DeadLetter>, Option<String>), Error>> + Send;

    /// Records a pending request for `items` under `id`; returns the id of
    /// the request (the first call's, when this retries it).
    fn request_force_unlock(
        &self,
        id: &str,
        items: &[LockView],
        requester: &str,
        reason: &str,
        request_id: &RequestId,
    ) -> impl Future<Output = Result<String, Error>> + Send;
    /// Executes a pending request.
    fn approve_force_unlock(
        &self,
        request: &ForceUnlockView,
        approver: &str,
        approval: Approval,
        comment: &str,
        request_id: &RequestId,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// Rejects a pending request.
    fn reject_force_unlock(
        &self,
        id: &str,
        actor: &str,
        reason: &str,
        request_id: &RequestId,
    ) -> impl Future<Output = Result<(), Error>> + Send;
    /// One request.
    fn get_force_unlock(&self, id: &str) -> impl Future<Output = Result<ForceUnlockView, Error>> + Send;
    /// Requests, newest first, optionally of one state.
    fn list_force_unlocks(
        &self,
        state: Option<ForceUnlockState>,
        page_size: usize,
        page_token: Option<String>,
    ) -> impl Future<Output = Result<(Vec<ForceUnlockView>, Option<String>), Error>> + Send;
    /// The audit trail, oldest first.
    fn list_audit(
        &self,
        filter: &AuditFilter,
        page_size: usize,
        page_token: Option<String>,
    ) -> impl Future<Output = Result<(Vec<AuditEvent>, Option<String>), Error>> + Send;
    /// Hourly lock health per warehouse, for hours starting in [from_ms, to_ms].
    fn lock_health(
        &self,
        from_ms: i64,
        to_ms: i64,
        warehouse: Option<&str>,
    ) -> impl Future<Output = Result<Vec<crate::domain::LockHealthCell>, Error>> + Send;
    /// Checks the records among about `count`, from a scan cursor (0 to
    /// start), of `warehouse` (or all); returns them and the next cursor (0
    /// at the end).
    fn check_records(
        &self,
        cursor: u64,
        count: usize,
        warehouse: Option<&super::WarehouseId>,
    ) -> impl Future<Output = Result<(Vec<super::RecordCheck>, u64), Error>> + Send;
    /// Repairs a record from its lock set, atomically and audited.
    fn repair_record(
        &self,
        record: &super::RecordKey,
        actor: &str,
        reason: &str,
        request_id: &RequestId,
    ) -> impl Future<Output = Result<super::Repair, Error>> + Send;
    /// Takes the lease `name` for `ttl` unless another replica holds it:
    /// spreads periodic work over replicas, one at a time.
    fn try_lease(&self, name: &str, ttl: Duration) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Counts live locks, and those older than `stale_after`.
    fn lock_stats(&self, stale_after: Duration) -> impl Future<Output = Result<LockStats, Error>> + Send;
}
