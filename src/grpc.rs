//! The gRPC adapter: validates each request at the edge into domain commands,
//! runs it on the store, and converts the result (or the error, through the
//! table in `grpc/status.rs`) back to protobuf. It decides nothing the store must
//! decide atomically.

pub mod admin;
pub(crate) mod convert;
mod status;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

pub use self::admin::AdminApi;
pub use self::status::ERROR_DOMAIN;
use crate::domain::{
    AdjustStockCommand, BatchId, CommitCommand, Error, EventHub, EventId, Holder, LifecycleEvent, LockCommand,
    LockFilter, LockId, LockLine, LockOutcome, LockTarget, OrderId, Quantity, RecordKey, ReleaseCommand, RenewCommand,
    RequestId, ScaledStock, SetStockCommand, Signed, Sku, StockStore, UnitScale, WarehouseId, WatchPosition,
};
use crate::edge::auth::Principal;
use crate::pb;
use crate::pb::inventory_service_server::InventoryService;

/// Request limits, from the configuration.
#[derive(Clone, Debug)]
pub struct Limits {
    /// TTL of a lock whose request names none.
    pub default_ttl: Duration,
    /// Shortest TTL a request may ask for.
    pub min_ttl: Duration,
    /// Longest TTL a request may ask for.
    pub max_ttl: Duration,
    /// Most lines in one BatchLock.
    pub max_batch_lines: usize,
    /// Most lock ids in one Renew, and pairs in one BatchGetAvailability.
    pub max_ids_per_call: usize,
    /// Locks older than this are stale.
    pub stale_threshold: Duration,
}

/// Default and largest ListLocks page.
pub(crate) const DEFAULT_PAGE_SIZE: usize = 100;
pub(crate) const MAX_PAGE_SIZE: usize = 1000;

/// `stocklock.v1.InventoryService` over any [`StockStore`].
pub struct InventoryApi<S> {
    store: Arc<S>,
    limits: Limits,
    events: EventHub,
}

impl<S> InventoryApi<S> {
    /// The service over `store`, validating requests against `limits`;
    /// watchers follow `events`.
    pub fn new(store: Arc<S>, limits: Limits, events: EventHub) -> Self {
        Self { store, limits, events }
    }

    fn ttl(&self, ttl: Option<&prost_types::Duration>, field: &str) -> Result<Option<Duration>, Error> {
        let Some(ttl) = ttl else { return Ok(None) };
        let ttl = convert::std_duration(ttl, field)?;
        let Limits { min_ttl, max_ttl, .. } = self.limits;
        if ttl < min_ttl || ttl > max_ttl {
            return Err(Error::invalid(
                field,
                format!(
                    "is {}; it must be between {} and {}",
                    humantime::format_duration(ttl),
                    humantime::format_duration(min_ttl),
                    humantime::format_duration(max_ttl)
                ),
            ));
        }
        Ok(Some(ttl))
    }

    fn lock_ttl(&self, ttl: Option<&prost_types::Duration>) -> Result<Duration, Error> {
        Ok(self.ttl(ttl, "ttl")?.unwrap_or(self.limits.default_ttl))
    }

