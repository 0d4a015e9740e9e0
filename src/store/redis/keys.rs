//! The only place Redis keys are built.
//!
//! Stock lives in a fixed number of *partitions*. A SKU belongs to partition
//! `fnv1a(sku) % partitions`, and every key a script touches together (the
//! SKU's records, the sweeper's due index, the event and audit streams,
//! idempotency and batch records, forced-unlock requests) carries its
//! partition's hash tag. On Redis Cluster a partition is therefore one slot:
//! every script runs on one shard, and a resharding moves a partition whole.
//! On one Redis (or Sentinel) a single partition holds everything.
//!
//! The number of partitions is part of the data layout: it is stored in
//! Redis on first start, and a service configured with another count
//! refuses to start. Identifiers cannot contain braces (see
//! [`crate::domain`]), so no id can change a tag.

use std::sync::Arc;

use crate::domain::{BatchId, RecordKey, RequestId, SessionId, Sku};

/// Redis Cluster's slot count.
const SLOTS: u16 = 16384;

/// A partition's index, `0..partitions`.
pub type Partition = usize;

/// Builds keys under one prefix, so several deployments can share a Redis.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
    /// `{prefix}:{tag}` of each partition.
    bases: Arc<[String]>,
    /// Each partition's own keys, built once: every writing call names them.
    shared: Arc<[PartitionKeys]>,
    /// The shards of each partition's lock index, built once (every Lock
    /// names one): partition `p`'s shard `s` at `p * LOCK_SHARDS + s`.
    lock_indexes: Arc<[String]>,
    /// Each partition's fencing epoch, built once (every Lock names it).
    epochs: Arc<[String]>,
}

/// The keys of one stock record that a call about one lock (or one new
/// lock) takes: the record's stock hash, the lock's shard of the record's
/// locks, and the lock's tombstone bucket.
///
/// A record's live locks are spread over [`LOCK_SHARDS`] shards, each a
/// lock hash, an expiry index and its share of the partition's lock index.
/// A Lock call picks its shard by its nonce (random, chosen before the call)
/// and `lua/lock.lua` issues each lock a token in it: the smallest token
/// above the record's last one with `token % LOCK_SHARDS` the shard. So a
/// lock's token names its shard, and tokens still only grow.
///
/// No Redis structure grows with the number of live locks on a record
/// beyond 1/16 of it, and none grows in one long step: a hash or sorted set
/// that doubles allocates and clears its new table inside one call (about
/// 1 ms at 262,144 entries on the development box, three such tables at
/// once in a one-shard record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordKeys {
    /// Hash: physical, reserved, in_transit, locked, unit_scale, version,
    /// source_version, the fencing counter, `live` (locks not yet ended or
    /// settled) and `due` (never later than the earliest expiry).
    pub stock: String,
    /// Hash of the shard: fencing token -> the packed lock.
    pub locks: String,
    /// Sorted set of the shard: fencing token -> expiry (ms).
    pub exp: String,
    /// Hash of tombstones of the locks whose token is in one bucket of
    /// 512 tokens: the token's place in it (token % 512) -> how the lock
    /// ended (`R`eleased, `C`ommitted, `F`orce-released; an expired lock
    /// leaves none). A call
    /// about one lock names its token's bucket ([`Keys::lock_record`]); the
    /// others name bucket `-`, which no script touches. A bucket stays a
    /// compact listpack and expires a retention after its last tombstone.
    pub ended: String,
    /// The shard of the partition's lock index ([`Keys::lock_index`]).
    pub index: String,
}

/// Tokens per tombstone bucket. A lock takes the next token of its shard,
/// 8.5 tokens on average after the record's last one, so a bucket holds about
/// 60 tombstones: within Redis's `hash-max-listpack-entries` (128 by
/// default), so it keeps its compact encoding, and few keys a record.
pub(super) const TOMBSTONE_BUCKET: u64 = 512;

/// Lock shards per record and lock-index shards per partition. Part of the
/// data layout, and `LOCK_SHARDS` in `lua/lib.lua`.
pub const LOCK_SHARDS: usize = 16;

/// The shard of the locks a Lock call with `nonce` takes: the nonce's last
/// hex digit (nonces are random hex, see [`crate::domain::new_nonce`]), or,
/// for any other text, one by its bytes.
pub fn lock_shard(nonce: &str) -> usize {
    match nonce.chars().last().and_then(|c| c.to_digit(16)) {
        Some(d) => d as usize % LOCK_SHARDS,
        None => nonce.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(usize::from(b))) % LOCK_SHARDS,
    }
}

