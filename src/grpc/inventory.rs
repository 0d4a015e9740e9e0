//! `stocklock.v1.InventoryService`: each handler validates its request
//! (`validate`), runs one command on the store, and converts the outcome
//! (`convert`); an error goes back through the one table in `status`.

use std::sync::Arc;

use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

use super::{Limits, convert, holder, validate, watch};
use crate::domain::{
    AdjustStockCommand, BatchId, BatchPolicy, CommitCommand, Error, EventHub, LockCommand, LockId, LockOutcome,
    OpenSessionCommand, OrderId, Quantity, RecordKey, ReleaseCommand, RenewCommand, RequestId, ScaledStock, SessionId,
    SetStockCommand, Sku, StockStore, TransferLockCommand, UnitScale, WarehouseId, is_service_failure, reason,
};
use crate::edge::admission::{Admission, Deadline};
use crate::pb;
use crate::pb::inventory_service_server::InventoryService;

/// `stocklock.v1.InventoryService` over any [`StockStore`].
pub struct InventoryApi<S> {
    store: Arc<S>,
    limits: Limits,
    events: EventHub,
    admission: Arc<Admission>,
}

impl<S> InventoryApi<S> {
    /// The service over `store`, validating requests against `limits`;
    /// watchers follow `events`. Lock, BatchLock and TransferLock take a
    /// slot of `admission` themselves (the others are admitted by its layer).
    pub fn new(store: Arc<S>, limits: Limits, events: EventHub, admission: Arc<Admission>) -> Self {
        Self { store, limits, events, admission }
    }
}

