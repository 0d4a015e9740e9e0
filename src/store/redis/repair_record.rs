//! An operator's repair of a drifted record: `lua/repair_slice.lua` mends
//! the expiry index and sums the locks slice by slice, then
//! `lua/repair_record.lua` sets `locked` to that sum if the record did not
//! change meanwhile. No call holds Redis for longer than a slice.

use super::call::fingerprint;
use super::check_record::{CHECK_SLICE, LockWalk};
use super::keys::LOCK_SHARDS;
use super::reply::{Facts, Reply, Tag};
use super::{RedisStore, scripts};
use crate::domain::{Error, RecordKey, Repair, RequestId};

/// Sums tried before a busy record is given up on.
const REPAIR_ATTEMPTS: u32 = 5;

impl RedisStore {
    /// Rebuilds `record`'s expiries and `locked` from its lock set, audited.
    pub(super) async fn repair(
        &self,
        record: &RecordKey,
        actor: &str,
        reason: &str,
        request_id: &RequestId,
    ) -> Result<Repair, Error> {
        let record_id = record.to_string();
        let fp = fingerprint(&[&record_id, actor, reason]);
        let facts =
            || Facts { request_id: request_id.to_string(), record: Some((record.clone(), None)), ..Facts::default() };
        let (mut fixed, mut dropped) = (0, 0);
        for _ in 0..REPAIR_ATTEMPTS {
            // Structure first: every lock gets an expiry and an index entry
            // (the same walk sums them), then expiries without a lock go.
            let Some((walk, version, newly_fixed)) = self.repair_walk(record, "locks").await? else {
                return Err(Tag::SkuNotAvailableInWarehouse.error(facts()));
            };
            fixed += newly_fixed;
            dropped += self.repair_walk(record, "expiries").await?.map_or(0, |(_, _, n)| n);
            if !walk.steady {
                continue;
            }
            let partition = self.keys.partition_of(&record.sku);
            let mut inv = self.writing(&scripts::REPAIR_RECORD, partition, Some(("repair_record", request_id)));
            self.add_whole_record(&mut inv, record);
            inv.arg(&record_id)
                .arg(&fp)
                .arg(self.retention_ms)
                .arg(actor)
                .arg(reason)
                .arg(request_id.as_str())
                .arg(self.audit_max_events)
                .arg(version)
                .arg(walk.sum)
                .arg(fixed)
                .arg(dropped)
                .arg(walk.count());
            let mut reply = self.run_script("repair_record", &inv).await?;
            match reply.tag {
                Tag::Ok => {}
                Tag::Stale => continue,
                Tag::SkuNotAvailableInWarehouse | Tag::IdempotencyKeyReused => return Err(reply.tag.error(facts())),
                _ => return Err(reply.unexpected()),
            }
            let replayed = reply.replayed;
            return Ok(Repair {
                locked_before: reply.int()?,
                locked_after: reply.int()?,
                fixed_expiries: reply.uint()?,
                dropped_expiries: reply.uint()?,
                record: reply.record(record.clone())?,
                replayed,
            });
        }
        Err(Error::RecordBusy { attempts: REPAIR_ATTEMPTS })
    }

    /// One walk of `repair_slice.lua` in `mode` over the whole record, lock
    /// shard by lock shard: the locks it saw (mode `locks`), the version of
    /// the first slice, and what it fixed or dropped; `None` when the record
    /// does not exist. A walk over locks stops at the first slice that sees
    /// the record changed.
    async fn repair_walk(&self, record: &RecordKey, mode: &str) -> Result<Option<(LockWalk, u64, u64)>, Error> {
        let partition = self.keys.partition_of(&record.sku);
        let (mut walk, mut first_version, mut mended) = (LockWalk::new(), None, 0);
        for shard in 0..LOCK_SHARDS {
            let mut cursor = "0".to_owned();
            loop {
                let mut inv = self.writing(&scripts::REPAIR_SLICE, partition, None);
                self.add_record_shard(&mut inv, record, shard);
                inv.arg(mode).arg(&cursor).arg(CHECK_SLICE).arg(record.to_string());
                let mut reply: Reply = self.run_script("repair_slice", &inv).await?;
                match reply.tag {
                    Tag::Ok => {}
                    Tag::Missing => return Ok(None),
                    _ => return Err(reply.unexpected()),
                }
                let version = reply.uint()?;
                let first = *first_version.get_or_insert(version);
                let steady = walk.version(version);
                cursor = reply.text()?;
                mended += reply.uint()?;
                walk.locks(&mut reply)?;
                if mode == "locks" && !steady {
                    return Ok(Some((walk, first, mended)));
                }
                if cursor == "0" {
                    break;
                }
            }
        }
        let first = first_version.expect("a record has lock shards");
        Ok(Some((walk, first, mended)))
    }
}