/// The shard of the lock with `token` (see [`RecordKeys`]).
pub fn token_shard(token: u64) -> usize {
    (token % LOCK_SHARDS as u64) as usize
}

impl RecordKeys {
    /// The keys in the order every script takes a record's keys.
    pub fn in_script_order(&self) -> [&str; 5] {
        [&self.stock, &self.locks, &self.exp, &self.ended, &self.index]
    }
}

/// The first keys of every writing script (see `lua/lib.lua`'s
/// `partition_keys`): all in one partition.
#[derive(Clone, Debug)]
pub struct PartitionKeys {
    /// The request's idempotency record, or [`Keys::unused`] when there is none.
    pub idempotency: String,
    /// The sweeper's due index.
    pub due: String,
    /// The lifecycle event stream.
    pub events: String,
    /// The audit stream.
    pub audit: String,
}

impl Keys {
    /// Keys under `prefix` (validated by the config: no braces) in
    /// `partitions` partitions (at least 1).
    pub fn new(prefix: &str, partitions: usize) -> Self {
        let partitions = partitions.max(1);
        let bases: Arc<[String]> = (0..partitions).map(|p| format!("{prefix}:{{{}}}", tag(p, partitions))).collect();
        let shared = bases
            .iter()
            .map(|base| PartitionKeys {
                idempotency: format!("{base}:unused"),
                due: format!("{base}:due"),
                events: format!("{base}:events"),
                audit: format!("{base}:audit"),
            })
            .collect();
        let lock_indexes = bases
            .iter()
            .flat_map(|base| (0..LOCK_SHARDS).map(move |shard| format!("{base}:lockidx:{shard:x}")))
            .collect();
        let epochs = bases.iter().map(|base| format!("{base}:epoch")).collect();
        Self { prefix: prefix.to_owned(), bases, shared, lock_indexes, epochs }
    }

    /// How many partitions there are.
    pub fn partitions(&self) -> usize {
        self.bases.len()
    }

    /// The partition of `sku`. Part of the data layout: never change the hash.
    pub fn partition_of(&self, sku: &Sku) -> Partition {
        self.partition_of_text(sku.as_str())
    }

    fn base(&self, partition: Partition) -> &str {
        &self.bases[partition]
    }

    /// A stock record's keys with lock shard `shard`, for a call about the
    /// record or a new lock (not an existing one).
    pub fn record(&self, record: &RecordKey, shard: usize) -> RecordKeys {
        self.record_with_bucket(record, shard, "-")
    }

    /// The keys of the record of the lock `token`: its shard and its
    /// tombstone bucket.
    pub fn lock_record(&self, record: &RecordKey, token: u64) -> RecordKeys {
        self.record_with_bucket(record, token_shard(token), &(token / TOMBSTONE_BUCKET).to_string())
    }

    /// Every key of a record, for a call about all of its locks (settling
    /// expiries, setting stock): stock and the unused tombstone bucket,
    /// then each shard's locks, expiries and lock-index shard (see
    /// `whole_record_at` in `lua/lib.lua`).
    pub fn whole_record(&self, record: &RecordKey) -> Vec<String> {
        let (partition, base) = self.record_base(record);
        let mut keys = Vec::with_capacity(2 + 3 * LOCK_SHARDS);
        keys.extend([format!("{base}:stock"), format!("{base}:ended:-")]);
        for shard in 0..LOCK_SHARDS {
            keys.extend([format!("{base}:locks:{shard:x}"), format!("{base}:exp:{shard:x}")]);
            keys.push(self.lock_index(partition, shard));
        }
        keys
    }

    /// A record's partition, and the prefix of its own keys.
    fn record_base(&self, record: &RecordKey) -> (Partition, String) {
        let partition = self.partition_of(&record.sku);
        (partition, format!("{}:{}:w:{}", self.base(partition), record.sku, record.warehouse))
    }

    fn record_with_bucket(&self, record: &RecordKey, shard: usize, bucket: &str) -> RecordKeys {
        let (partition, base) = self.record_base(record);
        RecordKeys {
            stock: format!("{base}:stock"),
            locks: format!("{base}:locks:{shard:x}"),
            exp: format!("{base}:exp:{shard:x}"),
            ended: format!("{base}:ended:{bucket}"),
            index: self.lock_index(partition, shard),
        }
    }

