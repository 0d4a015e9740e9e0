//! `lua/read_locks.lua`: one atomic read of a record's locks, for ListLocks
//! and the lock statistics.

use std::time::Duration;

use super::reply::malformed;
use super::{RedisStore, scripts};
use crate::domain::{Error, LockId, LockView, RecordKey, UnitScale};

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
