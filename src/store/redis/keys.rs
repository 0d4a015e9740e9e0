//! The only place Redis keys are built.
//!
//! A record's keys share the hash tag `{sku}`, so on Redis Cluster one
//! record (and every warehouse of one SKU) lives in one slot and each
//! single-record script stays one atomic call on one shard. Identifiers
//! cannot contain braces (see [`crate::domain`]), so no id can change a tag.

use crate::domain::{BatchId, RecordKey, RequestId, Sku};

/// Builds keys under one prefix, so several deployments can share a Redis.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

/// The four keys of one stock record, in the order the scripts take them.
pub type RecordKeys = [String; 4];

impl Keys {
    /// Keys under `prefix` (validated by the config: no braces).
    pub fn new(prefix: &str) -> Self {
        Self { prefix: prefix.to_owned() }
    }

    /// stock hash, locks hash, expiry zset, tombstone zset.
    pub fn record(&self, record: &RecordKey) -> RecordKeys {
        let base = format!("{}:{{{}}}:w:{}", self.prefix, record.sku, record.warehouse);
        [format!("{base}:stock"), format!("{base}:locks"), format!("{base}:exp"), format!("{base}:ended")]
    }

    /// The set of warehouses that have a record of `sku`.
    pub fn warehouses(&self, sku: &Sku) -> String {
        format!("{}:{{{sku}}}:warehouses", self.prefix)
    }

    /// The sweeper's index: record id -> earliest expiry of its locks.
    pub fn due(&self) -> String {
        format!("{}:due", self.prefix)
    }

    /// The idempotency record of one request; request ids are scoped per method.
    pub fn idempotency(&self, method: &str, request_id: &RequestId) -> String {
        format!("{}:idem:{method}:{request_id}", self.prefix)
    }

    /// A forced-unlock request.
    pub fn force_unlock(&self, id: &str) -> String {
        format!("{}:fu:{id}", self.prefix)
    }

    /// Forced-unlock requests by creation time.
    pub fn force_unlock_index(&self) -> String {
        format!("{}:fu:index", self.prefix)
    }

    /// The audit trail (a stream).
    pub fn audit(&self) -> String {
        format!("{}:audit", self.prefix)
    }

    /// The lifecycle event stream: one event per change, written by the change.
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// The stream warehouse systems append stock changes to.
    pub fn ingest(&self) -> String {
        format!("{}:ingest", self.prefix)
    }

    /// Where malformed ingestion entries go, with the reason.
    pub fn dead_letters(&self) -> String {
        format!("{}:ingest:dead", self.prefix)
    }

    /// Lock-health counters of the hour starting at `hour_start_ms`.
    pub fn lock_health(&self, hour_start_ms: i64) -> String {
        format!("{}:lockhealth:{hour_start_ms}", self.prefix)
    }

    /// The fencing epoch: bumped on every failover the service follows.
    pub fn epoch(&self) -> String {
        format!("{}:epoch", self.prefix)
    }

    /// Written before each durability WAIT (see the durability module).
    pub fn durability_marker(&self) -> String {
        format!("{}:durability", self.prefix)
    }

    /// The pattern every record's stock key matches, for SCAN.
    pub fn stock_pattern(&self) -> String {
        format!("{}:{{*}}:w:*:stock", self.prefix)
    }

    /// The record whose stock key `key` is; `None` for any other key.
    pub fn record_of_stock_key(&self, key: &str) -> Option<RecordKey> {
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?;
        let (sku, rest) = rest.split_once("}:w:")?;
        let warehouse = rest.strip_suffix(":stock")?;
        Some(RecordKey::new(
            Sku::parse(sku, "sku").ok()?,
            crate::domain::WarehouseId::parse(warehouse, "warehouse_id").ok()?,
        ))
    }

    /// A lease that lets one replica at a time do `name`'s periodic work.
    pub fn lease(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.prefix)
    }

    /// The list of a batch's locks.
    pub fn batch(&self, batch_id: &BatchId) -> String {
        format!("{}:batch:{batch_id}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::WarehouseId;

    #[test]
    fn record_keys_share_the_sku_hash_tag() {
        let keys = Keys::new("sl");
        let sku = Sku::parse("SKU-1", "sku").unwrap();
        let record = RecordKey::new(sku.clone(), WarehouseId::parse("WH-A", "w").unwrap());
        for key in keys.record(&record).iter().chain([&keys.warehouses(&sku)]) {
            assert!(key.starts_with("sl:{SKU-1}:"), "{key}");
        }
        assert_eq!(keys.record(&record)[0], "sl:{SKU-1}:w:WH-A:stock");
        assert_eq!(keys.record_of_stock_key("sl:{SKU-1}:w:WH-A:stock"), Some(record));
        assert_eq!(keys.record_of_stock_key("sl:{SKU-1}:w:WH-A:locks"), None);
        assert_eq!(keys.record_of_stock_key("other:{SKU-1}:w:WH-A:stock"), None);
    }
}
