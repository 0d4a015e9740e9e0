//! The commands each operation takes, what it returns, and the
//! [`StockStore`] port that runs them atomically.

use std::future::Future;
use std::time::Duration;

use super::{
    BatchId, Error, EventId, Holder, LifecycleEvent, LockId, OrderId, Quantity, RecordKey, RequestId, ScaledStock,
    SessionId, Signed, Sku, StreamPosition, UnitScale, WarehouseId,
};

/// A stock record's figures, counting only live locks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StockView {
    /// Which record.
    pub record: RecordKey,
    /// Goods in the warehouse (scaled). Negative after selling in-transit stock.
    pub physical: i64,
    /// Held by other systems, e.g. a quality hold (scaled).
    pub reserved: i64,
    /// Inbound goods that may be sold (scaled).
    pub in_transit: i64,
    /// Sum of live locks (scaled).
    pub locked: i64,
    /// How many fractional digits the figures have.
    pub unit_scale: UnitScale,
    /// Bumped by every change to the record.
    pub version: u64,
    /// Newest source_version accepted from a snapshot.
    pub source_version: u64,
    /// Number of live locks.
    pub live_locks: u32,
}

impl StockView {
    /// `physical - locked - reserved + in_transit`, floored at zero (scaled).
    pub fn available(&self) -> i64 {
        self.balance().max(0)
    }

    /// How far live locks exceed the stock, after a snapshot lowered it (scaled).
    pub fn oversold(&self) -> i64 {
        (-self.balance()).max(0)
    }

    fn balance(&self) -> i64 {
        self.physical - self.locked - self.reserved + self.in_transit
    }
}

/// A live lock as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockView {
    /// Its id.
    pub lock_id: LockId,
    /// Locked quantity (scaled by `unit_scale`).
    pub quantity: i64,
    /// The record's unit scale.
    pub unit_scale: UnitScale,
    /// Redis time in ms since the Unix epoch.
    pub created_at_ms: i64,
    /// Redis time in ms since the Unix epoch.
    pub expires_at_ms: i64,
    /// Renewals cannot extend the lock past this instant.
    pub max_expires_at_ms: i64,
    /// The ttl each renewal extends by, unless it names another.
    pub ttl: Duration,
    /// The caller's order reference.
    pub order_id: String,
    /// Who holds it.
    pub holder: String,
    /// The BatchLock call that took it, if any.
    pub batch_id: Option<String>,
}

/// One line of a lock request.
#[derive(Clone, Debug)]
pub struct LockLine {
    /// Which record; with candidates, the first of them.
    pub record: RecordKey,
    /// How much of it.
    pub quantity: Quantity,
    /// Set when the line may lock from any of several warehouses of its SKU.
    pub choice: Option<Choice>,
}

impl LockLine {
    /// A line of one record.
    pub fn new(record: RecordKey, quantity: Quantity) -> Self {
        Self { record, quantity, choice: None }
    }

    /// The records the line may lock from, in the order given.
    pub fn candidates(&self) -> &[RecordKey] {
        match &self.choice {
            Some(choice) => &choice.candidates,
            None => std::slice::from_ref(&self.record),
        }
    }
}

/// Where a line with candidate warehouses locks.
#[derive(Clone, Debug)]
pub struct Choice {
    /// Records of one SKU in distinct warehouses, in the caller's order.
    pub candidates: Vec<RecordKey>,
    /// Which candidate first.
    pub strategy: Strategy,
    /// Whether the line may take from several candidates (one lock each).
    pub split: bool,
}

/// The order in which a line's candidates are tried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// In the order given.
    #[default]
    Priority,
    /// Most available first; ties in the order given.
    MostAvailable,
}

/// What a BatchLock does when some of its lines are short.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BatchPolicy {
    /// Every line in full, or nothing.
    #[default]
    AllOrNothing,
    /// Each line in full or not at all.
    PerLine,
    /// Each line as much as is available, up to its quantity.
    Partial,
}

