//! `stocklock.v1.AdminService`: the forced-unlock workflow and the audit trail.
//!
//! A forced unlock is two steps by two people: one operator requests it (the
//! locks it would release are recorded as of that moment), another approves
//! it, and the release runs as one script that also fences the old holders
//! and writes the audit event. The single-step policy, when enabled, lets a
//! request for stale locks only run at once, still audited.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::convert;
use super::validate::{MAX_PAGE_SIZE, actor, lock_filter, optional, page_size, principal, record_key};
use crate::domain::{
    AdminStore, Approval, AuditEvent, AuditFilter, BatchId, Error, ForceUnlockState, ForceUnlockView, Holder, LockId,
    LockTarget, LockView, RequestId, SUCCESS_TARGET,
};
use crate::edge::auth::Principal;
use crate::metrics::ForceUnlockLabels;
use crate::pb;
use crate::pb::admin_service_server::AdminService;

/// Most locks one forced-unlock request may cover.
const MAX_LOCKS_PER_REQUEST: usize = 1000;

/// Longest reason or comment kept.
const MAX_REASON_LEN: usize = 1024;

/// The actor recorded when the stale-lock policy approves.
const POLICY_ACTOR: &str = "policy:stale-locks";

/// How forced unlocks are decided.
#[derive(Clone, Debug)]
pub struct ForceUnlockPolicy {
    /// Locks older than this are stale.
    pub stale_threshold: Duration,
    /// A request that covers stale locks only runs without a second operator.
    pub single_step_stale: bool,
}

/// `stocklock.v1.AdminService` over any [`AdminStore`].
pub struct AdminApi<S> {
    store: Arc<S>,
    policy: ForceUnlockPolicy,
}

impl<S> AdminApi<S> {
    /// The service over `store`.
    pub fn new(store: Arc<S>, policy: ForceUnlockPolicy) -> Self {
        Self { store, policy }
    }
}

/// The operator a call acts as: the principal, or with authentication off the
/// request's `operator` field.
fn operator(principal: &Option<Principal>, field: &str) -> Result<String, Error> {
    match principal {
        Some(_) => Ok(actor(principal)),
        None => Holder::parse(field, "operator").map(|h| h.to_string()),
    }
}

fn reason(text: &str, field: &str, required: bool) -> Result<String, Error> {
    if required && text.trim().is_empty() {
        return Err(Error::invalid(field, "is required: say why, for the audit trail"));
    }
    if text.len() > MAX_REASON_LEN {
        return Err(Error::invalid(field, format!("is longer than {MAX_REASON_LEN} bytes")));
    }
    Ok(text.to_owned())
}

fn millis_of(ts: &pbjson_types::Timestamp) -> i64 {
    ts.seconds * 1000 + i64::from(ts.nanos) / 1_000_000
}

fn state_to_proto(state: ForceUnlockState) -> pb::ForceUnlockState {
    match state {
        ForceUnlockState::Pending => pb::ForceUnlockState::Pending,
        ForceUnlockState::Executed => pb::ForceUnlockState::Executed,
        ForceUnlockState::Rejected => pb::ForceUnlockState::Rejected,
        ForceUnlockState::Expired => pb::ForceUnlockState::Expired,
    }
}

fn request_to_proto(view: ForceUnlockView) -> pb::ForceUnlockRequest {
    pb::ForceUnlockRequest {
        id: view.id,
        state: state_to_proto(view.state).into(),
        requester: view.requester,
        reason: view.reason,
        items: view
            .items
            .into_iter()
            .map(|item| pb::ForceUnlockItem {
                lock_id: item.lock_id.to_string(),
                sku: item.lock_id.record.sku.to_string(),
                warehouse_id: item.lock_id.record.warehouse.to_string(),
                quantity: item.quantity,
                holder: item.holder,
                order_id: item.order_id,
                created_at: Some(convert::timestamp(item.created_at_ms)),
            })
            .collect(),
        created_at: Some(convert::timestamp(view.created_at_ms)),
        expires_at: Some(convert::timestamp(view.expires_at_ms)),
        decided_at: view.decided_at_ms.map(convert::timestamp),
        decided_by: view.decided_by,
        decision_reason: view.decision_reason,
        single_step: view.single_step,
        released_lock_ids: view.released,
        skipped_lock_ids: view.skipped,
    }
}