    /// The partition keys a writing script takes first; `idempotency` names
    /// the request's method and id, when it has one.
    pub fn partition_keys(&self, partition: Partition, idempotency: Option<(&str, &RequestId)>) -> PartitionKeys {
        let mut keys = self.shared[partition].clone();
        if let Some((method, request_id)) = idempotency {
            keys.idempotency = self.idempotency(partition, method, request_id);
        }
        keys
    }

    /// A key of the partition that no script reads or writes: it fills the
    /// place of an optional key (a Lock's batch record, the idempotency record
    /// of a request without a request_id), so every script keeps one KEYS order.
    pub fn unused(&self, partition: Partition) -> String {
        self.shared[partition].idempotency.clone()
    }

    /// The set of warehouses that have a record of `sku`.
    pub fn warehouses(&self, sku: &Sku) -> String {
        format!("{}:{sku}:warehouses", self.base(self.partition_of(sku)))
    }

    /// The partition's set of record ids ("sku|warehouse"), for the auditor.
    pub fn records(&self, partition: Partition) -> String {
        format!("{}:records", self.base(partition))
    }

    /// The partition's sweeper index: record id -> earliest expiry of its locks.
    pub fn due(&self, partition: Partition) -> String {
        self.shared[partition].due.clone()
    }

    /// The idempotency record of one request in one partition; request ids
    /// are scoped per method. A request that spans partitions has one record
    /// in each.
    pub fn idempotency(&self, partition: Partition, method: &str, request_id: &RequestId) -> String {
        format!("{}:idem:{method}:{request_id}", self.base(partition))
    }

    /// The partition's Lock and BatchLock idempotency records of one
    /// generation (time / retention) whose request digest (16 hex digits)
    /// starts like `request`'s: a hash of request digest -> content digest
    /// and answer (see `lua/lock.lua`). A generation's hashes expire two
    /// generations after it starts, so a record lives between one and two
    /// retentions, at a hash field's cost instead of a key's. A generation
    /// is split over 4,096 hashes by the digest's first three digits, so no
    /// one hash grows (or is freed when it expires) in one long step.
    pub fn lock_idempotency(&self, partition: Partition, generation: u64, request: &str) -> String {
        let shard = request.get(..3).unwrap_or(request);
        format!("{}:idem:lock:g{generation}:{shard}", self.base(partition))
    }

    /// A forced-unlock request (it lives with the records it unlocks).
    pub fn force_unlock(&self, partition: Partition, id: &str) -> String {
        format!("{}:fu:{id}", self.base(partition))
    }

    /// The partition's forced-unlock requests by creation time.
    pub fn force_unlock_index(&self, partition: Partition) -> String {
        format!("{}:fu:index", self.base(partition))
    }

    /// Shard `shard` of the partition's lock index: a sorted set of every
    /// live lock of that shard as `created_ms (15 digits)|sku|warehouse|token`,
    /// read by lexical range, so in age order. ListLocks merges the shards;
    /// the lock statistics count them.
    pub fn lock_index(&self, partition: Partition, shard: usize) -> String {
        self.lock_indexes[partition * LOCK_SHARDS + shard].clone()
    }

    /// The partition's audit trail (a stream).
    pub fn audit(&self, partition: Partition) -> String {
        self.shared[partition].audit.clone()
    }

    /// The partition's lifecycle event stream: one event per change, written by the change.
    pub fn events(&self, partition: Partition) -> String {
        self.shared[partition].events.clone()
    }

    /// The lines of a batch that one partition's script locked.
    pub fn batch(&self, partition: Partition, batch_id: &BatchId) -> String {
        format!("{}:batch:{batch_id}", self.base(partition))
    }

    /// The partitions a batch spans, written before any of them is locked;
    /// kept in the partition of the batch id.
    pub fn batch_partitions(&self, batch_id: &BatchId) -> String {
        let home = self.partition_of_text(batch_id.as_str());
        format!("{}:batchparts:{batch_id}", self.base(home))
    }

    /// Which content first used `request_id` for `method`, when requests
    /// may span partitions (see the store's `claimed`).
    pub fn request_claim(&self, method: &str, request_id: &RequestId) -> String {
        let home = self.partition_of_text(request_id.as_str());
        format!("{}:claim:{method}:{request_id}", self.base(home))
    }

    /// The batch id the first attempt of a cross-partition BatchLock
    /// request chose, so that its retries lock under the same one.
    pub fn batch_of_request(&self, request_id: &RequestId) -> String {
        let home = self.partition_of_text(request_id.as_str());
        format!("{}:batchof:{request_id}", self.base(home))
    }

