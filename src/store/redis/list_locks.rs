//! ListLocks: pages of live locks, record by record, over the partitions'
//! due indexes (only records with live locks are in them).

use super::{Partition, RedisStore};
use crate::domain::StockStore as _;
use crate::domain::{Error, LockFilter, LockPage, LockView, RecordKey};

impl RedisStore {
    /// One page of live locks that match `filter`, from `page_token` on.
    pub(super) async fn list_page(
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
            let (records, next) = self.record_chunk(&filter, at).await?;
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

    /// The chunk of records to list locks of at `at` (a partition, and a
    /// cursor in its due index), and where the next chunk is (`None` after
    /// the last partition's last chunk).
    pub(super) async fn record_chunk(
        &self,
        filter: &LockFilter,
        at: ChunkAt,
    ) -> Result<(Vec<RecordKey>, Option<ChunkAt>), Error> {
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
                let scan = redis::cmd("ZSCAN").arg(self.keys.due(partition)).arg(cursor).arg("COUNT").arg(200).clone();
                let (next, members): (u64, Vec<String>) = self.query(&scan).await?;
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

fn matches(filter: &LockFilter, lock: &LockView, now_ms: i64) -> bool {
    filter.order_id.as_ref().is_none_or(|o| o.as_str() == lock.order_id)
        && filter.holder.as_ref().is_none_or(|h| h.as_str() == lock.holder)
        && filter
            .older_than
            .is_none_or(|age| now_ms - lock.created_at_ms >= i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}

/// Where a chunk of records to list is: a partition, and a ZSCAN cursor of
/// its due index.
pub(super) type ChunkAt = (Partition, u64);

/// Where a ListLocks page ends: the record chunk (a partition and a ZSCAN
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
