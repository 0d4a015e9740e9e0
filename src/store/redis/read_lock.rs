//! `lua/read_lock.lua`: one lock, for GetLock, in O(1).

use super::read_locks::unpack_lock;
use super::reply::{Facts, Tag, lock_end};
use super::{RedisStore, scripts};
use crate::domain::{Error, LockId, LockView};

impl RedisStore {
    /// One lock, live; or the error that says how it ended while its
    /// tombstone is kept.
    pub(super) async fn read_lock(&self, lock_id: &LockId) -> Result<LockView, Error> {
        let mut inv = scripts::READ_LOCK.prepare_invoke();
        self.add_record(&mut inv, &lock_id.record);
        inv.arg(lock_id.token).arg(&lock_id.nonce);
        let mut reply = self.run_script("read_lock", &inv).await?;
        match reply.tag {
            Tag::Ok => {
                let unit_scale = reply.unit_scale()?;
                let packed = reply.text()?;
                let expires_at_ms = reply.int()?;
                unpack_lock(&lock_id.record, lock_id.token, &packed, expires_at_ms, unit_scale)
            }
            Tag::LockNotFound | Tag::LockExpired | Tag::LockForceReleased => {
                let ended = lock_end(&reply.text()?)?;
                Err(reply.tag.error(Facts { lock_id: lock_id.to_string(), ended, ..Facts::default() }))
            }
            _ => Err(reply.unexpected()),
        }
    }
}