/// Lock (one line) or BatchLock (one or more lines, all or nothing).
#[derive(Clone, Debug)]
pub struct LockCommand {
    /// The lines; for BatchLock no two name the same record.
    pub lines: Vec<LockLine>,
    /// How long the locks live without a renewal.
    pub ttl: Duration,
    /// The caller's order reference.
    pub order_id: OrderId,
    /// Who will hold the locks.
    pub holder: Holder,
    /// Idempotency key.
    pub request_id: RequestId,
    /// Set for BatchLock: the id the batch is known by.
    pub batch_id: Option<BatchId>,
    /// The session the locks live in, if any: they then need no Renew and
    /// end with the session (within the maximum hold); `ttl` is unused.
    pub session: Option<SessionId>,
    /// What to do with short lines (BatchLock; a Lock is all or nothing).
    pub policy: BatchPolicy,
}

impl LockCommand {
    /// True when every line names one record and the call is all or
    /// nothing: a lock as it was before candidates and policies, which the
    /// store keeps in its most compact form.
    pub fn is_plain(&self) -> bool {
        self.policy == BatchPolicy::AllOrNothing && self.lines.iter().all(|line| line.choice.is_none())
    }
}

/// One lock a line got, with what stayed available on its record.
#[derive(Clone, Debug)]
pub struct Granted {
    /// The request line it was taken for.
    pub line: usize,
    /// The lock.
    pub lock: LockView,
    /// Available on the record right after this lock (scaled).
    pub available: i64,
}

/// What a candidate of a line that was not filled had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CandidateFigure {
    /// The candidate.
    pub record: RecordKey,
    /// Its available before this call's locks, as a decimal; 0 without a record.
    pub available: String,
    /// False when the record does not exist.
    pub exists: bool,
}

/// What a Lock or BatchLock did.
#[derive(Clone, Debug)]
pub struct LockOutcome {
    /// Every lock taken, in line order (one per line for lines without
    /// candidates, when the policy is all or nothing).
    pub granted: Vec<Granted>,
    /// Per line, in line order: its candidates' figures when it was not
    /// filled, else empty.
    pub short: Vec<Vec<CandidateFigure>>,
    /// The batch id, for BatchLock.
    pub batch_id: Option<BatchId>,
    /// True when this replays an earlier call with the same request_id.
    pub replayed: bool,
}

/// The locks an operation addresses.
#[derive(Clone, Debug)]
pub enum LockTarget {
    /// These locks.
    Locks(Vec<LockId>),
    /// Every lock of a batch.
    Batch(BatchId),
}

/// Renew (the heartbeat).
#[derive(Clone, Debug)]
pub struct RenewCommand {
    /// Which locks.
    pub target: LockTarget,
    /// New ttl from now; each lock's own ttl when `None`.
    pub ttl: Option<Duration>,
    /// Only the holder may renew.
    pub holder: Holder,
    /// Idempotency key.
    pub request_id: RequestId,
}

/// One lock's renewal.
#[derive(Debug)]
pub struct RenewItem {
    /// The lock.
    pub lock_id: LockId,
    /// Its new expiry, or the error that kept it from being renewed.
    pub result: Result<Renewed, Error>,
}

/// A successful renewal.
#[derive(Clone, Copy, Debug)]
pub struct Renewed {
    /// The new expiry, Redis time in ms.
    pub expires_at_ms: i64,
    /// The lock's maximum hold time capped the expiry.
    pub max_hold_reached: bool,
}

/// What Renew did.
#[derive(Debug)]
pub struct RenewOutcome {
    /// One per lock, in request (or batch) order.
    pub items: Vec<RenewItem>,
    /// True when this replays an earlier call.
    pub replayed: bool,
}

/// Release.
#[derive(Clone, Debug)]
pub struct ReleaseCommand {
    /// Which locks.
    pub target: LockTarget,
    /// When set, every lock must be held by it.
    pub holder: Option<Holder>,
    /// Idempotency key.
    pub request_id: RequestId,
}

/// What happened to one released lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseKind {
    /// Its quantity went back to availability now.
    Released,
    /// It had been released before; nothing changed.
    AlreadyReleased,
    /// It had expired, so its quantity was back already; nothing changed.
    AlreadyExpired,
    /// An operator force-released it; nothing changed.
    ForceReleased,
}

/// One lock's release.
#[derive(Clone, Debug)]
pub struct ReleaseItem {
    /// The lock.
    pub lock_id: LockId,
    /// What happened.
    pub kind: ReleaseKind,
    /// Quantity returned now (scaled; 0 unless `Released`).
    pub quantity: i64,
    /// The record's unit scale.
    pub unit_scale: UnitScale,
}