    /// The locks the first attempt of a forced-unlock request selected, so
    /// that its retries record the same request.
    pub fn force_unlock_of_request(&self, request_id: &RequestId) -> String {
        let home = self.partition_of_text(request_id.as_str());
        format!("{}:fuof:{request_id}", self.base(home))
    }

    /// Held while an attempt of a cross-partition BatchLock request runs, so
    /// a concurrent retry is told to wait instead of replaying a part the
    /// first attempt may still undo.
    pub fn request_in_flight(&self, request_id: &RequestId) -> String {
        let home = self.partition_of_text(request_id.as_str());
        format!("{}:inflight:{request_id}", self.base(home))
    }

    /// The partition a session lives in: its hash, its index entry and its
    /// events. Its locks live with their records, in any partition.
    pub fn session_home(&self, session: &SessionId) -> Partition {
        self.partition_of_text(session.as_str())
    }

    /// A session's hash (see `lua/open_session.lua`), in its home partition.
    pub fn session(&self, session: &SessionId) -> String {
        format!("{}:session:{session}", self.base(self.session_home(session)))
    }

    /// The partition's session index: session id -> when it is due to be
    /// ended (its expiry; 0 while its end is under way).
    pub fn sessions(&self, partition: Partition) -> String {
        format!("{}:sessions", self.base(partition))
    }

    /// A session's locks in `partition`: `sku|warehouse|token` by the
    /// lock's maximum hold.
    pub fn session_locks(&self, partition: Partition, session: &SessionId) -> String {
        format!("{}:sess:{session}", self.base(partition))
    }

    /// Written in `partition` when a session's end reaches it, so that no
    /// lock lands in the session there afterwards.
    pub fn session_end(&self, partition: Partition, session: &SessionId) -> String {
        format!("{}:sess:{session}:end", self.base(partition))
    }

    /// FNV-1a, which is stable across builds and platforms (std's hashers are not).
    fn partition_of_text(&self, text: &str) -> Partition {
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        (hash % self.bases.len() as u64) as usize
    }

    /// The stream warehouse systems append stock changes to.
    pub fn ingest(&self) -> String {
        format!("{}:ingest", self.prefix)
    }

    /// The lease of `group`'s one reader of the ingestion stream, in the
    /// stream's slot.
    pub fn ingest_lease(&self, group: &str) -> String {
        format!("{{{}:ingest}}:lease:{group}", self.prefix)
    }

    /// Where malformed ingestion entries go, with the reason. Its hash tag
    /// is the ingestion stream's name, so both share a slot and an entry is
    /// dead-lettered and acknowledged in one MULTI on a cluster too.
    pub fn dead_letters(&self) -> String {
        format!("{{{}:ingest}}:dead", self.prefix)
    }

    /// The lease of binlog follower `name`'s one leader. The follower's keys
    /// share a slot, so its checkpoint is saved under the lease in one script.
    pub fn binlog_lease(&self, name: &str) -> String {
        format!("{{{}:binlog}}:lease:{name}", self.prefix)
    }

    /// Where binlog follower `name` applied up to.
    pub fn binlog_checkpoint(&self, name: &str) -> String {
        format!("{{{}:binlog}}:checkpoint:{name}", self.prefix)
    }

    /// The status binlog follower `name`'s leader publishes.
    pub fn binlog_status(&self, name: &str) -> String {
        format!("{{{}:binlog}}:status:{name}", self.prefix)
    }

    /// Lock-health counters of the hour starting at `hour_start_ms`. Every
    /// hour shares one tag, so a report's hours are read in one round trip.
    pub fn lock_health(&self, hour_start_ms: i64) -> String {
        format!("{}:{{lockhealth}}:{hour_start_ms}", self.prefix)
    }

    /// The partition's fencing epoch, the floor of its tokens: raised
    /// whenever its data may have lost writes (see `link`).
    pub fn epoch(&self, partition: Partition) -> String {
        self.epochs[partition].clone()
    }

    /// Every partition's fencing epoch.
    pub fn epochs(&self) -> Vec<String> {
        self.epochs.to_vec()
    }

    /// Written before each durability WAIT (see the durability module).
    pub fn durability_marker(&self) -> String {
        format!("{}:durability", self.prefix)
    }

    /// The partition count the data was laid out with.
    pub fn layout(&self) -> String {
        format!("{}:partitions", self.prefix)
    }

    /// The version of the data layout (see the store's `LAYOUT_VERSION`).
    pub fn layout_version(&self) -> String {
        format!("{}:layout", self.prefix)
    }

    /// A lease that lets one replica at a time do `name`'s periodic work.
    pub fn lease(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.prefix)
    }
}