fn letter_to_proto(letter: crate::domain::DeadLetter) -> pb::DeadLetter {
    let at_ms = crate::domain::EventId::parse(&letter.id).map_or(0, |id| id.ms as i64);
    pb::DeadLetter {
        at: Some(convert::timestamp(at_ms)),
        reason: convert::error_reason(&letter.reason).into(),
        error: letter.error,
        fields: letter.fields.into_iter().collect(),
        id: letter.id,
    }
}

fn event_to_proto(event: AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        id: event.id,
        at: Some(convert::timestamp(event.at_ms)),
        action: event.action,
        actor: event.actor,
        sku: event.sku,
        warehouse_id: event.warehouse_id,
        lock_ids: event.lock_ids,
        reason: event.reason,
        request_id: event.request_id,
        details: event.details.into_iter().collect(),
    }
}

impl<S: AdminStore> AdminApi<S> {
    /// The live locks a selector names.
    async fn select(&self, selector: Option<pb::LockSelector>) -> Result<Vec<LockView>, Error> {
        use pb::lock_selector::Target;
        let target = selector
            .and_then(|s| s.target)
            .ok_or_else(|| Error::invalid("selector", "is required: a lock_id, a batch_id or a filter"))?;
        let ids = match target {
            Target::LockId(id) => vec![LockId::parse(&id, "selector.lock_id")?],
            Target::BatchId(id) => {
                let batch = BatchId::parse(&id, "selector.batch_id")?;
                self.store.lock_ids(&LockTarget::Batch(batch)).await?
            }
            Target::Filter(filter) => {
                let filter = lock_filter(&filter, self.policy.stale_threshold)?;
                let mut locks = Vec::new();
                let mut token = None;
                loop {
                    let page = self.store.list_locks(filter.clone(), MAX_PAGE_SIZE, token).await?;
                    locks.extend(page.locks);
                    if locks.len() > MAX_LOCKS_PER_REQUEST {
                        return Err(Error::invalid(
                            "selector.filter",
                            format!("matches more than {MAX_LOCKS_PER_REQUEST} locks; narrow it"),
                        ));
                    }
                    match page.next_page_token {
                        Some(next) => token = Some(next),
                        None => return Ok(locks),
                    }
                }
            }
        };
        let mut locks = Vec::with_capacity(ids.len());
        for id in ids {
            match self.store.get_lock(&id).await {
                Ok(lock) => locks.push(lock),
                // Ended already: nothing to force.
                Err(Error::LockNotFound { .. } | Error::LockExpired { .. } | Error::LockForceReleased { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(locks)
    }
}

#[tonic::async_trait]
impl<S: AdminStore> AdminService for AdminApi<S> {
    async fn request_force_unlock(
        &self,
        request: Request<pb::RequestForceUnlockRequest>,
    ) -> Result<Response<pb::RequestForceUnlockResponse>, Status> {
        let principal = principal(&request);
        let r = request.into_inner();
        let requester = operator(&principal, &r.operator)?;
        let why = reason(&r.reason, "reason", true)?;
        let request_id = RequestId::parse(&r.request_id, "request_id")?;
        let locks = self.select(r.selector).await?;
        if locks.is_empty() {
            return Err(Error::NoLocksMatched.into());
        }
        // The id follows from the request_id, so a retry after a first
        // attempt that recorded only some partitions records the rest under
        // the same id, and one approval decides them all.
        let digest = sha1_smol::Sha1::from(format!("force_unlock\u{1f}{request_id}")).digest().to_string();
        let id = format!("fu-{}", &digest[..16]);
        let id = self.store.request_force_unlock(&id, &locks, &requester, &why, &request_id).await?;
        let mut view = self.store.get_force_unlock(&id).await?;

        let stale_ms = i64::try_from(self.policy.stale_threshold.as_millis()).unwrap_or(i64::MAX);
        let all_stale = view.items.iter().all(|item| view.created_at_ms - item.created_at_ms >= stale_ms);
        if self.policy.single_step_stale && view.state == ForceUnlockState::Pending && all_stale {
            let policy_request = RequestId::parse(&format!("{}.policy", request_id.as_str()), "request_id")
                .unwrap_or_else(|_| request_id.clone());
            self.store
                .approve_force_unlock(
                    &view,
                    POLICY_ACTOR,
                    Approval::Policy,
                    "single-step policy: stale locks only",
                    &policy_request,
                )
                .await?;
            crate::metrics::METRICS.force_unlocks.get_or_create(&ForceUnlockLabels { mode: "policy".into() }).inc();
            view = self.store.get_force_unlock(&id).await?;
        }
        Ok(Response::new(pb::RequestForceUnlockResponse { request: Some(request_to_proto(view)) }))
    }

    async fn approve_force_unlock(
        &self,
        request: Request<pb::ApproveForceUnlockRequest>,
    ) -> Result<Response<pb::ApproveForceUnlockResponse>, Status> {
        let principal = principal(&request);
        let r = request.into_inner();
        let approver = operator(&principal, &r.operator)?;
        let comment = reason(&r.comment, "comment", false)?;
        let request_id = RequestId::parse(&r.request_id, "request_id")?;
        let id = Holder::parse(&r.id, "id")?.to_string();
        let view = self.store.get_force_unlock(&id).await?;
        self.store.approve_force_unlock(&view, &approver, Approval::Operator, &comment, &request_id).await?;
        crate::metrics::METRICS.force_unlocks.get_or_create(&ForceUnlockLabels { mode: "approved".into() }).inc();
        let view = self.store.get_force_unlock(&id).await?;
        Ok(Response::new(pb::ApproveForceUnlockResponse { request: Some(request_to_proto(view)) }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let r = request.into_inner();
        let before = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let (letters, next) = self.store.dead_letters(page_size(r.page_size), before).await?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            letters: letters.into_iter().map(letter_to_proto).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn repair_record(
        &self,
        request: Request<pb::RepairRecordRequest>,
    ) -> Result<Response<pb::RepairRecordResponse>, Status> {
        let principal = principal(&request);
        let r = request.into_inner();
        let actor = operator(&principal, &r.operator)?;
        let why = reason(&r.reason, "reason", true)?;
        let request_id = RequestId::parse(&r.request_id, "request_id")?;
        let record = record_key(&r.sku, &r.warehouse_id, "")?;
        let repair = self.store.repair_record(&record, &actor, &why, &request_id).await?;
        let scale = repair.record.unit_scale;
        Ok(Response::new(pb::RepairRecordResponse {
            locked_before: scale.format(repair.locked_before),
            locked_after: scale.format(repair.locked_after),
            fixed_expiries: u32::try_from(repair.fixed_expiries).unwrap_or(u32::MAX),
            dropped_expiries: u32::try_from(repair.dropped_expiries).unwrap_or(u32::MAX),
            replayed: repair.replayed,
            record: Some(convert::record(&repair.record)),
        }))
    }

    async fn reject_force_unlock(
        &self,
        request: Request<pb::RejectForceUnlockRequest>,
    ) -> Result<Response<pb::RejectForceUnlockResponse>, Status> {
        let principal = principal(&request);
        let r = request.into_inner();
        let actor = operator(&principal, &r.operator)?;
        let why = reason(&r.reason, "reason", true)?;
        let request_id = RequestId::parse(&r.request_id, "request_id")?;
        let id = Holder::parse(&r.id, "id")?.to_string();
        self.store.reject_force_unlock(&id, &actor, &why, &request_id).await?;
        let view = self.store.get_force_unlock(&id).await?;
        Ok(Response::new(pb::RejectForceUnlockResponse { request: Some(request_to_proto(view)) }))
    }

    async fn list_force_unlock_requests(
        &self,
        request: Request<pb::ListForceUnlockRequestsRequest>,
    ) -> Result<Response<pb::ListForceUnlockRequestsResponse>, Status> {
        let r = request.into_inner();
        let state = match pb::ForceUnlockState::try_from(r.state) {
            Ok(pb::ForceUnlockState::Unspecified) => None,
            Ok(pb::ForceUnlockState::Pending) => Some(ForceUnlockState::Pending),
            Ok(pb::ForceUnlockState::Executed) => Some(ForceUnlockState::Executed),
            Ok(pb::ForceUnlockState::Rejected) => Some(ForceUnlockState::Rejected),
            Ok(pb::ForceUnlockState::Expired) => Some(ForceUnlockState::Expired),
            Err(_) => return Err(Error::invalid("state", format!("{} is not a ForceUnlockState", r.state)).into()),
        };
        let token = (!r.page_token.is_empty()).then_some(r.page_token);
        let (requests, next) = self.store.list_force_unlocks(state, page_size(r.page_size), token).await?;
        Ok(Response::new(pb::ListForceUnlockRequestsResponse {
            requests: requests.into_iter().map(request_to_proto).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let r = request.into_inner();
        let filter = AuditFilter {
            since_ms: r.since.as_ref().map(millis_of),
            until_ms: r.until.as_ref().map(millis_of),
            actor: optional(&r.actor, |v| Holder::parse(v, "actor").map(|h| h.to_string()))?,
            sku: optional(&r.sku, |v| crate::domain::Sku::parse(v, "sku").map(|s| s.to_string()))?,
            action: optional(&r.action, |v| Holder::parse(v, "action").map(|a| a.to_string()))?,
        };
        let token = (!r.page_token.is_empty()).then_some(r.page_token);
        let (events, next) = self.store.list_audit(&filter, page_size(r.page_size), token).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events.into_iter().map(event_to_proto).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn lock_health(
        &self,
        request: Request<pb::LockHealthRequest>,
    ) -> Result<Response<pb::LockHealthResponse>, Status> {
        let r = request.into_inner();
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        let until = r.until.as_ref().map_or(now, millis_of);
        let since = r.since.as_ref().map_or(until - 24 * 3_600_000, millis_of);
        if since > until {
            return Err(Error::invalid("since", "is after until").into());
        }
        if until - since > 366 * 24 * 3_600_000 {
            return Err(Error::invalid("since", "is more than a year before until").into());
        }
        let warehouse = optional(&r.warehouse_id, |v| crate::domain::WarehouseId::parse(v, "warehouse_id"))?;
        let cells = self.store.lock_health(since, until, warehouse.as_ref().map(|w| w.as_str())).await?;
        let cells = cells
            .into_iter()
            .map(|cell| pb::LockHealthCell {
                warehouse_id: cell.warehouse.clone(),
                hour: Some(convert::timestamp(cell.hour_start_ms)),
                attempts: cell.attempts(),
                locked: cell.locked(),
                failures: cell.failures(),
                success_rate: cell.success_rate(),
                below_target: cell.success_rate() < SUCCESS_TARGET,
                by_reason: cell.by_reason.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(pb::LockHealthResponse { cells, target: SUCCESS_TARGET }))
    }

    async fn get_lock_stats(
        &self,
        _request: Request<pb::GetLockStatsRequest>,
    ) -> Result<Response<pb::GetLockStatsResponse>, Status> {
        let stats = self.store.lock_stats(self.policy.stale_threshold).await?;
        Ok(Response::new(pb::GetLockStatsResponse {
            live_locks: stats.live,
            stale_locks: stats.stale,
            stale_threshold: Some(convert::proto_duration(self.policy.stale_threshold)),
            oldest_created_at: stats.oldest_created_at_ms.map(convert::timestamp),
        }))
    }
}
