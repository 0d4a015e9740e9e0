//! The Redis implementation of [`StockStore`].
//!
//! Every mutation is one EVALSHA of a script in `lua/` per partition it
//! touches (see [`Keys`]), over one multiplexed connection to the primary
//! ([`redis::aio::ConnectionManager`], which reconnects by itself; with
//! Sentinel the `link` module follows failovers) or the cluster client. Every call
//! is bounded by the store timeout: a slow or stopped Redis gives
//! [`Error::StoreTimeout`], an unreachable one [`Error::StoreUnavailable`],
//! never a hang. Keys come from [`Keys`] only.
//!
//! The files beside this one:
//! - `call`: bounded calls, the script runner, error mapping, request claims.
//! - `keys`, `scripts`, `reply`: the only key builder; the scripts; the one
//!   reply tag -> error table.
//! - one file per script of `lua/` (`lock` for `lua/lock.lua`, ...): it
//!   builds the script's KEYS and ARGV in the order of its header and
//!   decodes its reply.
//! - `cross`: what spans partitions (scatter and gather, BatchLock's undo).
//! - `list_locks`, `admin`, `events`, `health`, `ingest`: listings, the
//!   admin port, the event streams, lock-health counts, ingestion.
//! - `link`, `durability`: the way to Redis, and WAIT.

mod adjust_stock;
mod admin;
mod binlog;
mod call;
mod check_record;
mod commit;
mod cross;
mod due_records;
mod durability;
mod events;
mod expire_locks;
mod force_release;
mod get_stock;
mod health;
mod ingest;
mod keys;
mod link;
mod list_locks;
mod lock;
mod read_lock;
mod reject_force_unlock;
mod release;
mod renew;
mod repair_record;
mod reply;
mod request_force_unlock;
mod scripts;
mod sessions;
mod set_stock;
mod transfer_lock;

use std::sync::Arc;
use std::time::Duration;

use self::call::millis;
use self::cross::by_partition;
pub use self::durability::DurabilitySettings;
pub use self::keys::{Keys, LOCK_SHARDS, Partition, PartitionKeys, RecordKeys, lock_shard, token_shard};
use self::link::Link;
pub use self::link::Topology;
pub use self::lock::{LockCall, LockLimits};
use self::lock::{Ticket, lock_fingerprint, lock_method};
pub use self::scripts::dataset_identity;
use crate::domain::{
    AdjustOutcome, AdjustStockCommand, CloseSessionOutcome, CommitCommand, CommitOutcome, Error, EventId, Holder,
    LifecycleEvent, LockCommand, LockFilter, LockId, LockOutcome, LockPage, LockTarget, LockView, OpenSessionCommand,
    OpenSessionOutcome, RecordKey, ReleaseCommand, ReleaseOutcome, RenewCommand, RenewOutcome, SessionId, SessionView,
    SetStockCommand, SetStockOutcome, Signed, Sku, StockStore, StockView, StreamPosition, TransferLockCommand,
    TransferOutcome, WarehouseId, new_nonce, session_nonce,
};

/// How the store reaches Redis and how long it keeps what.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// Where the primary is.
    pub topology: Topology,
    /// Upper bound of every Redis call, connection included.
    pub timeout: Duration,
    /// Longest a lock may be held in total, however often it is renewed.
    pub max_hold: Duration,
    /// How long idempotency records and tombstones of ended locks are kept.
    pub retention: Duration,
    /// Prefix of every key.
    pub key_prefix: String,
    /// How many partitions the stock is spread over (see [`Keys`]); fixed
    /// for the life of the data.
    pub partitions: usize,
    /// Whether a request_id reused with other content in another partition
    /// is looked for (see `claimed`).
    pub request_id_claims: bool,
    /// Most audit events kept (the stream is trimmed to about this many).
    pub audit_max_events: u64,
    /// How long a forced-unlock request waits for a decision.
    pub force_unlock_ttl: Duration,
    /// Replica acknowledgements to wait for after each change, if any.
    pub durability: Option<DurabilitySettings>,
}