/// The hash tag of partition `p` of `n`: the first `p<p>.<i>` whose slot
/// falls in the `p`-th of `n` equal slot ranges, so that partitions spread
/// evenly over shards that own equal slot ranges (what `redis-cli --cluster
/// create` makes).
fn tag(p: usize, n: usize) -> String {
    let (low, high) = (p * usize::from(SLOTS) / n, (p + 1) * usize::from(SLOTS) / n);
    (0..)
        .map(|i| format!("p{p}.{i}"))
        .find(|t| (low..high.max(low + 1)).contains(&usize::from(slot(t.as_bytes()))))
        .expect("some tag falls in every slot range")
}

/// The Redis Cluster slot of a key (or tag): CRC16-XMODEM mod 16384.
fn slot(key: &[u8]) -> u16 {
    let crc = key.iter().fold(0u16, |crc, &b| {
        (0..8).fold(crc ^ (u16::from(b) << 8), |c, _| if c & 0x8000 != 0 { (c << 1) ^ 0x1021 } else { c << 1 })
    });
    crc % SLOTS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WarehouseId;

    #[test]
    fn a_records_keys_share_its_partitions_tag() {
        let keys = Keys::new("sl", 1);
        let sku = Sku::parse("SKU-1", "sku").unwrap();
        let record = RecordKey::new(sku.clone(), WarehouseId::parse("WH-A", "w").unwrap());
        let record_keys = keys.record(&record, 10);
        assert_eq!(record_keys.stock, "sl:{p0.0}:SKU-1:w:WH-A:stock");
        assert_eq!(record_keys.locks, "sl:{p0.0}:SKU-1:w:WH-A:locks:a");
        assert_eq!(record_keys.index, "sl:{p0.0}:lockidx:a");
        let partition_keys = keys.partition_keys(0, None);
        assert_eq!(
            [&partition_keys.idempotency, &partition_keys.due, &partition_keys.events, &partition_keys.audit],
            ["sl:{p0.0}:unused", "sl:{p0.0}:due", "sl:{p0.0}:events", "sl:{p0.0}:audit"]
        );
        let request_id = RequestId::parse("r-1", "request_id").unwrap();
        assert_eq!(keys.partition_keys(0, Some(("renew", &request_id))).idempotency, "sl:{p0.0}:idem:renew:r-1");
        let partition =
            [&partition_keys.idempotency, &partition_keys.due, &partition_keys.events, &partition_keys.audit];
        let whole = keys.whole_record(&record);
        assert_eq!(whole.len(), 2 + 3 * LOCK_SHARDS);
        for key in record_keys
            .in_script_order()
            .into_iter()
            .chain(partition.map(String::as_str))
            .chain(whole.iter().map(String::as_str))
            .chain([keys.warehouses(&sku).as_str()])
        {
            assert!(key.starts_with("sl:{p0.0}:"), "{key}");
        }
        // A lock's keys are those of its nonce's shard, as the whole record lists them.
        let lock = keys.lock_record(&record, 1100);
        assert_eq!(lock.ended, "sl:{p0.0}:SKU-1:w:WH-A:ended:2");
        assert_eq!(&whole[2 + 3 * 12..2 + 3 * 13], &[lock.locks, lock.exp, lock.index]);
    }

    #[test]
    fn nonces_spread_over_the_shards() {
        let mut seen = [0; LOCK_SHARDS];
        for _ in 0..16_000 {
            seen[lock_shard(&crate::domain::new_nonce())] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        // Text that is not hex still names a shard.
        assert!(lock_shard("zz") < LOCK_SHARDS && lock_shard("") < LOCK_SHARDS);
    }

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(slot(b"123456789"), 12739);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
    }

    #[test]
    fn partitions_spread_over_equal_slot_ranges() {
        let n = 16;
        let keys = Keys::new("sl", n);
        for p in 0..n {
            let tag = keys.base(p).trim_start_matches("sl:{").trim_end_matches('}');
            let slot = usize::from(slot(tag.as_bytes()));
            assert!(slot * n / usize::from(SLOTS) == p, "partition {p}: tag {tag} in slot {slot}");
        }
        // And SKUs spread over the partitions.
        let mut seen = vec![0; n];
        for i in 0..1600 {
            seen[keys.partition_of(&Sku::parse(&format!("SKU-{i}"), "sku").unwrap())] += 1;
        }
        assert!(seen.iter().all(|&c| (60..140).contains(&c)), "{seen:?}");
    }
}
