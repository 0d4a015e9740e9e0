//! `lua/expire_locks.lua`: the sweeper's step for one record.

use super::{Partition, RedisStore, scripts};
use crate::domain::{Error, RecordKey};

/// Steps one sweep takes on one record before it moves on to the next.
const STEPS_PER_RECORD: usize = 20;

impl RedisStore {
    /// Expires the due locks of up to `max_records` records of one partition;
    /// how many locks expired.
    pub(super) async fn sweep_partition(&self, partition: Partition, max_records: usize) -> Result<usize, Error> {
        let mut expired = 0;
        for id in self.due_records(partition, max_records).await? {
            let Some(record) = RecordKey::parse_id(&id) else {
                tracing::warn!(record = %id, "due index holds a record id that does not parse; removing it");
                let _: () = self.query(redis::cmd("ZREM").arg(self.keys.due(partition)).arg(&id)).await?;
                continue;
            };
            // An expiry wave on one record takes many bounded steps: take a
            // few in a row, without asking the due index again in between.
            for _ in 0..STEPS_PER_RECORD {
                let mut inv = self.writing(&scripts::EXPIRE_LOCKS, partition, None);
                self.add_whole_record(&mut inv, &record);
                inv.arg(&id).arg(self.retention_ms);
                let mut reply = self.eval(&inv).await?;
                expired += usize::try_from(reply.uint()?).unwrap_or(usize::MAX);
                if reply.int()? == 0 {
                    break;
                }
            }
        }
        Ok(expired)
    }
}
