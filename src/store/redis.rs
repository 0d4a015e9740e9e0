//! The Redis implementation of [`StockStore`].
//!
//! Every mutation is one EVALSHA of a script in `lua/` per partition it
//! touches (see [`Keys`]), over one multiplexed connection to the primary
//! ([`redis::aio::ConnectionManager`], which reconnects by itself; with
//! Sentinel the `link` module follows failovers) or the cluster client. Every call
//! is bounded by the store timeout: a slow or stopped Redis gives
//! [`Error::StoreTimeout`], an unreachable one [`Error::StoreUnavailable`],
//! never a hang. Keys come from [`Keys`] only.

mod admin;
mod cross;
mod decode;
mod durability;
mod events;
mod health;
mod ingest;
mod keys;
mod link;
mod scripts;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::{RedisError, ScriptInvocation};
use tracing::Instrument;

use self::cross::by_partition;
use self::decode::{Reply, malformed};
pub use self::durability::DurabilitySettings;
pub use self::ingest::{IngestSettings, IngestStats};
pub use self::keys::{Keys, Partition, RecordKeys};
use self::link::Link;
pub use self::link::Topology;
use crate::domain::{
    AdjustStockCommand, CommitCommand, CommitOutcome, Error, EventId, LifecycleEvent, LockCommand, LockEnd, LockFilter,
    LockId, LockOutcome, LockPage, LockTarget, LockView, RecordKey, ReleaseCommand, ReleaseItem, ReleaseKind,
    ReleaseOutcome, RenewCommand, RenewItem, RenewOutcome, Renewed, RequestId, SetStockCommand, SetStockOutcome,
    Signed, Sku, StockStore, StockView, StreamPosition, UnitScale, WarehouseId, format_scaled, new_nonce,
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
        let link = Link::connect(&settings.topology, settings.timeout, keys.epoch()).await?;
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

    /// Loads every script (SCRIPT LOAD). Calls recover from a flushed script
    /// cache by themselves; this only saves the first call a round trip.
    pub async fn load_scripts(&self) -> Result<(), Error> {
        for script in scripts::all() {
            let mut conn = self.link.conn();
            self.bounded(script.prepare_invoke().load_async(&mut conn)).await?;
        }
        Ok(())
    }

    /// `call` within the store timeout; an error that looks like a failover
    /// makes the link look for a new primary.
    async fn bounded<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, Error> {
        let observed = async {
            let result = call.await;
            if let Err(e) = &result {
                self.link.observe(e);
            }
            result
        };
        bounded(self.timeout, observed).await
    }

    /// One EVALSHA (SCRIPT LOAD and a retry on NOSCRIPT), timed as `op`
    /// in a child span and in the Redis metrics.
    async fn run_script(&self, op: &'static str, invocation: &ScriptInvocation<'_>) -> Result<Reply, Error> {
        let mut conn = self.link.conn();
        let started = std::time::Instant::now();
        // invoke_async loads the script on NOSCRIPT and retries once; a
        // SCRIPT FLUSH (or a failover) between the load and the retry gives
        // NOSCRIPT again. Each round is a round trip to Redis, and the store
        // timeout bounds them all, so it goes on until it runs or time is up.
        let call = async {
            loop {
                match invocation.invoke_async(&mut conn).await {
                    Err(e) if e.code() == Some("NOSCRIPT") => {}
                    result => return result,
                }
            }
        };
        let result: Result<Vec<String>, Error> = self
            .bounded(call)
            .instrument(tracing::debug_span!("redis", otel.name = op, db.system = "redis", db.operation = op))
            .await;
        let kind = result.as_ref().err().map(|e| match e {
            Error::StoreTimeout => "timeout",
            Error::StoreUnavailable { .. } => "unavailable",
            Error::StoreOutOfMemory => "out_of_memory",
            _ => "other",
        });
        crate::metrics::METRICS.redis(op, started.elapsed(), kind);
        Reply::new(result?)
    }

    fn add_record(&self, invocation: &mut ScriptInvocation<'_>, record: &RecordKey) {
        for key in self.keys.record(record) {
            invocation.key(key);
        }
    }

    /// Renews `ids`, all in `partition`, in one script.
    async fn renew_group(
        &self,
        partition: Partition,
        cmd: &RenewCommand,
        ids: Vec<LockId>,
    ) -> Result<(Vec<RenewItem>, bool), Error> {
        let ttl_ms = cmd.ttl.map_or(0, millis).to_string();
        let lock_args = lock_args(&ids);
        let fp = renew_fingerprint(cmd, &ids);

        let mut inv = scripts::RENEW.prepare_invoke();
        inv.key(self.keys.idempotency(partition, "renew", &cmd.request_id)).key(self.keys.due(partition));
        for id in &ids {
            self.add_record(&mut inv, &id.record);
        }
        inv.key(self.keys.events(partition));
        inv.arg(&fp).arg(cmd.holder.as_str()).arg(&ttl_ms).arg(self.retention_ms).arg(self.retention_ms);
        for args in &lock_args {
            inv.arg(&args[..]);
        }
        let mut reply = self.run_script("renew", &inv).await?;
        match reply.tag.as_str() {
            "OK" => {}
            "IDEMPOTENCY_KEY_REUSED" => return Err(reused(&cmd.request_id)),
            _ => return Err(reply.unexpected()),
        }
        let mut items = Vec::with_capacity(ids.len());
        for lock_id in ids {
            let status = reply.text()?;
            let expires_at_ms = reply.int()?;
            let capped = reply.text()? == "1";
            let result = if status == "OK" {
                Ok(Renewed { expires_at_ms, max_hold_reached: capped })
            } else {
                Err(lock_error(&status, &lock_id)?)
            };
            items.push(RenewItem { lock_id, result });
        }
        Ok((items, reply.replayed))
    }

    /// Releases `ids`, all in `partition`, in one script.
    pub(super) async fn release_group(
        &self,
        partition: Partition,
        cmd: &ReleaseCommand,
        ids: &[LockId],
    ) -> Result<(Vec<ReleaseItem>, bool), Error> {
        let holder = cmd.holder.as_ref().map_or("", |h| h.as_str());
        let lock_args = lock_args(ids);
        let fp = release_fingerprint(cmd, ids);

        let mut inv = scripts::RELEASE.prepare_invoke();
        inv.key(self.keys.idempotency(partition, "release", &cmd.request_id)).key(self.keys.due(partition));
        for id in ids {
            self.add_record(&mut inv, &id.record);
        }
        inv.key(self.keys.events(partition));
        inv.arg(&fp).arg(holder).arg(self.retention_ms).arg(self.retention_ms);
        for args in &lock_args {
            inv.arg(&args[..]);
        }
        let mut reply = self.run_script("release", &inv).await?;
        match reply.tag.as_str() {
            "OK" => {}
            "IDEMPOTENCY_KEY_REUSED" => return Err(reused(&cmd.request_id)),
            "LOCK_COMMITTED" => {
                let lock_id = ids[reply.index(ids.len())?].to_string();
                return Err(Error::LockAlreadyCommitted { lock_id });
            }
            "LOCK_NOT_FOUND" | "LOCK_HOLDER_MISMATCH" => {
                let tag = reply.tag.clone();
                return Err(lock_error(&tag, &ids[reply.index(ids.len())?])?);
            }
            _ => return Err(reply.unexpected()),
        }
        let mut items = Vec::with_capacity(ids.len());
        for lock_id in ids.iter().cloned() {
            let kind = match reply.text()?.as_str() {
                "RELEASED" => ReleaseKind::Released,
                "ALREADY_RELEASED" => ReleaseKind::AlreadyReleased,
                "ALREADY_EXPIRED" => ReleaseKind::AlreadyExpired,
                "FORCE_RELEASED" => ReleaseKind::ForceReleased,
                other => return Err(malformed(&format!("the release outcome {other:?}"))),
            };
            let quantity = reply.int()?;
            let unit_scale = reply.unit_scale()?;
            items.push(ReleaseItem { lock_id, kind, quantity, unit_scale });
        }
        Ok((items, reply.replayed))
    }

    /// Reads `records`, all in one partition, in one script.
    async fn get_stock_group(&self, records: &[RecordKey]) -> Result<Vec<Option<StockView>>, Error> {
        let mut inv = scripts::GET_STOCK.prepare_invoke();
        for record in records {
            self.add_record(&mut inv, record);
        }
        let mut reply = self.run_script("get_stock", &inv).await?;
        // get_stock.lua has no tag: its first element is the first record's flag.
        let mut flag = Some(std::mem::take(&mut reply.tag));
        let mut views = Vec::with_capacity(records.len());
        for record in records {
            let exists = match flag.take() {
                Some(first) => first,
                None => reply.text()?,
            };
            views.push(if exists == "1" { Some(reply.record(record.clone())?) } else { None });
        }
        Ok(views)
    }

    /// Runs `call` under a claim of `request_id` for `method`. With several
    /// partitions each keeps its own idempotency records, so a request id
    /// reused with other content in another partition would go unnoticed:
    /// the claim, one key in the request id's partition holding the first
    /// content's fingerprint, catches it (one more round trip). A call that
    /// definitely failed gives its claim back, as a failed call leaves no
    /// idempotency record. With one partition the scripts see every reuse;
    /// `--request-id-claims false` turns the claim off. `fingerprint` is
    /// only computed when a claim is made.
    async fn claimed<T>(
        &self,
        method: &str,
        request_id: &RequestId,
        fingerprint: impl FnOnce() -> String,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        if self.keys.partitions() == 1 || !self.request_id_claims {
            return call.await;
        }
        let claim = self.keys.request_claim(method, request_id);
        let fp = fingerprint();
        if self.set_or_get(&claim, &fp, self.retention_ms).await?.is_some_and(|first| first != fp) {
            return Err(reused(request_id));
        }
        let result = call.await;
        if let Err(e) = &result
            && !matches!(e, Error::StoreTimeout | Error::StoreUnavailable { .. } | Error::StoreOutOfMemory)
        {
            let mut conn = self.link.conn();
            let _: Result<(), Error> = self.bounded(redis::cmd("DEL").arg(&claim).query_async(&mut conn)).await;
        }
        result
    }

    /// Sets `key` to `value` for `ttl_ms` unless it is set, in one command
    /// (so a cluster client follows MOVED and ASK for it); the value already
    /// there, if any.
    pub(super) async fn set_or_get(&self, key: &str, value: &str, ttl_ms: u64) -> Result<Option<String>, Error> {
        let mut set = redis::cmd("SET");
        set.arg(key).arg(value).arg("NX").arg("GET").arg("PX").arg(ttl_ms.max(1));
        let mut conn = self.link.conn();
        self.bounded(set.query_async(&mut conn)).await
    }

    /// Expires the due locks of up to `max_records` records of one partition.
    async fn sweep_partition(&self, partition: Partition, max_records: usize) -> Result<usize, Error> {
        let due_key = self.keys.due(partition);
        let mut inv = scripts::DUE_RECORDS.prepare_invoke();
        inv.key(&due_key).arg(max_records);
        let mut conn = self.link.conn();
        let due: Vec<String> = self.bounded(inv.invoke_async(&mut conn)).await?;
        let mut expired = 0;
        for id in due {
            let Some(record) = RecordKey::parse_id(&id) else {
                tracing::warn!(record = %id, "due index holds a record id that does not parse; removing it");
                let _: () = self.bounded(redis::cmd("ZREM").arg(&due_key).arg(&id).query_async(&mut conn)).await?;
                continue;
            };
            let mut inv = scripts::EXPIRE_LOCKS.prepare_invoke();
            inv.key(&due_key);
            self.add_record(&mut inv, &record);
            inv.key(self.keys.events(partition)).arg(&id).arg(self.retention_ms);
            let count: usize = self.bounded(inv.invoke_async(&mut conn)).await?;
            expired += count;
        }
        Ok(expired)
    }

    /// The lock ids a target names; a batch's are read from its record.
    async fn resolve(&self, target: &LockTarget) -> Result<Vec<LockId>, Error> {
        let batch_id = match target {
            LockTarget::Locks(ids) => return Ok(ids.clone()),
            LockTarget::Batch(batch_id) => batch_id,
        };
        let mut conn = self.link.conn();
        let partitions: Vec<Partition> = if self.keys.partitions() == 1 {
            vec![0]
        } else {
            let listed: Option<String> = self
                .bounded(redis::cmd("GET").arg(self.keys.batch_partitions(batch_id)).query_async(&mut conn))
                .await?;
            let listed = listed.ok_or_else(|| Error::BatchNotFound { batch_id: batch_id.to_string() })?;
            listed
                .split(',')
                .map(|p| p.parse().map_err(|_| malformed("a bad batch partition")))
                .collect::<Result<_, _>>()?
        };
        // Each partition's script wrote the part of the batch it locked, with
        // its own nonce (a retry may lock a later partition under a new one).
        let mut ids = Vec::new();
        for partition in partitions {
            let stored: Option<String> = self
                .bounded(redis::cmd("GET").arg(self.keys.batch(partition, batch_id)).query_async(&mut conn))
                .await?;
            let Some(stored) = stored else { continue };
            let mut lines = stored.lines();
            let (_holder, nonce) = (lines.next(), lines.next().ok_or_else(|| malformed("a batch without a nonce"))?);
            for line in lines {
                let (record, token) = line.rsplit_once('|').ok_or_else(|| malformed("a bad batch line"))?;
                ids.push(LockId {
                    record: RecordKey::parse_id(record).ok_or_else(|| malformed("a bad batch record"))?,
                    token: token.parse().map_err(|_| malformed("a bad batch token"))?,
                    nonce: nonce.to_owned(),
                });
            }
        }
        if ids.is_empty() {
            return Err(Error::BatchNotFound { batch_id: batch_id.to_string() });
        }
        Ok(ids)
    }

    /// A record's live locks as of Redis time, in token order.
    async fn record_locks(&self, record: &RecordKey) -> Result<(Vec<LockView>, i64), Error> {
        let mut inv = scripts::READ_LOCKS.prepare_invoke();
        self.add_record(&mut inv, record);
        let mut reply = self.run_script("read_locks", &inv).await?;
        // read_locks.lua has no tag: its first element is the unit scale.
        let unit_scale = std::mem::take(&mut reply.tag).parse().unwrap_or(0);
        let unit_scale = UnitScale::new(unit_scale, "unit_scale").map_err(|_| malformed("a bad unit scale"))?;
        let now = reply.int()?;
        let mut views = Vec::new();
        while !reply.is_done() {
            let token = reply.uint()?;
            let packed = reply.text()?;
            let expires_at_ms = reply.int()?;
            if expires_at_ms > now {
                views.push(unpack_lock(record, token, &packed, expires_at_ms, unit_scale)?);
            }
        }
        views.sort_by_key(|v| v.lock_id.token);
        Ok((views, now))
    }

    /// The batch of records to list locks of at `at` (a partition, and a
    /// cursor in its due index), and where the next batch is (`None` after
    /// the last partition's last batch).
    async fn record_batch(&self, filter: &LockFilter, at: BatchAt) -> Result<(Vec<RecordKey>, Option<BatchAt>), Error> {
        let (partition, cursor) = at;
        let mut records = match (&filter.sku, &filter.warehouse) {
            // A filter by SKU names its records without the due index.
            (Some(sku), Some(warehouse)) => {
                return Ok((vec![RecordKey::new(sku.clone(), warehouse.clone())], None));
            }
            (Some(sku), None) => {
                let warehouses = self.warehouses_of(sku).await?;
                let records: Vec<RecordKey> = warehouses.into_iter().map(|w| RecordKey::new(sku.clone(), w)).collect();
                (records, None)
            }
            (None, _) => {
                // Only records with live locks are in the due index.
                let mut conn = self.link.conn();
                let (next, members): (u64, Vec<String>) = self
                    .bounded(
                        redis::cmd("ZSCAN")
                            .arg(self.keys.due(partition))
                            .arg(cursor)
                            .arg("COUNT")
                            .arg(200)
                            .query_async(&mut conn),
                    )
                    .await?;
                // ZSCAN answers member, score, member, score...
                let records: Vec<RecordKey> =
                    members.iter().step_by(2).filter_map(|id| RecordKey::parse_id(id)).collect();
                let next = match next {
                    0 if partition + 1 == self.keys.partitions() => None,
                    0 => Some((partition + 1, 0)),
                    next => Some((partition, next)),
                };
                (records, next)
            }
        };
        if let Some(warehouse) = &filter.warehouse {
            records.0.retain(|r: &RecordKey| &r.warehouse == warehouse);
        }
        records.0.sort();
        records.0.dedup();
        Ok(records)
    }
}

