//! `lua/renew.lua`: the heartbeat of the locks of one partition.

use super::call::{fingerprint, millis};
use super::reply::{Facts, Tag, lock_end};
use super::{Partition, RedisStore, lock_args, scripts};
use crate::domain::{Error, LockId, RenewCommand, RenewItem, Renewed};

impl RedisStore {
    /// Renews `ids`, all in `partition`, in one script. Each lock gets its
    /// own result; the flag says whether the call was a replay.
    pub(super) async fn renew_group(
        &self,
        partition: Partition,
        cmd: &RenewCommand,
        ids: Vec<LockId>,
    ) -> Result<(Vec<RenewItem>, bool), Error> {
        let mut inv = self.writing(&scripts::RENEW, partition, Some(("renew", &cmd.request_id)));
        for id in &ids {
            self.add_record(&mut inv, &id.record);
        }
        inv.arg(renew_fingerprint(cmd, &ids))
            .arg(cmd.holder.as_str())
            .arg(cmd.ttl.map_or(0, millis))
            .arg(self.retention_ms)
            .arg(self.retention_ms);
        for args in lock_args(&ids) {
            inv.arg(&args[..]);
        }
        let mut reply = self.run_script("renew", &inv).await?;
        match reply.tag {
            Tag::Ok => {}
            Tag::IdempotencyKeyReused => {
                return Err(reply.tag.error(Facts { request_id: cmd.request_id.to_string(), ..Facts::default() }));
            }
            _ => return Err(reply.unexpected()),
        }
        let mut items = Vec::with_capacity(ids.len());
        for lock_id in ids {
            let status = reply.tag()?;
            let (detail, capped) = (reply.text()?, reply.text()? == "1");
            let result = match status {
                Tag::Ok => {
                    let expires_at_ms = detail.parse().map_err(|_| super::reply::malformed("a bad expiry"))?;
                    Ok(Renewed { expires_at_ms, max_hold_reached: capped })
                }
                Tag::LockNotFound | Tag::LockExpired | Tag::LockForceReleased | Tag::LockHolderMismatch => {
                    let facts = Facts { lock_id: lock_id.to_string(), ended: lock_end(&detail)?, ..Facts::default() };
                    Err(status.error(facts))
                }
                other => return Err(super::reply::malformed(&format!("the renew status {}", other.as_str()))),
            };
            items.push(RenewItem { lock_id, result });
        }
        Ok((items, reply.replayed))
    }
}

/// The fingerprint of a Renew of `ids`.
pub(super) fn renew_fingerprint(cmd: &RenewCommand, ids: &[LockId]) -> String {
    let ttl_ms = cmd.ttl.map_or(0, millis).to_string();
    let lock_args = lock_args(ids);
    let mut parts = vec![cmd.holder.as_str(), &ttl_ms];
    parts.extend(lock_args.iter().flatten().map(String::as_str));
    fingerprint(&parts)
}
