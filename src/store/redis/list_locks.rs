//! ListLocks and the lock statistics, over each partition's lock index
//! ([`super::Keys::lock_index`], in [`LOCK_SHARDS`] shards): every call
//! reads a bounded range of each shard, whatever a record or a partition
//! holds.

use std::time::Duration;

use super::keys::{LOCK_SHARDS, token_shard};
use super::read_lock::unpack_lock;
use super::reply::malformed;
use super::{Partition, RedisStore};
use crate::domain::{Error, LockFilter, LockPage, LockStats, LockView, RecordKey, UnitScale};

/// Index members one round trip reads from each shard of a partition's index.
const SCAN_PER_SHARD: usize = 32;

/// Most index members one ListLocks call looks at; a short page with a
/// token is a valid page.
const SCAN_BUDGET: usize = 2_000;

/// Locks read per pipeline: what the page still needs, within these bounds.
const READ_MIN: usize = 16;
const READ_MAX: usize = 100;

/// A lock index member: `created (15 digits)|sku|warehouse|token`.
struct Member {
    created_at_ms: i64,
    record: RecordKey,
    token: u64,
}

impl Member {
    fn parse(text: &str) -> Option<Self> {
        let (created, rest) = text.split_once('|')?;
        let (record, token) = rest.rsplit_once('|')?;
        Some(Self {
            created_at_ms: created.parse().ok()?,
            record: RecordKey::parse_id(record)?,
            token: token.parse().ok()?,
        })
    }
}

/// The lexical bound just above every member created at or before `ms`.
fn created_through(ms: i64) -> String {
    format!("({:015}", ms.saturating_add(1).max(0))
}

impl RedisStore {
    /// One page of live locks that match `filter`, from `page_token` on, in
    /// age order within each partition, every lock that lives throughout
    /// exactly once.
    pub(super) async fn list_page(
        &self,
        filter: LockFilter,
        page_size: usize,
        page_token: Option<String>,
    ) -> Result<LockPage, Error> {
        let bad = || Error::invalid("page_token", "is not a token returned by ListLocks");
        // A filter by SKU reads only its partition.
        let partitions: Vec<Partition> = match &filter.sku {
            Some(sku) => vec![self.keys.partition_of(sku)],
            None => (0..self.keys.partitions()).collect(),
        };
        let (mut at, mut after) = match page_token {
            None => (0, None),
            Some(token) => {
                let (partition, member) = token.split_once(':').ok_or_else(bad)?;
                let partition: Partition = partition.parse().map_err(|_| bad())?;
                let at = partitions.iter().position(|&p| p == partition).ok_or_else(bad)?;
                Member::parse(member).ok_or_else(bad)?;
                (at, Some(member.to_owned()))
            }
        };
        let mut locks = Vec::new();
        let mut examined = 0;
        while let Some(&partition) = partitions.get(at) {
            let now = self.time_of(partition).await?;
            let max = filter.older_than.map_or_else(|| "+".to_owned(), |age| created_through(now - millis_i64(age)));
            let min = after.as_ref().map_or_else(|| "-".to_owned(), |m| format!("({m}"));
            let (members, exhausted) = self.index_range(partition, &min, &max).await?;
            examined += members.len();
            // The next read starts after the range's last member, whether
            // the filter keeps it or not.
            let range_end = members.last().cloned();
            let wanted: Vec<(String, Member)> = members
                .into_iter()
                .filter_map(|text| Member::parse(&text).map(|m| (text, m)))
                .filter(|(_, m)| {
                    filter.sku.as_ref().is_none_or(|s| *s == m.record.sku)
                        && filter.warehouse.as_ref().is_none_or(|w| *w == m.record.warehouse)
                })
                .collect();
            // Read only as many locks as the page still needs, a pipeline at a
            // time: one big pipeline would hold the shared connection (and
            // every call queued behind it) while its replies are parsed.
            let mut rest = &wanted[..];
            while !rest.is_empty() {
                let (chunk, after_chunk) =
                    rest.split_at((page_size - locks.len()).clamp(READ_MIN, READ_MAX).min(rest.len()));
                rest = after_chunk;
                let live = self.read_members(chunk.iter().map(|(_, m)| m), now).await?;
                for ((text, _), lock) in chunk.iter().zip(live) {
                    let Some(lock) = lock.filter(|l| matches(&filter, l)) else { continue };
                    locks.push(lock);
                    if locks.len() == page_size {
                        return Ok(LockPage { locks, next_page_token: Some(format!("{partition}:{text}")) });
                    }
                }
            }
            if exhausted {
                at += 1;
                after = None;
                continue;
            }
            after = range_end;
            if examined >= SCAN_BUDGET {
                return Ok(LockPage { locks, next_page_token: after.map(|m| format!("{partition}:{m}")) });
            }
        }
        Ok(LockPage { locks, next_page_token: None })
    }

