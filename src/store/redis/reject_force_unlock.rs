//! `lua/reject_force_unlock.lua`: rejects one partition's part of a forced-unlock request.

use super::call::fingerprint;
use super::force_release::decision;
use super::reply::Facts;
use super::{Partition, RedisStore, scripts};
use crate::domain::{Error, RequestId};

impl RedisStore {
    /// Marks the part of request `id` in `partition` rejected, audited.
    pub(super) async fn reject_part(
        &self,
        partition: Partition,
        id: &str,
        actor: &str,
        reason: &str,
        request_id: &RequestId,
    ) -> Result<(), Error> {
        let fp = fingerprint(&[id, actor, reason]);
        let mut inv = self.writing(&scripts::REJECT_FORCE_UNLOCK, partition, Some(("reject_force_unlock", request_id)));
        inv.key(self.keys.force_unlock(partition, id))
            .arg(&fp)
            .arg(actor)
            .arg(reason)
            .arg(self.retention_ms)
            .arg(self.audit_max_events)
            .arg(request_id.as_str())
            .arg(id);
        let mut reply = self.run_script("reject_force_unlock", &inv).await?;
        decision(&mut reply, id, request_id, Facts::default())
    }
}
