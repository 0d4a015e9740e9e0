//! `lua/renew.lua`: the heartbeat of the locks of one partition.

use super::call::millis;
use super::reply::{Facts, Reply, Tag, lock_end, malformed};
use super::{Partition, RedisStore, lock_args, scripts};
use crate::domain::{Error, LockEnd, LockId, RenewCommand, RenewItem, Renewed};

impl RedisStore {
    /// Renews `ids`, all in `partition`, in one script. Each lock gets its
    /// own result. Renew is idempotent by the locks' own state (a retry
    /// renews again, from now), so no record of the call is kept.
    pub(super) async fn renew_group(
        &self,
        partition: Partition,
        cmd: &RenewCommand,
        ids: Vec<LockId>,
    ) -> Result<(Vec<RenewItem>, bool), Error> {
        let mut inv = self.writing(&scripts::RENEW, partition, None);
        for id in &ids {
            self.add_lock_record(&mut inv, id);
        }
        inv.arg("")
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
            let item = Item::read(&mut reply)?;
            let result = match item.status {
                Tag::Ok => {
                    let expires_at_ms = item.detail.parse().map_err(|_| malformed("a bad expiry"))?;
                    Ok(Renewed { expires_at_ms, max_hold_reached: item.capped })
                }
                Tag::LockNotFound
                | Tag::LockExpired
                | Tag::LockForceReleased
                | Tag::LockHolderMismatch
                | Tag::LockInSession => Err(item.status.error(Facts {
                    lock_id: lock_id.to_string(),
                    ended: item.ended,
                    ..Facts::default()
                })),
                other => return Err(malformed(&format!("the renew status {}", other.as_str()))),
            };
            items.push(RenewItem { lock_id, result });
        }
        Ok((items, reply.replayed))
    }
}

/// One lock's item of a renew reply: status, detail (the expiry when OK,
/// else how the lock ended), capped.
struct Item {
    status: Tag,
    detail: String,
    ended: Option<LockEnd>,
    capped: bool,
}

impl Item {
    /// Reads one item. An idempotency record written before the tags were
    /// spelled as the error reasons (kept up to the retention, 24 h by
    /// default) says LOCK_RELEASED or LOCK_COMMITTED with "0" for the detail:
    /// a retry within that window still replays it, read as today's
    /// LOCK_NOT_FOUND with how the lock ended.
    fn read(reply: &mut Reply) -> Result<Self, Error> {
        let status = reply.text()?;
        let (detail, capped) = (reply.text()?, reply.text()? == "1");
        let (status, ended) = match status.as_str() {
            "LOCK_RELEASED" => (Tag::LockNotFound, Some(LockEnd::Released)),
            "LOCK_COMMITTED" => (Tag::LockNotFound, Some(LockEnd::Committed)),
            _ => {
                let status = Reply::new(vec![status])?.tag;
                let ended = if status == Tag::Ok || detail == "0" { None } else { lock_end(&detail)? };
                (status, ended)
            }
        };
        Ok(Self { status, detail, ended, capped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(parts: &[&str]) -> Item {
        let mut items = vec!["OK".to_owned()];
        items.extend(parts.iter().map(|s| (*s).to_owned()));
        Item::read(&mut Reply::new(items).unwrap()).unwrap()
    }

    #[test]
    fn items_read_today_and_from_records_kept_before_the_tags_changed() {
        let ok = item(&["OK", "1700", "1"]);
        assert_eq!((ok.status, ok.detail.as_str(), ok.capped), (Tag::Ok, "1700", true));
        let ended = item(&["LOCK_NOT_FOUND", "COMMITTED", "0"]);
        assert_eq!((ended.status, ended.ended), (Tag::LockNotFound, Some(LockEnd::Committed)));
        let legacy = item(&["LOCK_RELEASED", "0", "0"]);
        assert_eq!((legacy.status, legacy.ended), (Tag::LockNotFound, Some(LockEnd::Released)));
        let legacy = item(&["LOCK_EXPIRED", "0", "0"]);
        assert_eq!((legacy.status, legacy.ended), (Tag::LockExpired, None));
    }
}
