//! `lua/due_records.lua`: the records of a partition with expired locks.

use super::call::Invocation;
use super::{Partition, RedisStore, scripts};
use crate::domain::Error;

impl RedisStore {
    /// Up to `max_records` ids ("sku|warehouse") of records of `partition`
    /// that have a lock expired by Redis time.
    pub(super) async fn due_records(&self, partition: Partition, max_records: usize) -> Result<Vec<String>, Error> {
        self.due_members(&self.keys.due(partition), max_records).await
    }

    /// Up to `max` members of the sorted set `index` whose score (ms) has
    /// come by Redis time: records of a due index, sessions of a session index.
    pub(super) async fn due_members(&self, index: &str, max: usize) -> Result<Vec<String>, Error> {
        let mut inv = Invocation::new(&scripts::DUE_RECORDS);
        inv.key(index).arg(max);
        let mut reply = self.eval(&inv).await?;
        let mut ids = Vec::new();
        while !reply.is_done() {
            ids.push(reply.text()?);
        }
        Ok(ids)
    }
}