/// Records the partition count on first start and refuses another one
/// later: with another count every SKU would look for its keys elsewhere.
async fn check_layout(link: &Link, keys: &Keys, timeout: Duration) -> Result<(), Error> {
    let mut conn = link.conn();
    let mut set = redis::cmd("SET");
    set.arg(keys.layout()).arg(keys.partitions()).arg("NX").arg("GET");
    let stored: Option<usize> = bounded(timeout, set.query_async(&mut conn)).await?;
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

async fn bounded<T>(limit: Duration, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, Error> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(store_error(e)),
        Err(_) => Err(Error::StoreTimeout),
    }
}

/// The KEYS and ARGV of lock.lua for `cmd` (see the script's header).
fn lock_call(
    keys: &Keys,
    partition: Partition,
    cmd: &LockCommand,
    max_hold_ms: u64,
    retention_ms: u64,
    nonce: &str,
    token_floor: u64,
) -> (Vec<String>, Vec<String>) {
    let ttl_ms = millis(cmd.ttl).to_string();
    let method = lock_method(cmd);
    let fp = lock_fingerprint(cmd);
    let line_args = line_args(cmd);

    let mut key_list = vec![keys.idempotency(partition, method, &cmd.request_id), keys.due(partition)];
    for line in &cmd.lines {
        key_list.extend(keys.record(&line.record));
    }
    if let Some(batch) = &cmd.batch_id {
        key_list.push(keys.batch(partition, batch));
    }
    key_list.push(keys.events(partition));
    let mut args = vec![
        fp,
        ttl_ms,
        max_hold_ms.to_string(),
        cmd.holder.to_string(),
        cmd.order_id.to_string(),
        cmd.batch_id.as_ref().map_or_else(String::new, |b| b.to_string()),
        retention_ms.to_string(),
        retention_ms.to_string(),
        nonce.to_owned(),
        token_floor.to_string(),
    ];
    args.extend(line_args);
    (key_list, args)
}

