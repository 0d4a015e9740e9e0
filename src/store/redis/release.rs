//! `lua/release.lua`: gives the locks of one partition back, all or none.

use super::lock::LockCall;
use super::reply::{Facts, Tag, lock_end, malformed, moved_to};
use super::{Partition, RedisStore, lock_args, scripts};
use crate::domain::{BatchId, Error, LockId, ReleaseCommand, ReleaseItem, ReleaseKind};

impl RedisStore {
    /// Releases `ids`, all in `partition`, in one script. Release is
    /// idempotent by the locks' own state (a retry finds them released:
    /// ALREADY_RELEASED), so no record of the call is kept.
    pub(super) async fn release_group(
        &self,
        partition: Partition,
        cmd: &ReleaseCommand,
        ids: &[LockId],
    ) -> Result<(Vec<ReleaseItem>, bool), Error> {
        self.release_undoing(partition, cmd, ids, None).await
    }

    /// Releases `ids` in `partition`; with `undone`, the locks of a failed
    /// BatchLock, whose idempotency and batch records go in the same script
    /// (see `lua/release.lua`).
    pub(super) async fn release_undoing(
        &self,
        partition: Partition,
        cmd: &ReleaseCommand,
        ids: &[LockId],
        undone: Option<(&str, &BatchId)>,
    ) -> Result<(Vec<ReleaseItem>, bool), Error> {
        let mut inv = self.writing(&scripts::RELEASE, partition, None);
        if let Some((request, batch_id)) = undone {
            // The record is in the generation of Redis's clock, within one of this replica's.
            let generation = LockCall::current_generation(self.retention_ms);
            for g in [generation.saturating_sub(1), generation, generation + 1] {
                inv.key(self.keys.lock_idempotency(partition, g, request));
            }
            inv.key(self.keys.batch(partition, batch_id));
        }
        for id in ids {
            self.add_lock_record(&mut inv, id);
        }
        inv.arg(undone.map_or("", |(request, _)| request))
            .arg(cmd.holder.as_ref().map_or("", |h| h.as_str()))
            .arg(self.retention_ms)
            .arg(self.retention_ms);
        for args in lock_args(ids) {
            inv.arg(&args[..]);
        }
        let mut reply = self.run_script("release", &inv).await?;
        let mut facts = Facts { request_id: cmd.request_id.to_string(), ..Facts::default() };
        match reply.tag {
            Tag::Ok => {}
            Tag::IdempotencyKeyReused => return Err(reply.tag.error(facts)),
            Tag::LockNotFound | Tag::LockAlreadyCommitted | Tag::LockHolderMismatch => {
                let id = &ids[reply.index(ids.len())?];
                facts.lock_id = id.to_string();
                if !reply.is_done() {
                    facts.ended = lock_end(&reply.text()?)?;
                    facts.moved_to = moved_to(&mut reply, facts.ended, &id.nonce)?;
                }
                return Err(reply.tag.error(facts));
            }
            _ => return Err(reply.unexpected()),
        }
        let mut items = Vec::with_capacity(ids.len());
        for lock_id in ids.iter().cloned() {
            let kind = match reply.text()?.as_str() {
                "RELEASED" => ReleaseKind::Released,
                "ALREADY_RELEASED" => ReleaseKind::AlreadyReleased,
                "ALREADY_EXPIRED" => ReleaseKind::AlreadyExpired,
                "FORCE_RELEASED" => ReleaseKind::ForceReleased,
                other => return Err(malformed(&format!("the release outcome {other:?}"))),
            };
            let quantity = reply.int()?;
            let unit_scale = reply.unit_scale()?;
            items.push(ReleaseItem { lock_id, kind, quantity, unit_scale });
        }
        Ok((items, reply.replayed))
    }
}