/// What Release did.
#[derive(Clone, Debug)]
pub struct ReleaseOutcome {
    /// One per lock.
    pub items: Vec<ReleaseItem>,
    /// True when this replays an earlier call.
    pub replayed: bool,
}

/// Commit.
#[derive(Clone, Debug)]
pub struct CommitCommand {
    /// The lock.
    pub lock_id: LockId,
    /// Commit this much and release the rest; the whole lock when `None`.
    pub quantity: Option<Quantity>,
    /// When set, the lock must be held by it.
    pub holder: Option<Holder>,
    /// Idempotency key.
    pub request_id: RequestId,
    /// A lock that expired may still be committed, if its quantity is
    /// available again (a late commit: see `lua/commit.lua`).
    pub allow_late: bool,
}

/// TransferLock: a live lock's quantity (all or part) moved to another
/// warehouse of its SKU.
#[derive(Clone, Debug)]
pub struct TransferLockCommand {
    /// The lock.
    pub lock_id: LockId,
    /// Where to: a warehouse of the lock's SKU other than its own.
    pub to: WarehouseId,
    /// How much; the whole lock when `None`.
    pub quantity: Option<Quantity>,
    /// When set, the lock must be held by it.
    pub holder: Option<Holder>,
    /// Idempotency key.
    pub request_id: RequestId,
    /// Who asked, for the audit trail.
    pub actor: String,
}

/// What TransferLock did.
#[derive(Clone, Debug)]
pub struct TransferOutcome {
    /// The moved lock in the destination, under its new fencing token.
    pub moved: LockView,
    /// What is left of the lock, or `None` when it moved whole.
    pub remaining: Option<LockView>,
    /// Available on the lock's record afterwards (scaled by `source_unit_scale`).
    pub source_available: i64,
    /// The unit scale of the lock's record.
    pub source_unit_scale: UnitScale,
    /// Available on the destination afterwards (scaled, its unit scale).
    pub destination_available: i64,
    /// True when this replays an earlier call.
    pub replayed: bool,
}

/// What Commit did.
#[derive(Clone, Debug)]
pub struct CommitOutcome {
    /// Deducted from physical (scaled). A retry answers what the commit it
    /// found did; None only from a tombstone that predates those figures.
    pub committed: Option<i64>,
    /// Returned to availability (scaled); None as for `committed`.
    pub released: Option<i64>,
    /// False when an earlier call had committed the lock.
    pub committed_now: bool,
    /// The record afterwards.
    pub record: StockView,
    /// True when this replays an earlier call.
    pub replayed: bool,
    /// A late commit's fencing token: the lock had expired, and its
    /// quantity was taken again under this token and deducted.
    pub late_token: Option<u64>,
}

/// OpenSession.
#[derive(Clone, Debug)]
pub struct OpenSessionCommand {
    /// How long the session lives without a keep-alive.
    pub ttl: Duration,
    /// Who holds it (and every lock taken in it).
    pub holder: Holder,
    /// Idempotency key; it also names the session.
    pub request_id: RequestId,
}

/// A live session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionView {
    /// Its id.
    pub session_id: SessionId,
    /// Who holds it.
    pub holder: String,
    /// How long each keep-alive extends it by.
    pub ttl: Duration,
    /// When it ends without another keep-alive: Redis time in ms.
    pub expires_at_ms: i64,
}

/// What OpenSession did.
#[derive(Clone, Debug)]
pub struct OpenSessionOutcome {
    /// The session.
    pub session: SessionView,
    /// True when this replays an earlier call with the same request_id.
    pub replayed: bool,
}

/// What CloseSession did.
#[derive(Clone, Copy, Debug)]
pub struct CloseSessionOutcome {
    /// Locks of the session this call released.
    pub released: u64,
    /// False when the session had ended (closed or expired) before the call.
    pub closed_now: bool,
}

/// SetStock: an absolute snapshot.
#[derive(Clone, Debug)]
pub struct SetStockCommand {
    /// Which record.
    pub record: RecordKey,
    /// Physical stock, scaled to `unit_scale`.
    pub physical: ScaledStock,
    /// Reserved stock, scaled to `unit_scale`.
    pub reserved: ScaledStock,
    /// In-transit stock, scaled to `unit_scale`.
    pub in_transit: ScaledStock,
    /// The unit scale of the figures.
    pub unit_scale: UnitScale,
    /// Must be newer than the stored one to apply.
    pub source_version: u64,
    /// Optional idempotency key.
    pub request_id: Option<RequestId>,
    /// Who writes it, for the audit trail.
    pub actor: String,
}

