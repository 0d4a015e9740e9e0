//! `lua/repair_record.lua`: an operator's repair of a drifted record.

use super::call::fingerprint;
use super::reply::{Facts, Tag};
use super::{RedisStore, scripts};
use crate::domain::{Error, RecordKey, Repair, RequestId};

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
        let partition = self.keys.partition_of(&record.sku);
        let mut inv = self.writing(&scripts::REPAIR_RECORD, partition, Some(("repair_record", request_id)));
        self.add_record(&mut inv, record);
        inv.arg(&record_id)
            .arg(&fp)
            .arg(self.retention_ms)
            .arg(actor)
            .arg(reason)
            .arg(request_id.as_str())
            .arg(self.audit_max_events);
        let mut reply = self.run_script("repair_record", &inv).await?;
        let facts =
            Facts { request_id: request_id.to_string(), record: Some((record.clone(), None)), ..Facts::default() };
        match reply.tag {
            Tag::Ok => {}
            Tag::SkuNotAvailableInWarehouse | Tag::IdempotencyKeyReused => return Err(reply.tag.error(facts)),
            _ => return Err(reply.unexpected()),
        }
        let replayed = reply.replayed;
        Ok(Repair {
            locked_before: reply.int()?,
            locked_after: reply.int()?,
            fixed_expiries: reply.uint()?,
            dropped_expiries: reply.uint()?,
            record: reply.record(record.clone())?,
            replayed,
        })
    }
}
