//! `lua/read_lock.lua`: one lock, for GetLock, in O(1).

use std::time::Duration;

use super::call::Invocation;
use super::reply::{Facts, Tag, lock_end, malformed, moved_to};
use super::{RedisStore, scripts};
use crate::domain::{Error, LockId, LockView, RecordKey, UnitScale};

impl RedisStore {
    /// One lock, live; or the error that says how it ended while its
    /// tombstone is kept.
    pub(super) async fn read_lock(&self, lock_id: &LockId) -> Result<LockView, Error> {
        let mut inv = Invocation::new(&scripts::READ_LOCK);
        self.add_lock_record(&mut inv, lock_id);
        inv.arg(lock_id.token).arg(&lock_id.nonce);
        let mut reply = self.run_script("read_lock", &inv).await?;
        match reply.tag {
            Tag::Ok => {
                let unit_scale = reply.unit_scale()?;
                let packed = reply.text()?;
                let expires_at_ms = reply.int()?;
                let mut view = unpack_lock(&lock_id.record, lock_id.token, &packed, expires_at_ms, unit_scale)?;
                // A lock in a session lives to its session's expiry, or
                // has ended with it (its end is on its way here).
                if let Some(session) = lock_id.session() {
                    let (lease, ended) = self.session_lease(&session).await?;
                    if lease == 0 {
                        return Err(Error::SessionEnded { session_id: session.to_string(), closed: ended == "closed" });
                    }
                    view.expires_at_ms = view.expires_at_ms.min(lease);
                }
                Ok(view)
            }
            Tag::LockNotFound | Tag::LockExpired | Tag::LockForceReleased => {
                let ended = lock_end(&reply.text()?)?;
                let moved_to = moved_to(&mut reply, ended, &lock_id.nonce)?;
                Err(reply.tag.error(Facts { lock_id: lock_id.to_string(), ended, moved_to, ..Facts::default() }))
            }
            _ => Err(reply.unexpected()),
        }
    }
}

/// A lock as `pack_lock` in `lua/lib.lua` writes it.
pub(super) fn unpack_lock(
    record: &RecordKey,
    token: u64,
    packed: &str,
    expires_at_ms: i64,
    unit_scale: UnitScale,
) -> Result<LockView, Error> {
    // qty|created|max_expires|ttl|holder|order_id|nonce|batch_id
    let f: Vec<&str> = packed.split('|').collect();
    let [qty, created, max_expires, ttl, holder, order_id, nonce, batch_id] = f[..] else {
        return Err(malformed("a bad lock record"));
    };
    let int = |s: &str| s.parse::<i64>().map_err(|_| malformed("a bad lock figure"));
    Ok(LockView {
        lock_id: LockId { record: record.clone(), token, nonce: nonce.to_owned() },
        quantity: int(qty)?,
        unit_scale,
        created_at_ms: int(created)?,
        expires_at_ms,
        max_expires_at_ms: int(max_expires)?,
        ttl: Duration::from_millis(int(ttl)?.unsigned_abs()),
        order_id: order_id.to_owned(),
        holder: holder.to_owned(),
        batch_id: (!batch_id.is_empty()).then(|| batch_id.to_owned()),
    })
}