    /// The members of the partition's lock index in the lexical range
    /// `min..max`, the first ones of the merged shards in order, and
    /// whether that is all of the range. Each shard gives
    /// [`SCAN_PER_SHARD`]; the merge keeps only members up to the smallest
    /// last member of the shards that gave that many, so that no member of
    /// the range that a shard did not give yet is skipped.
    async fn index_range(&self, partition: Partition, min: &str, max: &str) -> Result<(Vec<String>, bool), Error> {
        let mut pipe = redis::pipe();
        for shard in 0..LOCK_SHARDS {
            pipe.cmd("ZRANGEBYLEX")
                .arg(self.keys.lock_index(partition, shard))
                .arg(min)
                .arg(max)
                .arg("LIMIT")
                .arg(0)
                .arg(SCAN_PER_SHARD);
        }
        let shards: Vec<Vec<String>> = self.query_pipe(&pipe).await?;
        let bound = shards.iter().filter(|m| m.len() == SCAN_PER_SHARD).filter_map(|m| m.last()).min().cloned();
        let mut merged: Vec<String> =
            shards.into_iter().flatten().filter(|m| bound.as_ref().is_none_or(|b| m <= b)).collect();
        merged.sort_unstable();
        Ok((merged, bound.is_none()))
    }

    /// The live locks the members name, `None` for those that ended or
    /// expired by `now`; one pipeline, all in one partition.
    async fn read_members<'a>(
        &self,
        members: impl Iterator<Item = &'a Member>,
        now: i64,
    ) -> Result<Vec<Option<LockView>>, Error> {
        let members: Vec<&Member> = members.collect();
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for m in &members {
            let keys = self.keys.record(&m.record, token_shard(m.token));
            pipe.hget(&keys.locks, m.token).zscore(&keys.exp, m.token).hget(&keys.stock, "unit_scale");
        }
        let replies: Vec<(Option<String>, Option<f64>, Option<u32>)> = {
            let flat: Vec<redis::Value> = self.query_pipe(&pipe).await?;
            flat.chunks(3).map(|c| Ok((value(&c[0])?, value(&c[1])?, value(&c[2])?))).collect::<Result<_, Error>>()?
        };
        let mut locks = Vec::with_capacity(members.len());
        for (m, (packed, expires, scale)) in members.into_iter().zip(replies) {
            let (Some(packed), Some(expires)) = (packed, expires) else {
                locks.push(None);
                continue;
            };
            let expires_at_ms = expires as i64;
            if expires_at_ms <= now {
                locks.push(None);
                continue;
            }
            let unit_scale =
                UnitScale::new(scale.unwrap_or(0), "unit_scale").map_err(|_| malformed("a bad unit scale"))?;
            locks.push(Some(unpack_lock(&m.record, m.token, &packed, expires_at_ms, unit_scale)?));
        }
        Ok(locks)
    }

    /// Redis time (ms) on the shard of `partition`.
    async fn time_of(&self, partition: Partition) -> Result<i64, Error> {
        // TIME has no key; on a cluster, a pipeline with a key of the
        // partition runs it on that partition's shard.
        let pipe = redis::pipe().exists(self.keys.due(partition)).cmd("TIME").clone();
        let (_, time): (bool, (i64, i64)) = self.query_pipe(&pipe).await?;
        Ok(time.0 * 1000 + time.1 / 1000)
    }

    /// Live locks (every lock not yet settled), stale ones, and the oldest,
    /// from each shard of each partition's lock index in O(log n).
    pub(super) async fn index_stats(&self, stale_after: Duration) -> Result<LockStats, Error> {
        let mut stats = LockStats { live: 0, stale: 0, oldest_created_at_ms: None };
        for partition in 0..self.keys.partitions() {
            let now = self.time_of(partition).await?;
            let stale_bound = created_through(now - millis_i64(stale_after));
            let mut pipe = redis::pipe();
            for shard in 0..LOCK_SHARDS {
                let index = self.keys.lock_index(partition, shard);
                pipe.zcard(&index)
                    .cmd("ZLEXCOUNT")
                    .arg(&index)
                    .arg("-")
                    .arg(&stale_bound)
                    .cmd("ZRANGE")
                    .arg(&index)
                    .arg(0)
                    .arg(0);
            }
            let shards: Vec<(u64, u64, Vec<String>)> = self.query_pipe(&pipe).await?;
            for (live, stale, first) in shards {
                stats.live += live;
                stats.stale += stale;
                if let Some(oldest) = first.first().and_then(|m| Member::parse(m)) {
                    let at = oldest.created_at_ms;
                    stats.oldest_created_at_ms = Some(stats.oldest_created_at_ms.map_or(at, |o| o.min(at)));
                }
            }
        }
        Ok(stats)
    }
}

fn value<T: redis::FromRedisValue>(v: &redis::Value) -> Result<T, Error> {
    redis::from_redis_value(v.clone()).map_err(|e| malformed(&e.to_string()))
}

fn millis_i64(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The filters the index range does not apply.
fn matches(filter: &LockFilter, lock: &LockView) -> bool {
    filter.order_id.as_ref().is_none_or(|o| o.as_str() == lock.order_id)
        && filter.holder.as_ref().is_none_or(|h| h.as_str() == lock.holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_parse_and_sort_by_age() {
        let m = Member::parse("001700000000123|SKU-1|WH-A|42").unwrap();
        assert_eq!((m.created_at_ms, m.record.to_string().as_str(), m.token), (1_700_000_000_123, "SKU-1|WH-A", 42));
        assert!(Member::parse("x|SKU|WH|1").is_none());
        assert!(Member::parse("000000000000001|SKU|WH").is_none());
        // The bound for "created at or before" takes exactly those members.
        let bound = created_through(1_700_000_000_123);
        let (inside, outside) = ("001700000000123|S|W|1", "001700000000124|S|W|1");
        assert!(inside < &bound[1..] && outside > &bound[1..]);
    }
}
