//! `lua/request_force_unlock.lua`: records one partition's part of a
//! forced-unlock request.

use std::time::Duration;

use super::call::{fingerprint, millis};
use super::reply::{Facts, Tag};
use super::{Partition, RedisStore, scripts};
use crate::domain::{Error, LockId, LockView, RequestId};

/// How long a decided request is kept, for the listings.
const DECIDED_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);

/// One partition's part of a forced-unlock request.
pub(super) struct Part<'a> {
    /// The request's id (every part has the same).
    pub(super) id: &'a str,
    /// The locks of the part, as the request's first attempt selected them.
    pub(super) lock_ids: &'a [&'a LockId],
    /// Those still live, as seen when the part was asked for.
    pub(super) locks: &'a [&'a LockView],
    /// Whether the part is the one listed in the index (the first partition's).
    pub(super) listed: bool,
}

impl RedisStore {
    /// Records `part` as pending; the id stored, which for a retry is the
    /// first attempt's.
    pub(super) async fn request_part(
        &self,
        partition: Partition,
        part: Part<'_>,
        requester: &str,
        reason: &str,
        request_id: &RequestId,
    ) -> Result<String, Error> {
        let lines: Vec<String> = part
            .locks
            .iter()
            .map(|l| {
                let quantity = l.unit_scale.format(l.quantity);
                format!("{}\t{quantity}\t{}\t{}\t{}", l.lock_id, l.holder, l.order_id, l.created_at_ms)
            })
            .collect();
        let lock_ids: Vec<String> = part.lock_ids.iter().map(|id| id.to_string()).collect();
        let lock_ids = lock_ids.join(",");
        let fp = fingerprint(&[requester, reason, &lock_ids]);
        let idempotency = Some(("request_force_unlock", request_id));
        let mut inv = self.writing(&scripts::REQUEST_FORCE_UNLOCK, partition, idempotency);
        inv.key(self.keys.force_unlock(partition, part.id))
            .key(self.keys.force_unlock_index(partition))
            .arg(&fp)
            .arg(part.id)
            .arg(requester)
            .arg(reason)
            .arg(self.force_unlock_ttl_ms)
            .arg(lines.join("\n"))
            .arg(self.retention_ms)
            .arg(self.audit_max_events)
            .arg(request_id.as_str())
            .arg(&lock_ids)
            .arg(millis(DECIDED_KEPT))
            .arg(if part.listed { "1" } else { "0" });
        let mut reply = self.run_script("request_force_unlock", &inv).await?;
        match reply.tag {
            Tag::Ok => {
                let _created = reply.int()?;
                reply.text()
            }
            Tag::IdempotencyKeyReused => {
                Err(reply.tag.error(Facts { request_id: request_id.to_string(), ..Facts::default() }))
            }
            _ => Err(reply.unexpected()),
        }
    }
}