/// The command line of one Lock of a unit of `record` through the service's
/// own lock script, for `redis-benchmark`: the physical limit of a Lock on
/// this Redis. `__rand_int__` (redis-benchmark's placeholder, with `-r`)
/// gives each call its own idempotency key, so every call does the full work
/// instead of replaying the first one. The script must be loaded (a running
/// service loads it).
pub fn lock_benchmark_command(keys: &Keys, record: &RecordKey) -> Vec<String> {
    let cmd = LockCommand {
        lines: vec![crate::domain::LockLine {
            record: record.clone(),
            quantity: crate::domain::Quantity::parse("1", "quantity").expect("1 is a quantity"),
        }],
        ttl: Duration::from_secs(60),
        order_id: crate::domain::OrderId::parse("bench", "order_id").expect("a valid id"),
        holder: crate::domain::Holder::parse("redis-benchmark", "holder").expect("a valid id"),
        request_id: crate::domain::RequestId::parse("bench-__rand_int__", "request_id").expect("a valid id"),
        batch_id: None,
    };
    let partition = keys.partition_of(&record.sku);
    let (keys, args) = lock_call(keys, partition, &cmd, 24 * 3_600_000, 600_000, "0badc0de", 0);
    let mut line = vec!["EVALSHA".to_owned(), scripts::LOCK.get_hash().to_owned(), keys.len().to_string()];
    line.extend(keys);
    line.extend(args);
    line
}