/// The stock store on one Redis (standalone, or the primary Sentinel names).
#[derive(Clone)]
pub struct RedisStore {
    /// The primary's multiplexed connection: one connection carries every
    /// concurrent call, pipelined.
    link: Arc<Link>,
    /// Waits for replica acknowledgements, when configured.
    durability: Option<Arc<durability::Waiter>>,
    /// Lock-health counts waiting to be written.
    health: Arc<health::Pending>,
    keys: Keys,
    request_id_claims: bool,
    timeout: Duration,
    max_hold_ms: u64,
    retention_ms: u64,
    audit_max_events: u64,
    force_unlock_ttl_ms: u64,
}

impl RedisStore {
    /// Connects and loads every script, so the first call needs no SCRIPT LOAD.
    pub async fn connect(settings: &RedisSettings) -> Result<Self, Error> {
        let keys = Keys::new(&settings.key_prefix, settings.partitions);
        if settings.durability.is_some() && matches!(settings.topology, Topology::Cluster { .. }) {
            // WAIT covers one connection's writes on one node; a cluster
            // spreads a process's writes over every shard.
            return Err(Error::invalid("durability_replicas", "is not supported with --redis-mode cluster"));
        }
        let link = Link::connect(&settings.topology, settings.timeout, keys.epochs()).await?;
        check_layout(&link, &keys, settings.timeout).await?;
        let durability =
            settings.durability.map(|d| Arc::new(durability::Waiter::start(d, &link, keys.durability_marker())));
        Ok(Self {
            link,
            durability,
            health: Arc::default(),
            keys,
            request_id_claims: settings.request_id_claims,
            timeout: settings.timeout,
            max_hold_ms: millis(settings.max_hold),
            retention_ms: millis(settings.retention),
            audit_max_events: settings.audit_max_events,
            force_unlock_ttl_ms: millis(settings.force_unlock_ttl),
        })
    }

    /// Every script's file name and SHA1, as EVALSHA names it (in Redis's
    /// slow log, say) on a dataset of `identity` (see [`dataset_identity`]).
    pub fn script_shas(identity: &str) -> Vec<(&'static str, String)> {
        let set = scripts::ScriptSet::new(identity);
        scripts::all().into_iter().map(|(name, script)| (name, set.sha(script).to_owned())).collect()
    }

    /// Raises the fencing epochs and loads every script (see `link`): for a
    /// Redis that answers again after an outage, and may have lost data.
    /// Calls recover from a lost script cache by themselves; this only saves
    /// the first call a round trip.
    pub async fn load_scripts(&self) -> Result<(), Error> {
        self.link.recover_scripts(self.link.era()).await
    }
}

impl StockStore for RedisStore {
    async fn set_stock(&self, cmd: SetStockCommand) -> Result<SetStockOutcome, Error> {
        self.write_snapshot(cmd).await
    }

    async fn adjust_stock(&self, cmd: AdjustStockCommand) -> Result<AdjustOutcome, Error> {
        self.apply_deltas(cmd).await
    }

    async fn get_stock(&self, records: &[RecordKey]) -> Result<Vec<Option<StockView>>, Error> {
        let (views, _) = self
            .scatter(records.iter().map(|r| &r.sku), |_, numbers| {
                let group: Vec<RecordKey> = numbers.iter().map(|&i| records[i].clone()).collect();
                async move { Ok((self.get_stock_group(&group).await?, true)) }
            })
            .await?;
        Ok(views)
    }

