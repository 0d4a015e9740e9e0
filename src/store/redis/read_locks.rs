//! `lua/read_locks.lua`: one atomic read of a record's locks, for GetLock,
//! ListLocks and the lock statistics.

use std::time::Duration;

use super::reply::{Facts, Tag, malformed};
use super::{RedisStore, scripts};
use crate::domain::{Error, LockEnd, LockId, LockView, RecordKey, UnitScale};

impl RedisStore {
    /// A record's live locks as of Redis time, in token order, and that time.
    pub(super) async fn record_locks(&self, record: &RecordKey) -> Result<(Vec<LockView>, i64), Error> {
        let mut inv = scripts::READ_LOCKS.prepare_invoke();
        self.add_record(&mut inv, record);
        let mut reply = self.run_script("read_locks", &inv).await?;
        // A record that does not exist has no unit scale and no locks.
        let unit_scale = reply.text()?.parse().unwrap_or(0);
        let unit_scale = UnitScale::new(unit_scale, "unit_scale").map_err(|_| malformed("a bad unit scale"))?;
        let now = reply.int()?;
        let mut views = Vec::new();
        while !reply.is_done() {
            let token = reply.uint()?;
            let packed = reply.text()?;
            let expires_at_ms = reply.int()?;
            if expires_at_ms > now {
                views.push(unpack_lock(record, token, &packed, expires_at_ms, unit_scale)?);
            }
        }
        views.sort_by_key(|v| v.lock_id.token);
        Ok((views, now))
    }

    /// One lock, live; or the error that says how it ended while its
    /// tombstone is kept.
    pub(super) async fn read_lock(&self, lock_id: &LockId) -> Result<LockView, Error> {
        let (locks, _) = self.record_locks(&lock_id.record).await?;
        let facts = Facts { lock_id: lock_id.to_string(), ..Facts::default() };
        if let Some(lock) = locks.into_iter().find(|l| l.lock_id.token == lock_id.token) {
            return if lock.lock_id.nonce == lock_id.nonce { Ok(lock) } else { Err(Tag::LockNotFound.error(facts)) };
        }
        let keys = self.keys.record(&lock_id.record);
        let mut pipe = redis::pipe();
        for mark in ["E", "R", "C", "F"] {
            pipe.zscore(&keys.ended, format!("{}:{mark}", lock_id.token));
        }
        // Still in the locks hash but past its expiry is expired too, since
        // record_locks leaves expired locks out.
        pipe.zscore(&keys.exp, lock_id.token);
        let marks: Vec<Option<f64>> = self.query_pipe(&pipe).await?;
        let found = |i: usize| marks.get(i).is_some_and(Option::is_some);
        let (tag, ended) = if found(0) {
            (Tag::LockExpired, None)
        } else if found(1) {
            (Tag::LockNotFound, Some(LockEnd::Released))
        } else if found(2) {
            (Tag::LockNotFound, Some(LockEnd::Committed))
        } else if found(3) {
            (Tag::LockForceReleased, None)
        } else if found(4) {
            (Tag::LockExpired, None)
        } else {
            (Tag::LockNotFound, None)
        };
        Err(tag.error(Facts { ended, ..facts }))
    }
}

/// A lock as `pack_lock` in `lua/lib.lua` writes it.
fn unpack_lock(
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