/// Maps a client error to what the caller can do about it.
fn store_error(e: RedisError) -> Error {
    match e.code() {
        Some("OOM") => return Error::StoreOutOfMemory,
        // A long script, a loading replica, a failover in progress: transient.
        Some("BUSY" | "LOADING" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY") => {
            return Error::StoreUnavailable { detail: e.to_string() };
        }
        // A redirect the cluster client could not follow (a pipeline in a
        // slot that is migrating): the slot is moving, try again.
        _ if e.is_cluster_error() => {
            return Error::StoreUnavailable { detail: format!("the Redis Cluster slot is moving: {e}") };
        }
        _ => {}
    }
    if e.is_timeout() {
        Error::StoreTimeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_unrecoverable_error() {
        Error::StoreUnavailable { detail: e.to_string() }
    } else {
        Error::Internal { detail: e.to_string() }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Record, token and nonce of each lock, as the scripts take them.
fn lock_args(ids: &[LockId]) -> Vec<[String; 3]> {
    ids.iter().map(|id| [id.record.to_string(), id.token.to_string(), id.nonce.clone()]).collect()
}

/// Record, quantity mantissa and scale of each line, as lock.lua takes them.
fn line_args(cmd: &LockCommand) -> Vec<String> {
    cmd.lines
        .iter()
        .flat_map(|line| {
            let q = line.quantity.decimal();
            [line.record.to_string(), q.mantissa.to_string(), q.scale.to_string()]
        })
        .collect()
}

/// The method of a Lock or BatchLock: request ids are scoped per method.
fn lock_method(cmd: &LockCommand) -> &'static str {
    if cmd.batch_id.is_some() { "batch_lock" } else { "lock" }
}

/// The fingerprint of a Lock or BatchLock's content.
fn lock_fingerprint(cmd: &LockCommand) -> String {
    let ttl_ms = millis(cmd.ttl).to_string();
    let line_args = line_args(cmd);
    let mut parts = vec![lock_method(cmd), &ttl_ms, cmd.holder.as_str(), cmd.order_id.as_str()];
    parts.extend(line_args.iter().map(String::as_str));
    fingerprint(&parts)
}

/// The fingerprint of a Renew of `ids`.
fn renew_fingerprint(cmd: &RenewCommand, ids: &[LockId]) -> String {
    let ttl_ms = cmd.ttl.map_or(0, millis).to_string();
    let lock_args = lock_args(ids);
    let mut parts = vec![cmd.holder.as_str(), &ttl_ms];
    parts.extend(lock_args.iter().flatten().map(String::as_str));
    fingerprint(&parts)
}

/// The fingerprint of a Release of `ids`.
fn release_fingerprint(cmd: &ReleaseCommand, ids: &[LockId]) -> String {
    let lock_args = lock_args(ids);
    let mut parts = vec![cmd.holder.as_ref().map_or("", |h| h.as_str())];
    parts.extend(lock_args.iter().flatten().map(String::as_str));
    fingerprint(&parts)
}

/// A stable digest of a request's content, stored with its idempotency record
/// so a reused request_id with other content is told apart from a retry.
fn fingerprint(parts: &[&str]) -> String {
    sha1_smol::Sha1::from(parts.join("\u{1f}")).digest().to_string()
}

fn unpack_lock(
    record: &RecordKey,
    token: u64,
    packed: &str,
    expires_at_ms: i64,
    unit_scale: UnitScale,
) -> Result<LockView, Error> {
    // qty|created|max_expires|ttl|holder|order_id|nonce|batch_id, see lua/lib.lua
    let f: Vec<&str> = packed.split('|').collect();
    let [qty, created, max_expires, ttl, holder, order_id, nonce, batch_id] = f[..] else {
        return Err(malformed("a bad lock record"));
    };
    let int = |s: &str| s.parse::<i64>().map_err(|_| malformed("a bad lock figure"));
    Ok(LockView {
        lock_id: LockId { record: record.clone(), token, nonce: nonce.to_owned() },
        quantity: int(qty)?,
        unit_scale,
        created_at_ms: int(created)?,
        expires_at_ms,
        max_expires_at_ms: int(max_expires)?,
        ttl: Duration::from_millis(int(ttl)?.unsigned_abs()),
        order_id: order_id.to_owned(),
        holder: holder.to_owned(),
        batch_id: (!batch_id.is_empty()).then(|| batch_id.to_owned()),
    })
}

/// The error of a lock that a script found not live.
fn lock_error(reason: &str, lock_id: &LockId) -> Result<Error, Error> {
    let lock_id = lock_id.to_string();
    Ok(match reason {
        "LOCK_NOT_FOUND" => Error::LockNotFound { lock_id, ended: None },
        "LOCK_RELEASED" => Error::LockNotFound { lock_id, ended: Some(LockEnd::Released) },
        "LOCK_COMMITTED" => Error::LockNotFound { lock_id, ended: Some(LockEnd::Committed) },
        "LOCK_EXPIRED" => Error::LockExpired { lock_id },
        "LOCK_HOLDER_MISMATCH" => Error::HolderMismatch { lock_id },
        "LOCK_FORCE_RELEASED" => Error::LockForceReleased { lock_id },
        other => return Err(malformed(&format!("the lock state {other:?}"))),
    })
}

fn reused(request_id: &impl std::fmt::Display) -> Error {
    Error::IdempotencyKeyReused { request_id: request_id.to_string() }
}

fn signed_args(value: Signed) -> [String; 2] {
    [value.mantissa.to_string(), value.scale.to_string()]
}

impl StockStore for RedisStore {
    async fn set_stock(&self, cmd: SetStockCommand) -> Result<SetStockOutcome, Error> {
        let figures = [cmd.physical.0, cmd.reserved.0, cmd.in_transit.0].map(|v| v.to_string());
        let (unit_scale, source_version) = (cmd.unit_scale.get().to_string(), cmd.source_version.to_string());
        let record_id = cmd.record.to_string();
        let fp = fingerprint(&[&record_id, &figures[0], &figures[1], &figures[2], &unit_scale, &source_version]);

        let mut inv = scripts::SET_STOCK.prepare_invoke();
        self.add_record(&mut inv, &cmd.record);
        let partition = self.keys.partition_of(&cmd.record.sku);
        inv.key(self.keys.warehouses(&cmd.record.sku))
            .key(self.keys.due(partition))
            .key(self.keys.audit(partition))
            .key(self.keys.events(partition))
            .key(self.keys.records(partition));
        if let Some(request_id) = &cmd.request_id {
            inv.key(self.keys.idempotency(partition, "set_stock", request_id));
        }
        inv.arg(&figures[..])
            .arg(&unit_scale)
            .arg(&source_version)
            .arg(cmd.record.warehouse.as_str())
            .arg(&fp)
            .arg(self.retention_ms)
            .arg(self.retention_ms)
            .arg(&record_id)
            .arg(&cmd.actor)
            .arg(self.audit_max_events)
            .arg(cmd.request_id.as_ref().map_or("", |r| r.as_str()))
            .arg(cmd.record.sku.as_str());
        let mut reply = match &cmd.request_id {
            Some(request_id) => {
                self.claimed("set_stock", request_id, || fp.clone(), self.run_script("set_stock", &inv)).await?
            }
            None => self.run_script("set_stock", &inv).await?,
        };
        let applied = match reply.tag.as_str() {
            "OK" => true,
            "STALE" => false,
            "UNIT_SCALE_IN_USE" => {
                return Err(Error::UnitScaleInUse { current: reply.unit_scale()?.get() });
            }
            "IDEMPOTENCY_KEY_REUSED" => {
                return Err(reused(&cmd.request_id.as_ref().map_or("", |r| r.as_str())));
            }
            _ => return Err(reply.unexpected()),
        };
        let record = reply.record(cmd.record)?;
        Ok(SetStockOutcome { applied, record, replayed: reply.replayed })
    }

    async fn adjust_stock(&self, cmd: AdjustStockCommand) -> Result<(StockView, bool), Error> {
        let deltas = [cmd.physical, cmd.reserved, cmd.in_transit].map(signed_args);
        let record_id = cmd.record.to_string();
        let fp = fingerprint(&[
            &record_id,
            &deltas[0][0],
            &deltas[0][1],
            &deltas[1][0],
            &deltas[1][1],
            &deltas[2][0],
            &deltas[2][1],
            &cmd.reason,
        ]);
        let mut inv = scripts::ADJUST_STOCK.prepare_invoke();
        self.add_record(&mut inv, &cmd.record);
        let partition = self.keys.partition_of(&cmd.record.sku);
        inv.key(self.keys.idempotency(partition, "adjust_stock", &cmd.request_id))
            .key(self.keys.audit(partition))
            .key(self.keys.events(partition))
            .arg(&fp)
            .arg(self.retention_ms);
        for delta in &deltas {
            inv.arg(&delta[..]);
        }
        inv.arg(&cmd.actor)
            .arg(self.audit_max_events)
            .arg(cmd.request_id.as_str())
            .arg(cmd.record.sku.as_str())
            .arg(cmd.record.warehouse.as_str())
            .arg(&cmd.reason);
        let mut reply =
            self.claimed("adjust_stock", &cmd.request_id, || fp.clone(), self.run_script("adjust_stock", &inv)).await?;
        match reply.tag.as_str() {
            "OK" => {}
            "SKU_NOT_AVAILABLE_IN_WAREHOUSE" => {
                return Err(Error::NotAvailable { record: cmd.record, line: None });
            }
            "INVALID_QUANTITY_SCALE" => {
                let field = reply.text()?;
                let scale = reply.int()?;
                return Err(Error::invalid(
                    format!("{field}_delta"),
                    format!("has more fractional digits than the record's unit_scale {scale} allows"),
                ));
            }
            "QUANTITY_OUT_OF_RANGE" => {
                return Err(Error::invalid(format!("{}_delta", reply.text()?), "takes the figure out of range"));
            }
            "NEGATIVE_STOCK" => {
                return Err(Error::NegativeStock { field: format!("{}_delta", reply.text()?) });
            }
            "IDEMPOTENCY_KEY_REUSED" => return Err(reused(&cmd.request_id)),
            _ => return Err(reply.unexpected()),
        }
        let replayed = reply.replayed;
        Ok((reply.record(cmd.record)?, replayed))
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
        let mut conn = self.link.conn();
        let members: Vec<String> =
            self.bounded(redis::cmd("SMEMBERS").arg(self.keys.warehouses(sku)).query_async(&mut conn)).await?;
        let mut warehouses: Vec<WarehouseId> =
            members.iter().filter_map(|w| WarehouseId::parse(w, "warehouse_id").ok()).collect();
        warehouses.sort();
        Ok(warehouses)
    }
    async fn lock(&self, cmd: &LockCommand) -> Result<LockOutcome, Error> {
        let groups = by_partition(&self.keys, cmd.lines.iter().map(|l| &l.record.sku));
        let nonce = new_nonce();
        self.claimed(lock_method(cmd), &cmd.request_id, || lock_fingerprint(cmd), async {
            // With several partitions a batch's partitions are written down
            // even when it has one, since Renew and Release find them by batch id.
            match &groups[..] {
                [(partition, numbers)] if cmd.batch_id.is_none() || self.keys.partitions() == 1 => {
                    self.lock_group(*partition, cmd, numbers, &nonce).await
                }
                _ => self.lock_across_partitions(cmd, &groups, &nonce).await,
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
        let fp = || renew_fingerprint(&cmd, &ids);
        let (items, replayed) = self.claimed("renew", &cmd.request_id, fp, scattered).await?;
        Ok(RenewOutcome { items, replayed })
    }

    async fn release(&self, cmd: ReleaseCommand) -> Result<ReleaseOutcome, Error> {
        let ids = self.resolve(&cmd.target).await?;
        let scattered = self.scatter(ids.iter().map(|id| &id.record.sku), |partition, numbers| {
            let group: Vec<LockId> = numbers.iter().map(|&i| ids[i].clone()).collect();
            let cmd = &cmd;
            async move { self.release_group(partition, cmd, &group).await }
        });
        let fp = || release_fingerprint(&cmd, &ids);
        let (items, replayed) = self.claimed("release", &cmd.request_id, fp, scattered).await?;
        Ok(ReleaseOutcome { items, replayed })
    }

    async fn commit(&self, cmd: CommitCommand) -> Result<CommitOutcome, Error> {
        let id = &cmd.lock_id;
        let holder = cmd.holder.as_ref().map_or("", |h| h.as_str());
        let [mantissa, scale] = cmd.quantity.map_or([String::new(), String::new()], |q| signed_args(q.decimal()));
        let (record_id, token, lock_id) = (id.record.to_string(), id.token.to_string(), id.to_string());
        let fp = fingerprint(&[&lock_id, holder, &mantissa, &scale]);

        let mut inv = scripts::COMMIT.prepare_invoke();
        let partition = self.keys.partition_of(&id.record.sku);
        inv.key(self.keys.idempotency(partition, "commit", &cmd.request_id)).key(self.keys.due(partition));
        self.add_record(&mut inv, &id.record);
        inv.key(self.keys.events(partition));
        inv.arg(&fp)
            .arg(holder)
            .arg(&mantissa)
            .arg(&scale)
            .arg(self.retention_ms)
            .arg(self.retention_ms)
            .arg(&record_id)
            .arg(&token)
            .arg(&id.nonce);
        let mut reply = self.claimed("commit", &cmd.request_id, || fp.clone(), self.run_script("commit", &inv)).await?;
        let (committed, released, committed_now) = match reply.tag.as_str() {
            "OK" => (reply.int()?, reply.int()?, true),
            "ALREADY_COMMITTED" => (0, 0, false),
            "IDEMPOTENCY_KEY_REUSED" => return Err(reused(&cmd.request_id)),
            "INVALID_QUANTITY_SCALE" => {
                return Err(Error::invalid(
                    "quantity",
                    format!("has more fractional digits than the record's unit_scale {} allows", reply.int()?),
                ));
            }
            "QUANTITY_OUT_OF_RANGE" => return Err(Error::invalid("quantity", "is too large")),
            "QUANTITY_EXCEEDS_LOCK" => {
                let locked = reply.int()?;
                return Err(Error::QuantityExceedsLock { locked: format_scaled(locked, reply.unit_scale()?.get()) });
            }
            other => return Err(lock_error(other, id)?),
        };
        let replayed = reply.replayed;
        let record = reply.record(id.record.clone())?;
        Ok(CommitOutcome { committed, released, committed_now, record, replayed })
    }

    async fn lock_ids(&self, target: &LockTarget) -> Result<Vec<LockId>, Error> {
        self.resolve(target).await
    }

    async fn get_lock(&self, lock_id: &LockId) -> Result<LockView, Error> {
        let (locks, _) = self.record_locks(&lock_id.record).await?;
        if let Some(lock) = locks.into_iter().find(|l| l.lock_id.token == lock_id.token) {
            return if lock.lock_id.nonce == lock_id.nonce {
                Ok(lock)
            } else {
                Err(lock_error("LOCK_NOT_FOUND", lock_id)?)
            };
        }
        // Not live: say how it ended while the tombstone is kept.
        let ended = &self.keys.record(&lock_id.record)[3];
        let mut pipe = redis::pipe();
        for mark in ["E", "R", "C", "F"] {
            pipe.zscore(ended, format!("{}:{mark}", lock_id.token));
        }
        let mut conn = self.link.conn();
        let marks: (Option<f64>, Option<f64>, Option<f64>, Option<f64>) =
            self.bounded(pipe.query_async(&mut conn)).await?;
        let reason = match marks {
            (Some(_), ..) => "LOCK_EXPIRED",
            (_, Some(_), ..) => "LOCK_RELEASED",
            (_, _, Some(_), _) => "LOCK_COMMITTED",
            (.., Some(_)) => "LOCK_FORCE_RELEASED",
            // Still in the locks hash but past its expiry also lands here,
            // since record_locks leaves expired locks out.
            _ => {
                let mut conn = self.link.conn();
                let expiry: Option<f64> = self
                    .bounded(
                        redis::cmd("ZSCORE")
                            .arg(&self.keys.record(&lock_id.record)[2])
                            .arg(lock_id.token)
                            .query_async(&mut conn),
                    )
                    .await?;
                if expiry.is_some() { "LOCK_EXPIRED" } else { "LOCK_NOT_FOUND" }
            }
        };
        Err(lock_error(reason, lock_id)?)
    }

    async fn list_locks(
        &self,
        filter: LockFilter,
        page_size: usize,
        page_token: Option<String>,
    ) -> Result<LockPage, Error> {
        let mut position = match page_token {
            Some(token) => Some(PagePosition::decode(&token)?),
            None => None,
        };
        let mut at = position.as_ref().map_or((0, 0), |p| (p.partition, p.cursor));
        if at.0 >= self.keys.partitions() {
            return Err(Error::invalid("page_token", "is not a token returned by ListLocks"));
        }
        let mut locks = Vec::new();
        // Bound the work of one call; a short page with a token is a valid page.
        let mut records_left = 2_000usize;
        loop {
            let (records, next) = self.record_batch(&filter, at).await?;
            let (partition, cursor) = at;
            for record in records {
                if let Some(p) = &position
                    && record < p.record
                {
                    continue;
                }
                let after_token = position.take().filter(|p| p.record == record).map_or(0, |p| p.after_token);
                let (record_locks, now) = self.record_locks(&record).await?;
                for lock in record_locks {
                    if lock.lock_id.token <= after_token || !matches(&filter, &lock, now) {
                        continue;
                    }
                    let token = lock.lock_id.token;
                    locks.push(lock);
                    if locks.len() == page_size {
                        let next = PagePosition { partition, cursor, record: record.clone(), after_token: token };
                        return Ok(LockPage { locks, next_page_token: Some(next.encode()) });
                    }
                }
                records_left -= 1;
                if records_left == 0 {
                    let next = PagePosition { partition, cursor, record: record.clone(), after_token: u64::MAX };
                    return Ok(LockPage { locks, next_page_token: Some(next.encode()) });
                }
            }
            let Some(next) = next else { return Ok(LockPage { locks, next_page_token: None }) };
            at = next;
            position = None;
        }
    }

    async fn sweep_expired(&self, max_records: usize) -> Result<usize, Error> {
        let mut expired = 0;
        for partition in 0..self.keys.partitions() {
            expired += self.sweep_partition(partition, max_records).await?;
        }
        Ok(expired)
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
            let mut conn = self.link.conn();
            // TIME of the partition's own shard: the due times came from its clock.
            let (first, time): (Vec<(String, f64)>, (i64, i64)) = self
                .bounded(
                    redis::pipe().zrange_withscores(self.keys.due(partition), 0, 0).cmd("TIME").query_async(&mut conn),
                )
                .await?;
            let now = time.0 * 1000 + time.1 / 1000;
            lag = lag.max(first.first().map_or(0, |(_, due)| (now - *due as i64).max(0)));
        }
        Ok(lag)
    }

    fn record_lock_outcomes(&self, outcomes: &[(&str, &'static str)]) {
        self.health.add(outcomes);
    }

    async fn ping(&self) -> Result<(), Error> {
        let mut conn = self.link.conn();
        let _: String = self.bounded(redis::cmd("PING").query_async(&mut conn)).await?;
        Ok(())
    }

    async fn durability(&self) -> Option<crate::domain::Durability> {
        match &self.durability {
            Some(waiter) => Some(waiter.wait().await),
            None => None,
        }
    }
}

fn matches(filter: &LockFilter, lock: &LockView, now_ms: i64) -> bool {
    filter.order_id.as_ref().is_none_or(|o| o.as_str() == lock.order_id)
        && filter.holder.as_ref().is_none_or(|h| h.as_str() == lock.holder)
        && filter
            .older_than
            .is_none_or(|age| now_ms - lock.created_at_ms >= i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

/// Where a batch of records to list is: a partition, and a ZSCAN cursor of
/// its due index.
type BatchAt = (Partition, u64);

/// Where a ListLocks page ends: the record batch (a partition and a ZSCAN
/// cursor of its due index), the record, and the last token returned from it.
struct PagePosition {
    partition: Partition,
    cursor: u64,
    record: RecordKey,
    after_token: u64,
}

impl PagePosition {
    fn encode(&self) -> String {
        format!("{}:{}:{}:{}", self.partition, self.cursor, self.after_token, self.record)
    }

    fn decode(token: &str) -> Result<Self, Error> {
        let bad = || Error::invalid("page_token", "is not a token returned by ListLocks");
        let mut parts = token.splitn(4, ':');
        let (Some(partition), Some(cursor), Some(after), Some(record)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Self {
            partition: partition.parse().map_err(|_| bad())?,
            cursor: cursor.parse().map_err(|_| bad())?,
            after_token: after.parse().map_err(|_| bad())?,
            record: RecordKey::parse_id(record).ok_or_else(bad)?,
        })
    }
}
