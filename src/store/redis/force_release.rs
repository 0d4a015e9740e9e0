//! `lua/force_release.lua`: executes one partition's part of a forced-unlock request.

use super::call::fingerprint;
use super::reply::{Facts, Reply, Tag};
use super::{Partition, RedisStore, scripts};
use crate::domain::{Approval, Error, ForceUnlockView, RequestId};

impl RedisStore {
    /// Releases and fences the locks of `request` in `partition`, and marks
    /// that part executed, in one script.
    pub(super) async fn execute_part(
        &self,
        partition: Partition,
        request: &ForceUnlockView,
        approver: &str,
        approval: Approval,
        comment: &str,
        request_id: &RequestId,
    ) -> Result<(), Error> {
        let mode = match approval {
            Approval::Operator => "approve",
            Approval::Policy => "policy",
        };
        let fp = fingerprint(&[&request.id, approver, mode, comment]);
        let mine: Vec<_> = request
            .items
            .iter()
            .filter(|item| self.keys.partition_of(&item.lock_id.record.sku) == partition)
            .map(|item| &item.lock_id)
            .collect();
        let mut inv = self.writing(&scripts::FORCE_RELEASE, partition, Some(("approve_force_unlock", request_id)));
        inv.key(self.keys.force_unlock(partition, &request.id));
        for id in &mine {
            self.add_lock_record(&mut inv, id);
        }
        inv.arg(&fp)
            .arg(approver)
            .arg(mode)
            .arg(comment)
            .arg(self.retention_ms)
            .arg(self.retention_ms)
            .arg(self.audit_max_events)
            .arg(request_id.as_str())
            .arg(&request.id);
        for id in &mine {
            inv.arg(id.record.to_string()).arg(id.token).arg(&id.nonce);
        }
        let mut reply = self.run_script("force_release", &inv).await?;
        let facts = Facts { detail: request.requester.clone(), ..Facts::default() };
        decision(&mut reply, &request.id, request_id, facts)
    }
}

/// The outcome of a decision on a part (force_release.lua and
/// reject_force_unlock.lua answer alike); `facts` holds what the caller knows.
pub(super) fn decision(reply: &mut Reply, id: &str, request_id: &RequestId, mut facts: Facts) -> Result<(), Error> {
    facts.request_id = request_id.to_string();
    facts.force_unlock_id = id.to_owned();
    match reply.tag {
        Tag::Ok => Ok(()),
        Tag::ForceUnlockNotPending => {
            facts.detail = reply.text()?;
            Err(reply.tag.error(facts))
        }
        Tag::TwoPersonRule | Tag::IdempotencyKeyReused | Tag::ForceUnlockNotFound | Tag::ForceUnlockExpired => {
            Err(reply.tag.error(facts))
        }
        _ => Err(reply.unexpected()),
    }
}