impl SetStockCommand {
    /// What a Lock can take, physical + in_transit, must stay below 2^53
    /// like every figure: the scripts count in doubles, exact only below it.
    pub fn check_in_range(&self) -> Result<(), Error> {
        if self.physical.0.saturating_add(self.in_transit.0) > super::MAX_SCALED {
            return Err(Error::invalid("in_transit", "with physical must stay below 2^53 units of the record's scale"));
        }
        Ok(())
    }
}

/// What SetStock did.
#[derive(Clone, Debug)]
pub struct SetStockOutcome {
    /// False when the snapshot was stale.
    pub applied: bool,
    /// The record afterwards.
    pub record: StockView,
    /// True when this replays an earlier call.
    pub replayed: bool,
}

/// What AdjustStock did.
#[derive(Clone, Debug)]
pub struct AdjustOutcome {
    /// The record afterwards.
    pub record: StockView,
    /// True when this replays an earlier call.
    pub replayed: bool,
}

/// AdjustStock: signed deltas.
#[derive(Clone, Debug)]
pub struct AdjustStockCommand {
    /// Which record.
    pub record: RecordKey,
    /// Change of physical stock.
    pub physical: Signed,
    /// Change of reserved stock.
    pub reserved: Signed,
    /// Change of in-transit stock.
    pub in_transit: Signed,
    /// Idempotency key.
    pub request_id: RequestId,
    /// Why, for the audit trail.
    pub reason: String,
    /// Who changes it, for the audit trail.
    pub actor: String,
}

impl AdjustStockCommand {
    /// An adjustment must change something.
    pub fn check_not_empty(&self) -> Result<(), Error> {
        if self.physical.is_zero() && self.reserved.is_zero() && self.in_transit.is_zero() {
            return Err(Error::invalid("physical_delta", "or reserved_delta or in_transit_delta must be non-zero"));
        }
        Ok(())
    }
}

/// Filters of ListLocks, combined with AND.
#[derive(Clone, Debug, Default)]
pub struct LockFilter {
    /// Only this SKU.
    pub sku: Option<Sku>,
    /// Only this warehouse (with `sku`: one record).
    pub warehouse: Option<WarehouseId>,
    /// Only this order.
    pub order_id: Option<OrderId>,
    /// Only this holder.
    pub holder: Option<Holder>,
    /// Only locks created at least this long ago.
    pub older_than: Option<Duration>,
}

/// A page of ListLocks.
#[derive(Clone, Debug)]
pub struct LockPage {
    /// The locks.
    pub locks: Vec<LockView>,
    /// Where the next page starts; `None` at the end.
    pub next_page_token: Option<String>,
}

/// How many replicas acknowledged the changes made so far by a caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Durability {
    /// Replicas that acknowledged in time.
    pub acknowledged: u32,
    /// Replicas required.
    pub required: u32,
}

impl Durability {
    /// Enough replicas hold the change.
    pub fn durable(&self) -> bool {
        self.acknowledged >= self.required
    }
}