impl<S: StockStore> InventoryApi<S> {
    /// Counts each line's outcome (metrics and hourly lock health) and
    /// passes `result` on: a lock by the warehouse that gave the stock, a
    /// refusal by each warehouse the line named (its candidates), and a
    /// line that was not filled by each candidate that gave nothing.
    fn count_lock_outcomes(&self, cmd: &LockCommand, result: Result<LockOutcome, Error>) -> Result<LockOutcome, Error> {
        let outcomes: Vec<(&str, &'static str)> = match &result {
            Err(e) => refused(cmd, e.reason()),
            Ok(outcome) => {
                let mut outcomes: Vec<(&str, &'static str)> =
                    outcome.granted.iter().map(|g| (g.lock.lock_id.record.warehouse.as_str(), "OK")).collect();
                for (number, figures) in outcome.short.iter().enumerate() {
                    let gave = |w: &str| {
                        outcome
                            .granted
                            .iter()
                            .any(|g| g.line == number && g.lock.lock_id.record.warehouse.as_str() == w)
                    };
                    outcomes.extend(
                        figures
                            .iter()
                            .map(|f| f.record.warehouse.as_str())
                            .filter(|w| !gave(w))
                            .map(|w| (w, crate::domain::reason::INSUFFICIENT_STOCK)),
                    );
                }
                outcomes
            }
        };
        self.count_outcomes(&outcomes);
        result
    }

    /// A slot within the caller's `deadline` for a call that locks. A
    /// refusal (OVERLOADED, DEADLINE_PASSED) is a lock outcome of every
    /// warehouse `named` gives for its reason: an overload lowers the
    /// success rate.
    async fn admit<'a>(
        &self,
        deadline: Option<std::time::Duration>,
        named: impl FnOnce(&'static str) -> Vec<(&'a str, &'static str)>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        let admitted = self.admission.admit(deadline).await;
        if let Err(e) = &admitted {
            self.count_outcomes(&named(e.reason()));
        }
        admitted
    }

    fn count_outcomes(&self, outcomes: &[(&str, &'static str)]) {
        for (warehouse, reason) in outcomes {
            crate::metrics::METRICS.lock_outcome(warehouse, reason);
        }
        self.store.record_lock_outcomes(outcomes);
    }

    /// Replica acknowledgements of this call's change, made after `mark`
    /// was taken, when configured.
    async fn durability(&self, mark: u64) -> Option<pb::Durability> {
        self.store.durability(mark).await.map(|d| pb::Durability {
            replicas_acknowledged: d.acknowledged,
            replicas_required: d.required,
            durable: d.durable(),
        })
    }
}

#[tonic::async_trait]
impl<S: StockStore> InventoryService for InventoryApi<S> {
    type WatchAvailabilityStream = Responses<pb::AvailabilityEvent, pb::WatchAvailabilityResponse>;
    type KeepAliveStream = tokio_stream::wrappers::ReceiverStream<Result<pb::KeepAliveResponse, Status>>;
    type WatchHolderStream = Responses<pb::HolderEvent, pb::WatchHolderResponse>;

    async fn watch_holder(
        &self,
        request: Request<pb::WatchHolderRequest>,
    ) -> Result<Response<Self::WatchHolderStream>, Status> {
        let principal = validate::principal(&request);
        let stream = holder::watch_holder(&self.store, &self.events, &principal, request.into_inner()).await?;
        Ok(Response::new(stream.map(|item| item.map(|event| pb::WatchHolderResponse { event: Some(event) }))))
    }

    async fn open_session(
        &self,
        request: Request<pb::OpenSessionRequest>,
    ) -> Result<Response<pb::OpenSessionResponse>, Status> {
        let principal = validate::principal(&request);
        let r = request.into_inner();
        let cmd = OpenSessionCommand {
            ttl: validate::lock_ttl(&self.limits, r.ttl.as_ref())?,
            holder: validate::holder(&principal, &r.holder)?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
        };
        let outcome = self.store.open_session(cmd).await?;
        Ok(Response::new(pb::OpenSessionResponse {
            session: Some(convert::session(&outcome.session)),
            replayed: outcome.replayed,
        }))
    }

    async fn keep_alive(
        &self,
        request: Request<tonic::Streaming<pb::KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let principal = validate::principal(&request);
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let store = Arc::clone(&self.store);
        let closed = self.events.closed();
        tokio::spawn(async move {
            // One answer per keep-alive, in order; the first refusal ends
            // the stream with its status, so the holder learns of the loss.
            let answering = async {
                while let Some(next) = inbound.message().await.transpose() {
                    let answer = match next {
                        Ok(r) => keep_alive_once(&*store, &principal, &r.session_id, &r.holder)
                            .await
                            .map(|session| pb::KeepAliveResponse { session: Some(session) }),
                        Err(status) => Err(status),
                    };
                    let failed = answer.is_err();
                    if tx.send(answer).await.is_err() || failed {
                        break;
                    }
                }
            };
            tokio::select! {
                () = answering => {}
                // A draining service ends the stream, so the client goes
                // on keeping its session alive through another replica.
                () = closed => {
                    let _ = tx.send(Err(Status::unavailable("the service is shutting down; keep alive elsewhere"))).await;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn keep_alive_once(
        &self,
        request: Request<pb::KeepAliveOnceRequest>,
    ) -> Result<Response<pb::KeepAliveOnceResponse>, Status> {
        let principal = validate::principal(&request);
        let r = request.get_ref();
        let session = keep_alive_once(&*self.store, &principal, &r.session_id, &r.holder).await?;
        Ok(Response::new(pb::KeepAliveOnceResponse { session: Some(session) }))
    }

    async fn close_session(
        &self,
        request: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let principal = validate::principal(&request);
        let r = request.into_inner();
        let session = SessionId::parse(&r.session_id, "session_id")?;
        let holder = validate::optional_holder(&principal, &r.holder)?;
        let outcome = self.store.close_session(&session, holder.as_ref()).await?;
        Ok(Response::new(pb::CloseSessionResponse { released: outcome.released, closed_now: outcome.closed_now }))
    }

    async fn watch_availability(
        &self,
        request: Request<pb::WatchAvailabilityRequest>,
    ) -> Result<Response<Self::WatchAvailabilityStream>, Status> {
        let stream = watch::watch(&self.store, &self.events, &self.limits, request.into_inner()).await?;
        Ok(Response::new(stream.map(|item| item.map(|event| pb::WatchAvailabilityResponse { event: Some(event) }))))
    }

    async fn set_stock(&self, request: Request<pb::SetStockRequest>) -> Result<Response<pb::SetStockResponse>, Status> {
        let principal = validate::principal(&request);
        let r = request.into_inner();
        let unit_scale = UnitScale::new(r.unit_scale, "unit_scale")?;
        if r.source_version > crate::domain::MAX_SCALED as u64 {
            return Err(Error::invalid("source_version", "must be below 2^53").into());
        }
        let cmd = SetStockCommand {
            record: validate::record_key(&r.sku, &r.warehouse_id, "")?,
            physical: ScaledStock::parse(&r.physical, unit_scale, "physical")?,
            reserved: ScaledStock::parse(&r.reserved, unit_scale, "reserved")?,
            in_transit: ScaledStock::parse(&r.in_transit, unit_scale, "in_transit")?,
            unit_scale,
            source_version: r.source_version,
            request_id: validate::optional(&r.request_id, |v| RequestId::parse(v, "request_id"))?,
            actor: validate::actor(&principal),
        };
        cmd.check_in_range()?;
        let mark = self.store.durability_mark();
        let outcome = self.store.set_stock(cmd).await?;
        Ok(Response::new(pb::SetStockResponse {
            applied: outcome.applied,
            stale: !outcome.applied,
            record: Some(convert::record(&outcome.record)),
            durability: self.durability(mark).await,
        }))
    }

    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::AdjustStockResponse>, Status> {
        let principal = validate::principal(&request);
        let r = request.into_inner();
        let cmd = AdjustStockCommand {
            record: validate::record_key(&r.sku, &r.warehouse_id, "")?,
            physical: validate::signed_or_zero(&r.physical_delta, "physical_delta")?,
            reserved: validate::signed_or_zero(&r.reserved_delta, "reserved_delta")?,
            in_transit: validate::signed_or_zero(&r.in_transit_delta, "in_transit_delta")?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
            reason: r.reason,
            actor: validate::actor(&principal),
        };
        cmd.check_not_empty()?;
        let mark = self.store.durability_mark();
        let view = self.store.adjust_stock(cmd).await?.record;
        Ok(Response::new(pb::AdjustStockResponse {
            record: Some(convert::record(&view)),
            durability: self.durability(mark).await,
        }))
    }

    async fn get_availability(
        &self,
        request: Request<pb::GetAvailabilityRequest>,
    ) -> Result<Response<pb::GetAvailabilityResponse>, Status> {
        let r = request.into_inner();
        let sku = Sku::parse(&r.sku, "sku")?;
        let records = match validate::optional(&r.warehouse_id, |v| WarehouseId::parse(v, "warehouse_id"))? {
            Some(warehouse) => vec![RecordKey::new(sku, warehouse)],
            None => {
                let warehouses = self.store.warehouses_of(&sku).await?;
                warehouses.into_iter().map(|w| RecordKey::new(sku.clone(), w)).collect()
            }
        };
        let views = self.store.get_stock(&records).await?;
        if let [None] = views.as_slice() {
            let record = records.into_iter().next().expect("one record was asked for");
            return Err(Error::NotAvailable { record, line: None }.into());
        }
        let views: Vec<_> = views.into_iter().flatten().collect();
        Ok(Response::new(pb::GetAvailabilityResponse {
            total_available: convert::total_available(&views),
            records: views.iter().map(convert::record).collect(),
        }))
    }

    async fn batch_get_availability(
        &self,
        request: Request<pb::BatchGetAvailabilityRequest>,
    ) -> Result<Response<pb::BatchGetAvailabilityResponse>, Status> {
        let records = validate::stock_keys(&self.limits, &request.get_ref().keys)?;
        let views = self.store.get_stock(&records).await?;
        let mut response = pb::BatchGetAvailabilityResponse::default();
        for (record, view) in records.into_iter().zip(views) {
            match view {
                Some(view) => response.records.push(convert::record(&view)),
                None => response
                    .missing
                    .push(pb::StockKey { sku: record.sku.to_string(), warehouse_id: record.warehouse.to_string() }),
            }
        }
        Ok(Response::new(response))
    }

    async fn lock(&self, request: Request<pb::LockRequest>) -> Result<Response<pb::LockResponse>, Status> {
        let principal = validate::principal(&request);
        let deadline = Deadline::remaining(&request);
        let r = request.into_inner();
        let cmd = LockCommand {
            lines: vec![validate::lock_line(&r.sku, &r.warehouse_id, &r.quantity, r.candidates.as_ref(), "")?],
            ttl: validate::lock_ttl(&self.limits, r.ttl.as_ref())?,
            order_id: OrderId::parse(&r.order_id, "order_id")?,
            holder: validate::holder(&principal, &r.holder)?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
            batch_id: None,
            session: validate::session(&r.session_id, r.ttl.as_ref())?,
            policy: BatchPolicy::AllOrNothing,
        };
        crate::edge::telemetry::record_request(&r.sku, &r.warehouse_id, &r.request_id);
        let _slot = self.admit(deadline, |reason| refused(&cmd, reason)).await?;
        let mark = self.store.durability_mark();
        let outcome = self.count_lock_outcomes(&cmd, self.store.lock(&cmd).await)?;
        let granted =
            outcome.granted.first().ok_or_else(|| Error::Internal { detail: "a Lock granted no lock".into() })?;
        Ok(Response::new(pb::LockResponse {
            lock: Some(convert::lock(&granted.lock)),
            available: granted.lock.unit_scale.format(granted.available),
            locks: outcome.granted.iter().map(|g| convert::lock(&g.lock)).collect(),
            replayed: outcome.replayed,
            durability: self.durability(mark).await,
        }))
    }

    async fn batch_lock(
        &self,
        request: Request<pb::BatchLockRequest>,
    ) -> Result<Response<pb::BatchLockResponse>, Status> {
        let principal = validate::principal(&request);
        let deadline = Deadline::remaining(&request);
        let r = request.into_inner();
        let cmd = LockCommand {
            lines: validate::batch_lines(&self.limits, &r.lines)?,
            ttl: validate::lock_ttl(&self.limits, r.ttl.as_ref())?,
            order_id: OrderId::parse(&r.order_id, "order_id")?,
            holder: validate::holder(&principal, &r.holder)?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
            batch_id: Some(BatchId::generate()),
            session: validate::session(&r.session_id, r.ttl.as_ref())?,
            policy: validate::batch_policy(r.policy)?,
        };
        crate::edge::telemetry::record_request("", "", &r.request_id);
        let _slot = self.admit(deadline, |reason| refused(&cmd, reason)).await?;
        let mark = self.store.durability_mark();
        let outcome = self.count_lock_outcomes(&cmd, self.store.lock(&cmd).await)?;
        Ok(Response::new(pb::BatchLockResponse {
            batch_id: outcome.batch_id.as_ref().map(ToString::to_string).unwrap_or_default(),
            locks: outcome.granted.iter().map(|g| convert::lock(&g.lock)).collect(),
            lines: convert::line_results(&cmd, &outcome),
            replayed: outcome.replayed,
            durability: self.durability(mark).await,
        }))
    }

    async fn renew(&self, request: Request<pb::RenewRequest>) -> Result<Response<pb::RenewResponse>, Status> {
        let principal = validate::principal(&request);
        let r = request.into_inner();
        let cmd = RenewCommand {
            target: validate::target(&self.limits, &r.lock_ids, &r.batch_id, "lock_ids")?,
            ttl: validate::ttl(&self.limits, r.ttl.as_ref(), "ttl")?,
            holder: validate::holder(&principal, &r.holder)?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
        };
        let mark = self.store.durability_mark();
        let outcome = self.store.renew(cmd).await?;
        // Partial success is success, with per-lock reasons; when nothing
        // could be renewed the call fails with the first lock's reason.
        if outcome.items.iter().all(|item| item.result.is_err()) {
            if let Some(Err(first)) = outcome.items.into_iter().next().map(|item| item.result) {
                return Err(first.into());
            }
            return Err(Error::Internal { detail: "renew returned no results".into() }.into());
        }
        let results = outcome
            .items
            .into_iter()
            .map(|item| {
                let lock_id = item.lock_id.to_string();
                match item.result {
                    Ok(renewed) => pb::RenewResult {
                        lock_id,
                        renewed: true,
                        expires_at: Some(convert::timestamp(renewed.expires_at_ms)),
                        max_hold_reached: renewed.max_hold_reached,
                        reason: pb::ErrorReason::Unspecified.into(),
                    },
                    Err(e) => pb::RenewResult {
                        lock_id,
                        reason: convert::error_reason(e.reason()).into(),
                        ..Default::default()
                    },
                }
            })
            .collect();
        Ok(Response::new(pb::RenewResponse {
            results,
            replayed: outcome.replayed,
            durability: self.durability(mark).await,
        }))
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let principal = validate::principal(&request);
        let r = request.into_inner();
        let lock_ids: Vec<String> = (!r.lock_id.is_empty()).then_some(r.lock_id).into_iter().collect();
        let cmd = ReleaseCommand {
            target: validate::target(&self.limits, &lock_ids, &r.batch_id, "lock_id")?,
            holder: validate::optional_holder(&principal, &r.holder)?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
        };
        let mark = self.store.durability_mark();
        let outcome = self.store.release(cmd).await?;
        let results = outcome
            .items
            .iter()
            .map(|item| pb::ReleaseResult {
                lock_id: item.lock_id.to_string(),
                outcome: convert::release_outcome(item.kind).into(),
                quantity: item.unit_scale.format(item.quantity),
            })
            .collect();
        Ok(Response::new(pb::ReleaseResponse {
            results,
            replayed: outcome.replayed,
            durability: self.durability(mark).await,
        }))
    }

    async fn commit(&self, request: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        let principal = validate::principal(&request);
        let r = request.into_inner();
        let cmd = CommitCommand {
            lock_id: LockId::parse(&r.lock_id, "lock_id")?,
            quantity: validate::optional(&r.quantity, |v| Quantity::parse(v, "quantity"))?,
            holder: validate::optional_holder(&principal, &r.holder)?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
            allow_late: r.allow_late_commit,
        };
        let lock_id = cmd.lock_id.to_string();
        let mark = self.store.durability_mark();
        let outcome = self.store.commit(cmd).await?;
        let scale = outcome.record.unit_scale.get();
        Ok(Response::new(pb::CommitResponse {
            lock_id,
            committed_quantity: outcome.committed.map_or_else(String::new, |q| convert::scaled(q, scale)),
            released_quantity: outcome.released.map_or_else(String::new, |q| convert::scaled(q, scale)),
            committed_now: outcome.committed_now,
            record: Some(convert::record(&outcome.record)),
            replayed: outcome.replayed,
            late_fencing_token: outcome.late_token.unwrap_or_default(),
            durability: self.durability(mark).await,
        }))
    }

    async fn transfer_lock(
        &self,
        request: Request<pb::TransferLockRequest>,
    ) -> Result<Response<pb::TransferLockResponse>, Status> {
        let principal = validate::principal(&request);
        let deadline = Deadline::remaining(&request);
        let r = request.into_inner();
        let lock_id = LockId::parse(&r.lock_id, "lock_id")?;
        let to = WarehouseId::parse(&r.to_warehouse_id, "to_warehouse_id")?;
        if to == lock_id.record.warehouse {
            return Err(Error::invalid("to_warehouse_id", "is the lock's own warehouse").into());
        }
        let holder = validate::optional_holder(&principal, &r.holder)?;
        let cmd = TransferLockCommand {
            lock_id,
            to,
            quantity: validate::optional(&r.quantity, |v| Quantity::parse(v, "quantity"))?,
            actor: holder.as_ref().map_or_else(|| validate::actor(&principal), ToString::to_string),
            holder,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
        };
        let _slot = self.admit(deadline, |reason| vec![(cmd.to.as_str(), reason)]).await?;
        let mark = self.store.durability_mark();
        // A move is a lock at its destination, counted there: what the
        // destination or the service answered, not refusals about the lock
        // moved (expired, moved, another holder's), and not replays.
        let to = cmd.to.clone();
        let result = self.store.transfer_lock(cmd).await;
        let counted = match &result {
            Ok(outcome) => (!outcome.replayed).then_some("OK"),
            Err(e) => {
                let reason = e.reason();
                let about_destination =
                    matches!(reason, reason::INSUFFICIENT_STOCK | reason::SKU_NOT_AVAILABLE_IN_WAREHOUSE);
                (about_destination || is_service_failure(reason)).then_some(reason)
            }
        };
        if let Some(reason) = counted {
            self.count_outcomes(&[(to.as_str(), reason)]);
        }
        let outcome = result?;
        Ok(Response::new(pb::TransferLockResponse {
            source_available: outcome.source_unit_scale.format(outcome.source_available),
            destination_available: outcome.moved.unit_scale.format(outcome.destination_available),
            moved: Some(convert::lock(&outcome.moved)),
            remaining: outcome.remaining.as_ref().map(convert::lock),
            replayed: outcome.replayed,
            durability: self.durability(mark).await,
        }))
    }

    async fn get_lock(&self, request: Request<pb::GetLockRequest>) -> Result<Response<pb::GetLockResponse>, Status> {
        let lock_id = LockId::parse(&request.get_ref().lock_id, "lock_id")?;
        let view = self.store.get_lock(&lock_id).await?;
        Ok(Response::new(pb::GetLockResponse { lock: Some(convert::lock(&view)) }))
    }

    async fn list_locks(
        &self,
        request: Request<pb::ListLocksRequest>,
    ) -> Result<Response<pb::ListLocksResponse>, Status> {
        let r = request.into_inner();
        let filter = validate::lock_filter(&r, self.limits.stale_threshold)?;
        let page_token = (!r.page_token.is_empty()).then_some(r.page_token);
        let page = self.store.list_locks(filter, validate::page_size(r.page_size), page_token).await?;
        Ok(Response::new(pb::ListLocksResponse {
            locks: page.locks.iter().map(convert::lock).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }
}

/// The outcomes of a lock command refused whole with `reason`: one for
/// each warehouse its lines named (their candidates).
fn refused<'a>(cmd: &'a LockCommand, reason: &'static str) -> Vec<(&'a str, &'static str)> {
    cmd.lines.iter().flat_map(|l| l.candidates().iter().map(move |r| (r.warehouse.as_str(), reason))).collect()
}

/// One keep-alive of `session_id`, by `principal`'s holder (or `holder`,
/// without authentication): the session with its new expiry.
async fn keep_alive_once<S: StockStore>(
    store: &S,
    principal: &Option<crate::edge::auth::Principal>,
    session_id: &str,
    holder: &str,
) -> Result<pb::Session, Status> {
    let session = SessionId::parse(session_id, "session_id")?;
    let holder = validate::optional_holder(principal, holder)?;
    let view = store.keep_alive(&session, holder.as_ref()).await?;
    Ok(convert::session(&view))
}

/// A server stream of `T`s sent to the client wrapped in `R`, the RPC's
/// response message (which leaves room for more than the event).
type Responses<T, R> = tokio_stream::adapters::Map<
    tokio_stream::wrappers::ReceiverStream<Result<T, Status>>,
    fn(Result<T, Status>) -> Result<R, Status>,
>;