    /// Counts each line's outcome (metrics and hourly lock health) and passes `result` on.
    fn count_lock_outcomes(&self, cmd: &LockCommand, result: Result<LockOutcome, Error>) -> Result<LockOutcome, Error>
    where
        S: StockStore,
    {
        let reason = result.as_ref().map_or_else(Error::reason, |_| "OK");
        let outcomes: Vec<(&str, &'static str)> =
            cmd.lines.iter().map(|l| (l.record.warehouse.as_str(), reason)).collect();
        for (warehouse, reason) in &outcomes {
            crate::metrics::METRICS.lock_outcome(warehouse, reason);
        }
        self.store.record_lock_outcomes(&outcomes);
        result
    }

    /// Lock ids or a batch id, exactly one of the two.
    fn target(&self, lock_ids: &[String], batch_id: &str, ids_field: &str) -> Result<LockTarget, Error> {
        match (lock_ids.is_empty(), batch_id.is_empty()) {
            (true, true) => Err(Error::invalid(ids_field, "or batch_id is required")),
            (false, false) => Err(Error::invalid("batch_id", format!("cannot be combined with {ids_field}"))),
            (true, false) => Ok(LockTarget::Batch(BatchId::parse(batch_id, "batch_id")?)),
            (false, true) => {
                if lock_ids.len() > self.limits.max_ids_per_call {
                    return Err(Error::invalid(
                        ids_field,
                        format!("has {} ids; the limit is {}", lock_ids.len(), self.limits.max_ids_per_call),
                    ));
                }
                let mut seen = HashMap::new();
                let mut ids = Vec::with_capacity(lock_ids.len());
                for (i, text) in lock_ids.iter().enumerate() {
                    let field = if ids_field == "lock_id" { ids_field.to_owned() } else { format!("{ids_field}[{i}]") };
                    let id = LockId::parse(text, &field)?;
                    if let Some(first) = seen.insert(id.clone(), i) {
                        return Err(Error::invalid(field, format!("repeats {ids_field}[{first}]")));
                    }
                    ids.push(id);
                }
                Ok(LockTarget::Locks(ids))
            }
        }
    }
}

/// ListLocks' filters; `stale` raises `older_than` to the stale threshold.
fn lock_filter(r: &pb::ListLocksRequest, stale_threshold: Duration) -> Result<LockFilter, Error> {
    let mut older_than = r.older_than.as_ref().map(|d| convert::std_duration(d, "older_than")).transpose()?;
    if r.stale {
        older_than = Some(older_than.unwrap_or_default().max(stale_threshold));
    }
    Ok(LockFilter {
        sku: optional(&r.sku, |v| Sku::parse(v, "sku"))?,
        warehouse: optional(&r.warehouse_id, |v| WarehouseId::parse(v, "warehouse_id"))?,
        order_id: optional(&r.order_id, |v| OrderId::parse(v, "order_id"))?,
        holder: optional(&r.holder, |v| Holder::parse(v, "holder"))?,
        older_than,
    })
}

/// A requested page size: the default for 0, at most the maximum.
pub(crate) fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// The caller's principal, when authentication is on.
fn principal<T>(request: &Request<T>) -> Option<Principal> {
    request.extensions().get::<Principal>().cloned()
}

/// Who holds the locks a call takes or touches: the authenticated principal,
/// whatever the request says, or (authentication off) the request's `holder`.
fn holder(principal: &Option<Principal>, field: &str) -> Result<Holder, Error> {
    match principal {
        Some(p) => Ok(p.name.clone()),
        None => Holder::parse(field, "holder"),
    }
}

/// Like [`holder`], where the request's `holder` is optional.
fn optional_holder(principal: &Option<Principal>, field: &str) -> Result<Option<Holder>, Error> {
    match principal {
        Some(p) => Ok(Some(p.name.clone())),
        None => optional(field, |v| Holder::parse(v, "holder")),
    }
}

/// Who a change is attributed to in the audit trail.
pub(crate) fn actor(principal: &Option<Principal>) -> String {
    principal.as_ref().map_or_else(|| "anonymous".to_owned(), |p| p.name.to_string())
}

fn record_key(sku: &str, warehouse: &str, prefix: &str) -> Result<RecordKey, Error> {
    Ok(RecordKey::new(
        Sku::parse(sku, &format!("{prefix}sku"))?,
        WarehouseId::parse(warehouse, &format!("{prefix}warehouse_id"))?,
    ))
}

fn optional<T>(value: &str, parse: impl FnOnce(&str) -> Result<T, Error>) -> Result<Option<T>, Error> {
    if value.is_empty() { Ok(None) } else { parse(value).map(Some) }
}

fn signed_or_zero(text: &str, field: &str) -> Result<Signed, Error> {
    if text.is_empty() { Ok(Signed::ZERO) } else { Signed::parse(text, field) }
}

/// How many events a watcher may fall behind before it is told to catch up.
const WATCH_BUFFER: usize = 256;

/// A watcher that hears nothing from the hub this long reads Redis itself.
const WATCH_QUIET: Duration = Duration::from_millis(250);

/// An event as a watcher sees it.
fn availability_event(event: &LifecycleEvent, position: &WatchPosition) -> pb::AvailabilityEvent {
    pb::AvailabilityEvent {
        event_id: position.to_string(),
        at: Some(convert::timestamp(event.id.ms as i64)),
        action: event.field("action").to_owned(),
        sku: event.field("sku").to_owned(),
        warehouse_id: event.field("warehouse_id").to_owned(),
        available: event.field("available").to_owned(),
        available_before: event.field("available_before").to_owned(),
        locked: event.field("locked").to_owned(),
        physical: event.field("physical").to_owned(),
        reserved: event.field("reserved").to_owned(),
        in_transit: event.field("in_transit").to_owned(),
        version: event.field("version").parse().unwrap_or_default(),
        lock_id: event.field("lock_id").to_owned(),
        fencing_token: event.field("fencing_token").parse().unwrap_or_default(),
        quantity: event.field("quantity").to_owned(),
        holder: event.field("holder").to_owned(),
        order_id: event.field("order_id").to_owned(),
    }
}

/// Follows, into `tx`, the event stream of each partition `from` has a position in:
/// reads what it missed from Redis, then takes new events from the hub,
/// going back to Redis whenever it falls behind. Each event sent carries the
/// whole position after it, so a watcher resumes from any event it received.
/// Returns when the watcher disconnects.
async fn follow<S: StockStore>(
    store: Arc<S>,
    mut hub: tokio::sync::broadcast::Receiver<Arc<LifecycleEvent>>,
    records: std::collections::HashSet<(String, String)>,
    mut from: WatchPosition,
    tx: tokio::sync::mpsc::Sender<Result<pb::AvailabilityEvent, Status>>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let wanted =
        |e: &LifecycleEvent| records.contains(&(e.field("sku").to_owned(), e.field("warehouse_id").to_owned()));
    loop {
        // Catch up from Redis.
        let partitions: Vec<usize> = from.partitions().collect();
        for partition in partitions {
            if !replay(store.as_ref(), partition, &mut from, None, &wanted, &tx).await {
                return;
            }
        }
        // Then live, until the hub says we fell behind or stays quiet. The
        // tailers run only while someone watches, so one may have started
        // after our catch-up read: the first live event of each partition
        // fills any gap between the two from Redis, and a quiet hub sends us
        // back to Redis to look.
        let mut gap_checked = std::collections::HashSet::new();
        loop {
            let Ok(received) = tokio::time::timeout(WATCH_QUIET, hub.recv()).await else { break };
            match received {
                Ok(event) => {
                    let Some(at) = from.get(event.partition) else { continue };
                    if event.id <= at {
                        continue;
                    }
                    if gap_checked.insert(event.partition) {
                        if !replay(store.as_ref(), event.partition, &mut from, Some(event.id), &wanted, &tx).await {
                            return;
                        }
                        continue;
                    }
                    from.set(event.partition, event.id);
                    if wanted(&event) && tx.send(Ok(availability_event(&event, &from))).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => break,
                Err(RecvError::Closed) => {
                    let _ = tx.send(Err(Status::unavailable("the service is shutting down; resume elsewhere"))).await;
                    return;
                }
            }
        }
    }
}

/// Sends the wanted events of `partition` after `from` from Redis, up to and
/// including `upto` (to the end when `None`), moving `from` along. False
/// when the watch is over: the watcher left, or Redis failed (the watcher
/// was told).
async fn replay<S: StockStore>(
    store: &S,
    partition: usize,
    from: &mut WatchPosition,
    upto: Option<EventId>,
    wanted: &impl Fn(&LifecycleEvent) -> bool,
    tx: &tokio::sync::mpsc::Sender<Result<pb::AvailabilityEvent, Status>>,
) -> bool {
    loop {
        let after = from.get(partition).unwrap_or_default();
        let batch = match store.events_after(partition, after, 500).await {
            Ok(batch) => batch,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return false;
            }
        };
        let done = batch.len() < 500;
        for event in batch.into_iter().take_while(|e| upto.is_none_or(|upto| e.id <= upto)) {
            from.set(partition, event.id);
            if wanted(&event) && tx.send(Ok(availability_event(&event, from))).await.is_err() {
                return false;
            }
        }
        let reached = from.get(partition).unwrap_or_default();
        if done || upto.is_some_and(|upto| reached >= upto) {
            return true;
        }
    }
}

impl<S: StockStore> InventoryApi<S> {
    /// Replica acknowledgements of this call's change, when configured.
    async fn durability(&self) -> Option<pb::Durability> {
        self.store.durability().await.map(|d| pb::Durability {
            replicas_acknowledged: d.acknowledged,
            replicas_required: d.required,
            durable: d.durable(),
        })
    }
}

#[tonic::async_trait]
impl<S: StockStore> InventoryService for InventoryApi<S> {
    type WatchAvailabilityStream = tokio_stream::wrappers::ReceiverStream<Result<pb::AvailabilityEvent, Status>>;