/// The storage port: every mutation is one atomic step in the store.
pub trait StockStore: Send + Sync + 'static {
    /// Writes a snapshot.
    fn set_stock(&self, cmd: SetStockCommand) -> impl Future<Output = Result<SetStockOutcome, Error>> + Send;
    /// Applies deltas.
    fn adjust_stock(&self, cmd: AdjustStockCommand) -> impl Future<Output = Result<AdjustOutcome, Error>> + Send;
    /// Reads records; `None` where a record does not exist.
    fn get_stock(&self, records: &[RecordKey]) -> impl Future<Output = Result<Vec<Option<StockView>>, Error>> + Send;
    /// Every warehouse that has a record of `sku`.
    fn warehouses_of(&self, sku: &Sku) -> impl Future<Output = Result<Vec<WarehouseId>, Error>> + Send;
    /// Lock or BatchLock.
    fn lock(&self, cmd: &LockCommand) -> impl Future<Output = Result<LockOutcome, Error>> + Send;
    /// Renew.
    fn renew(&self, cmd: RenewCommand) -> impl Future<Output = Result<RenewOutcome, Error>> + Send;
    /// Release.
    fn release(&self, cmd: ReleaseCommand) -> impl Future<Output = Result<ReleaseOutcome, Error>> + Send;
    /// Commit.
    fn commit(&self, cmd: CommitCommand) -> impl Future<Output = Result<CommitOutcome, Error>> + Send;
    /// Moves a live lock's quantity to another warehouse of its SKU, atomically.
    fn transfer_lock(&self, cmd: TransferLockCommand) -> impl Future<Output = Result<TransferOutcome, Error>> + Send;
    /// The lock ids a target names (a batch's, read from its record).
    fn lock_ids(&self, target: &LockTarget) -> impl Future<Output = Result<Vec<LockId>, Error>> + Send;
    /// One live lock.
    fn get_lock(&self, lock_id: &LockId) -> impl Future<Output = Result<LockView, Error>> + Send;
    /// Live locks matching `filter`, one page of at most `page_size`.
    fn list_locks(
        &self,
        filter: LockFilter,
        page_size: usize,
        page_token: Option<String>,
    ) -> impl Future<Output = Result<LockPage, Error>> + Send;
    /// Returns the stock of locks that expired up to now to availability,
    /// visiting at most `max_records` records; the number of locks expired.
    fn sweep_expired(&self, max_records: usize) -> impl Future<Output = Result<usize, Error>> + Send;
    /// Opens a session (idempotent by request_id).
    fn open_session(&self, cmd: OpenSessionCommand) -> impl Future<Output = Result<OpenSessionOutcome, Error>> + Send;
    /// Extends a live session by its ttl, from now; `holder`, when set,
    /// must be the session's. One write whatever the session holds.
    fn keep_alive(
        &self,
        session: &SessionId,
        holder: Option<&Holder>,
    ) -> impl Future<Output = Result<SessionView, Error>> + Send;
    /// Ends a session and releases every lock in it (idempotent).
    fn close_session(
        &self,
        session: &SessionId,
        holder: Option<&Holder>,
    ) -> impl Future<Output = Result<CloseSessionOutcome, Error>> + Send;
    /// Ends sessions whose ttl passed without a keep-alive, at most
    /// `max_sessions`, expiring their locks in bounded steps; the number
    /// of locks expired.
    fn sweep_sessions(&self, max_sessions: usize) -> impl Future<Output = Result<usize, Error>> + Send;
    /// How many partitions (event streams) there are.
    fn partitions(&self) -> usize;
    /// The partition whose event stream carries `sku`'s events.
    fn partition_of(&self, sku: &Sku) -> usize;
    /// Events of `partition` after `after`, oldest first, at most `count`.
    fn events_after(
        &self,
        partition: usize,
        after: EventId,
        count: usize,
    ) -> impl Future<Output = Result<Vec<LifecycleEvent>, Error>> + Send;
    /// Where `partition`'s lifecycle event stream stands.
    fn event_position(&self, partition: usize) -> impl Future<Output = Result<StreamPosition, Error>> + Send;
    /// How long the most overdue expired lock has waited for the sweeper (ms).
    fn sweeper_lag_ms(&self) -> impl Future<Output = Result<i64, Error>> + Send;
    /// Counts lock attempts (warehouse, outcome reason) for the hourly health
    /// figures; cheap and non-blocking, flushed in the background.
    fn record_lock_outcomes(&self, outcomes: &[(&str, &'static str)]);
    /// Writes the counted outcomes, kept `retention`; on failure they are
    /// kept for the next flush.
    fn flush_lock_outcomes(&self, retention: Duration) -> impl Future<Output = Result<(), Error>> + Send;
    /// Checks that the store answers.
    fn ping(&self) -> impl Future<Output = Result<(), Error>> + Send;
    /// Makes the store ready to serve again after it answered nothing for a
    /// while (a restarted Redis has no scripts loaded).
    fn prepare(&self) -> impl Future<Output = Result<(), Error>> + Send;
    /// A mark taken before a change, for [`StockStore::durability`] after
    /// it: which primary (and which run of it) the change goes to.
    fn durability_mark(&self) -> u64;
    /// Waits until the configured number of replicas hold every change this
    /// process completed so far, or the durability timeout passes; `None`
    /// when no durability is configured. A change made under `mark` whose
    /// primary failed over or restarted since is reported not durable: the
    /// replicas that answer are another primary's.
    fn durability(&self, mark: u64) -> impl Future<Output = Option<Durability>> + Send;
}