    async fn warehouses_of(&self, sku: &Sku) -> Result<Vec<WarehouseId>, Error> {
        let members: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(self.keys.warehouses(sku))).await?;
        let mut warehouses: Vec<WarehouseId> =
            members.iter().filter_map(|w| WarehouseId::parse(w, "warehouse_id").ok()).collect();
        warehouses.sort();
        Ok(warehouses)
    }

    async fn lock(&self, cmd: &LockCommand) -> Result<LockOutcome, Error> {
        let groups = by_partition(&self.keys, cmd.lines.iter().map(|l| &l.record.sku));
        self.claimed(lock_method(cmd), &cmd.request_id, || lock_fingerprint(cmd), async {
            // In a session: the session must be live and the caller's, and
            // the partitions its locks go to are written down first.
            let (cmd, ticket) = match &cmd.session {
                None => (cmd.clone(), Ticket { nonce: new_nonce(), session_lease_ms: None, across_partitions: false }),
                Some(session) => {
                    let partitions: Vec<Partition> = groups.iter().map(|(p, _)| *p).collect();
                    let joined = self.join_session(session, Some(&cmd.holder), &partitions).await?;
                    let nonce = session_nonce(&new_nonce(), session);
                    let ticket =
                        Ticket { nonce, session_lease_ms: Some(joined.expires_at_ms), across_partitions: false };
                    (LockCommand { ttl: joined.ttl, ..cmd.clone() }, ticket)
                }
            };
            let cmd = &cmd;
            // With several partitions a batch's partitions are written down
            // even when it has one, since Renew and Release find them by batch id.
            match &groups[..] {
                [(partition, numbers)] if cmd.batch_id.is_none() || self.keys.partitions() == 1 => {
                    self.lock_group(*partition, cmd, numbers, &ticket).await
                }
                _ => self.lock_across_partitions(cmd, &groups, &ticket).await,
            }
        })
        .await
    }

    async fn renew(&self, cmd: RenewCommand) -> Result<RenewOutcome, Error> {
        let ids = self.resolve(&cmd.target).await?;
        let scattered = self.scatter(ids.iter().map(|id| &id.record.sku), |partition, numbers| {
            let group = numbers.iter().map(|&i| ids[i].clone()).collect();
            self.renew_group(partition, &cmd, group)
        });
        let (items, replayed) = scattered.await?;
        Ok(RenewOutcome { items, replayed })
    }

    async fn release(&self, cmd: ReleaseCommand) -> Result<ReleaseOutcome, Error> {
        let ids = self.resolve(&cmd.target).await?;
        let scattered = self.scatter(ids.iter().map(|id| &id.record.sku), |partition, numbers| {
            let group: Vec<LockId> = numbers.iter().map(|&i| ids[i].clone()).collect();
            let cmd = &cmd;
            async move { self.release_group(partition, cmd, &group).await }
        });
        let (items, replayed) = scattered.await?;
        Ok(ReleaseOutcome { items, replayed })
    }

    async fn commit(&self, cmd: CommitCommand) -> Result<CommitOutcome, Error> {
        self.commit_lock(&cmd).await
    }

    async fn transfer_lock(&self, cmd: TransferLockCommand) -> Result<TransferOutcome, Error> {
        self.transfer(&cmd).await
    }

    async fn lock_ids(&self, target: &LockTarget) -> Result<Vec<LockId>, Error> {
        self.resolve(target).await
    }

    async fn get_lock(&self, lock_id: &LockId) -> Result<LockView, Error> {
        self.read_lock(lock_id).await
    }

    async fn list_locks(
        &self,
        filter: LockFilter,
        page_size: usize,
        page_token: Option<String>,
    ) -> Result<LockPage, Error> {
        self.list_page(filter, page_size, page_token).await
    }

    async fn sweep_expired(&self, max_records: usize) -> Result<usize, Error> {
        let mut expired = 0;
        for partition in 0..self.keys.partitions() {
            expired += self.sweep_partition(partition, max_records).await?;
        }
        Ok(expired)
    }

    async fn open_session(&self, cmd: OpenSessionCommand) -> Result<OpenSessionOutcome, Error> {
        self.open_session_call(cmd).await
    }

    async fn keep_alive(&self, session: &SessionId, holder: Option<&Holder>) -> Result<SessionView, Error> {
        self.keep_alive_call(session, holder).await
    }

    async fn close_session(&self, session: &SessionId, holder: Option<&Holder>) -> Result<CloseSessionOutcome, Error> {
        self.close_session_call(session, holder).await
    }

    async fn sweep_sessions(&self, max_sessions: usize) -> Result<usize, Error> {
        self.sweep_session_partitions(max_sessions).await
    }

    fn partitions(&self) -> usize {
        self.keys.partitions()
    }

    fn partition_of(&self, sku: &Sku) -> usize {
        self.keys.partition_of(sku)
    }

    async fn events_after(&self, partition: usize, after: EventId, count: usize) -> Result<Vec<LifecycleEvent>, Error> {
        self.read_events_after(partition, after, count).await
    }

    async fn event_position(&self, partition: usize) -> Result<StreamPosition, Error> {
        self.read_event_position(partition).await
    }

    async fn sweeper_lag_ms(&self) -> Result<i64, Error> {
        let mut lag = 0;
        for partition in 0..self.keys.partitions() {
            // TIME of the partition's own shard: the due times came from its clock.
            let pipe = redis::pipe().zrange_withscores(self.keys.due(partition), 0, 0).cmd("TIME").clone();
            let (first, time): (Vec<(String, f64)>, (i64, i64)) = self.query_pipe(&pipe).await?;
            let now = time.0 * 1000 + time.1 / 1000;
            lag = lag.max(first.first().map_or(0, |(_, due)| (now - *due as i64).max(0)));
        }
        Ok(lag)
    }

    fn record_lock_outcomes(&self, outcomes: &[(&str, &'static str)]) {
        self.health.add(outcomes);
    }

    async fn flush_lock_outcomes(&self, retention: Duration) -> Result<(), Error> {
        self.write_lock_outcomes(retention).await
    }

    async fn prepare(&self) -> Result<(), Error> {
        self.load_scripts().await
    }

    async fn ping(&self) -> Result<(), Error> {
        let _: String = self.query(&redis::cmd("PING")).await?;
        Ok(())
    }

    fn durability_mark(&self) -> u64 {
        self.link.era()
    }

    async fn durability(&self, mark: u64) -> Option<crate::domain::Durability> {
        match &self.durability {
            Some(waiter) => Some(waiter.wait(mark).await),
            None => None,
        }
    }
}

/// The version of the data layout this store reads and writes: 2 added the
/// partitions' lock indexes; 3 keeps Lock idempotency records in a hash per
/// generation and tombstones in buckets of tokens; 4 spreads a record's
/// locks, expiries and lock-index entries over 16 shards by nonce, and
/// counts its live locks. Stored on first start; data of another version is
/// refused, not misread.
const LAYOUT_VERSION: &str = "4";

/// Records the partition count on first start and refuses another one
/// later: with another count every SKU would look for its keys elsewhere.
async fn check_layout(link: &Link, keys: &Keys, timeout: Duration) -> Result<(), Error> {
    let mut conn = link.conn();
    // Data of another layout would be misread: refuse it, with what to do.
    let version: Option<String> =
        call::bounded(timeout, redis::cmd("GET").arg(keys.layout_version()).query_async(&mut conn)).await?;
    let older: Option<String> = match version {
        Some(_) => None,
        None => call::bounded(timeout, redis::cmd("GET").arg(keys.layout()).query_async(&mut conn)).await?,
    };
    if version.as_deref().is_some_and(|v| v != LAYOUT_VERSION) || older.is_some() {
        let found = version.unwrap_or_else(|| "1".to_owned());
        return Err(Error::invalid(
            "redis_url",
            format!(
                "holds stocklock data of layout {found}, which this version ({LAYOUT_VERSION}) cannot read; \
                 start on an empty Redis or another --key-prefix"
            ),
        ));
    }
    let mut mark = redis::cmd("SET");
    mark.arg(keys.layout_version()).arg(LAYOUT_VERSION).arg("NX");
    let _: Option<String> = call::bounded(timeout, mark.query_async(&mut conn)).await?;
    let mut set = redis::cmd("SET");
    set.arg(keys.layout()).arg(keys.partitions()).arg("NX").arg("GET");
    let stored: Option<usize> = call::bounded(timeout, set.query_async(&mut conn)).await?;
    if let Some(stored) = stored
        && stored != keys.partitions()
    {
        return Err(Error::invalid(
            "redis_partitions",
            format!("is {} but the data in Redis is laid out in {stored} partitions", keys.partitions()),
        ));
    }
    Ok(())
}

/// A connection of its own, for a worker's blocking reads of a stream (a
/// blocking read would stall every call sharing the main connection).
pub struct StreamReader(link::Conn);

/// Record, token and nonce of each lock, as the scripts take them.
fn lock_args(ids: &[LockId]) -> Vec<[String; 3]> {
    ids.iter().map(|id| [id.record.to_string(), id.token.to_string(), id.nonce.clone()]).collect()
}

/// A signed decimal as the scripts take it: mantissa and scale.
fn signed_args(value: Signed) -> [String; 2] {
    [value.mantissa.to_string(), value.scale.to_string()]
}