    async fn watch_availability(
        &self,
        request: Request<pb::WatchAvailabilityRequest>,
    ) -> Result<Response<Self::WatchAvailabilityStream>, Status> {
        let r = request.into_inner();
        if r.keys.is_empty() || r.keys.len() > self.limits.max_ids_per_call {
            let message = format!("has {} pairs; it must have 1 to {}", r.keys.len(), self.limits.max_ids_per_call);
            return Err(Error::invalid("keys", message).into());
        }
        let records = r
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| record_key(&k.sku, &k.warehouse_id, &format!("keys[{i}].")))
            .collect::<Result<Vec<_>, _>>()?;
        // Subscribe before reading anything, so nothing falls between.
        let hub = self.events.subscribe();
        let mut partitions: Vec<usize> = records.iter().map(|r| self.store.partition_of(&r.sku)).collect();
        partitions.sort_unstable();
        partitions.dedup();
        let mut positions = Vec::with_capacity(partitions.len());
        for &partition in &partitions {
            positions.push((partition, self.store.event_position(partition).await?));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER + records.len());
        let from = if r.after_event_id.is_empty() {
            // A snapshot of each record, stamped with the newest position.
            let mut now = WatchPosition::default();
            for (partition, position) in &positions {
                now.set(*partition, position.last);
            }
            let views = self.store.get_stock(&records).await?;
            for view in views.iter().flatten() {
                let record = convert::record(view);
                let event = pb::AvailabilityEvent {
                    event_id: now.to_string(),
                    action: "snapshot".into(),
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
                };
                // The channel has room for every snapshot: this cannot wait.
                let _ = tx.send(Ok(event)).await;
            }
            now
        } else {
            let not_ours = || Error::invalid("after_event_id", "is not an event id received from WatchAvailability");
            let after = WatchPosition::parse(&r.after_event_id).ok_or_else(not_ours)?;
            let mut from = WatchPosition::default();
            for (partition, position) in &positions {
                // A watch of the same records resumes from their partitions.
                let at = after.get(*partition).ok_or_else(|| {
                    Error::invalid(
                        "after_event_id",
                        "comes from a watch of other records; resume with the same keys, or start without it",
                    )
                })?;
                if at < position.trimmed_through {
                    return Err(Error::invalid(
                        "after_event_id",
                        format!(
                            "is older than the retained events (trimmed through {}); start again without it",
                            position.trimmed_through
                        ),
                    )
                    .into());
                }
                from.set(*partition, at);
            }
            from
        };
        let wanted = records.iter().map(|r| (r.sku.to_string(), r.warehouse.to_string())).collect();
        let (closed, store) = (self.events.closed(), self.store.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = follow(store, hub, wanted, from, tx.clone()) => {}
                () = closed => {
                    let _ = tx.send(Err(Status::unavailable("the service is shutting down; resume after your last event_id elsewhere"))).await;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn set_stock(&self, request: Request<pb::SetStockRequest>) -> Result<Response<pb::SetStockResponse>, Status> {
        let principal = principal(&request);
        let r = request.into_inner();
        let unit_scale = UnitScale::new(r.unit_scale, "unit_scale")?;
        if r.source_version > crate::domain::MAX_SCALED as u64 {
            return Err(Error::invalid("source_version", "must be below 2^53").into());
        }
        let cmd = SetStockCommand {
            record: record_key(&r.sku, &r.warehouse_id, "")?,
            physical: ScaledStock::parse(&r.physical, unit_scale, "physical")?,
            reserved: ScaledStock::parse(&r.reserved, unit_scale, "reserved")?,
            in_transit: ScaledStock::parse(&r.in_transit, unit_scale, "in_transit")?,
            unit_scale,
            source_version: r.source_version,
            request_id: optional(&r.request_id, |v| RequestId::parse(v, "request_id"))?,
            actor: actor(&principal),
        };
        let outcome = self.store.set_stock(cmd).await?;
        Ok(Response::new(pb::SetStockResponse {
            applied: outcome.applied,
            stale: !outcome.applied,
            record: Some(convert::record(&outcome.record)),
            durability: self.durability().await,
        }))
    }

    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::AdjustStockResponse>, Status> {
        let principal = principal(&request);
        let r = request.into_inner();
        let cmd = AdjustStockCommand {
            record: record_key(&r.sku, &r.warehouse_id, "")?,
            physical: signed_or_zero(&r.physical_delta, "physical_delta")?,
            reserved: signed_or_zero(&r.reserved_delta, "reserved_delta")?,
            in_transit: signed_or_zero(&r.in_transit_delta, "in_transit_delta")?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
            reason: r.reason,
            actor: actor(&principal),
        };
        cmd.check_not_empty()?;
        let view = self.store.adjust_stock(cmd).await?.record;
        Ok(Response::new(pb::AdjustStockResponse {
            record: Some(convert::record(&view)),
            durability: self.durability().await,
        }))
    }

    async fn get_availability(
        &self,
        request: Request<pb::GetAvailabilityRequest>,
    ) -> Result<Response<pb::GetAvailabilityResponse>, Status> {
        let r = request.into_inner();
        let sku = Sku::parse(&r.sku, "sku")?;
        let records = match optional(&r.warehouse_id, |v| WarehouseId::parse(v, "warehouse_id"))? {
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
        let r = request.into_inner();
        if r.keys.is_empty() || r.keys.len() > self.limits.max_ids_per_call {
            return Err(Error::invalid(
                "keys",
                format!("has {} pairs; it must have 1 to {}", r.keys.len(), self.limits.max_ids_per_call),
            )
            .into());
        }
        let records = r
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| record_key(&k.sku, &k.warehouse_id, &format!("keys[{i}].")))
            .collect::<Result<Vec<_>, _>>()?;
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
        let principal = principal(&request);
        let r = request.into_inner();
        let cmd = LockCommand {
            lines: vec![LockLine {
                record: record_key(&r.sku, &r.warehouse_id, "")?,
                quantity: Quantity::parse(&r.quantity, "quantity")?,
            }],
            ttl: self.lock_ttl(r.ttl.as_ref())?,
            order_id: OrderId::parse(&r.order_id, "order_id")?,
            holder: holder(&principal, &r.holder)?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
            batch_id: None,
        };
        crate::edge::telemetry::record_request(&r.sku, &r.warehouse_id, &r.request_id);
        let outcome = self.count_lock_outcomes(&cmd, self.store.lock(&cmd).await)?;
        let granted = &outcome.granted[0];
        Ok(Response::new(pb::LockResponse {
            lock: Some(convert::lock(&granted.lock)),
            available: granted.lock.unit_scale.format(granted.available),
            replayed: outcome.replayed,
            durability: self.durability().await,
        }))
    }

    async fn batch_lock(
        &self,
        request: Request<pb::BatchLockRequest>,
    ) -> Result<Response<pb::BatchLockResponse>, Status> {
        let principal = principal(&request);
        let r = request.into_inner();
        if r.lines.is_empty() || r.lines.len() > self.limits.max_batch_lines {
            return Err(Error::invalid(
                "lines",
                format!("has {} lines; a batch must have 1 to {}", r.lines.len(), self.limits.max_batch_lines),
            )
            .into());
        }
        let mut seen = HashMap::new();
        let mut lines = Vec::with_capacity(r.lines.len());
        for (i, line) in r.lines.iter().enumerate() {
            let record = record_key(&line.sku, &line.warehouse_id, &format!("lines[{i}]."))?;
            if let Some(first) = seen.insert(record.clone(), i) {
                return Err(Error::invalid(
                    format!("lines[{i}]"),
                    format!("repeats the sku and warehouse_id of lines[{first}]; merge the two lines"),
                )
                .into());
            }
            lines
                .push(LockLine { record, quantity: Quantity::parse(&line.quantity, &format!("lines[{i}].quantity"))? });
        }
        let cmd = LockCommand {
            lines,
            ttl: self.lock_ttl(r.ttl.as_ref())?,
            order_id: OrderId::parse(&r.order_id, "order_id")?,
            holder: holder(&principal, &r.holder)?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
            batch_id: Some(BatchId::generate()),
        };
        crate::edge::telemetry::record_request("", "", &r.request_id);
        let outcome = self.count_lock_outcomes(&cmd, self.store.lock(&cmd).await)?;
        Ok(Response::new(pb::BatchLockResponse {
            batch_id: outcome.batch_id.map(|b| b.to_string()).unwrap_or_default(),
            locks: outcome.granted.iter().map(|g| convert::lock(&g.lock)).collect(),
            replayed: outcome.replayed,
            durability: self.durability().await,
        }))
    }

    async fn renew(&self, request: Request<pb::RenewRequest>) -> Result<Response<pb::RenewResponse>, Status> {
        let principal = principal(&request);
        let r = request.into_inner();
        let cmd = RenewCommand {
            target: self.target(&r.lock_ids, &r.batch_id, "lock_ids")?,
            ttl: self.ttl(r.ttl.as_ref(), "ttl")?,
            holder: holder(&principal, &r.holder)?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
        };
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
                        reason: String::new(),
                    },
                    Err(e) => pb::RenewResult { lock_id, reason: e.reason().to_owned(), ..Default::default() },
                }
            })
            .collect();
        Ok(Response::new(pb::RenewResponse {
            results,
            replayed: outcome.replayed,
            durability: self.durability().await,
        }))
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let principal = principal(&request);
        let r = request.into_inner();
        let lock_ids: Vec<String> = (!r.lock_id.is_empty()).then_some(r.lock_id).into_iter().collect();
        let cmd = ReleaseCommand {
            target: self.target(&lock_ids, &r.batch_id, "lock_id")?,
            holder: optional_holder(&principal, &r.holder)?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
        };
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
            durability: self.durability().await,
        }))
    }

    async fn commit(&self, request: Request<pb::CommitRequest>) -> Result<Response<pb::CommitResponse>, Status> {
        let principal = principal(&request);
        let r = request.into_inner();
        let cmd = CommitCommand {
            lock_id: LockId::parse(&r.lock_id, "lock_id")?,
            quantity: optional(&r.quantity, |v| Quantity::parse(v, "quantity"))?,
            holder: optional_holder(&principal, &r.holder)?,
            request_id: RequestId::parse(&r.request_id, "request_id")?,
        };
        let lock_id = cmd.lock_id.to_string();
        let outcome = self.store.commit(cmd).await?;
        let scale = outcome.record.unit_scale.get();
        Ok(Response::new(pb::CommitResponse {
            lock_id,
            committed_quantity: convert::scaled(outcome.committed, scale),
            released_quantity: convert::scaled(outcome.released, scale),
            committed_now: outcome.committed_now,
            record: Some(convert::record(&outcome.record)),
            replayed: outcome.replayed,
            durability: self.durability().await,
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
        let filter = lock_filter(&r, self.limits.stale_threshold)?;
        let page_token = (!r.page_token.is_empty()).then_some(r.page_token);
        let page = self.store.list_locks(filter, page_size(r.page_size), page_token).await?;
        Ok(Response::new(pb::ListLocksResponse {
            locks: page.locks.iter().map(convert::lock).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }
}
