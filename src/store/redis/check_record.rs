//! `lua/check_record.lua`: the invariant auditor's look at one record.

use super::reply::Tag;
use super::{RedisStore, scripts};
use crate::domain::{Error, RecordCheck, RecordKey};

impl RedisStore {
    /// The figures the auditor checks of `record`; `None` when it no longer exists.
    pub(super) async fn check_record(&self, record: RecordKey) -> Result<Option<RecordCheck>, Error> {
        let mut inv = scripts::CHECK_RECORD.prepare_invoke();
        self.add_record(&mut inv, &record);
        let mut reply = self.run_script("check_record", &inv).await?;
        match reply.tag {
            Tag::Ok => {}
            // Deleted between the scan and the check.
            Tag::Missing => return Ok(None),
            _ => return Err(reply.unexpected()),
        }
        Ok(Some(RecordCheck {
            record,
            locked: reply.int()?,
            sum_of_locks: reply.int()?,
            locks_without_expiry: reply.uint()?,
            expiries_without_lock: reply.uint()?,
            overdue_ms: reply.int()?,
            available: reply.int()?,
            unit_scale: reply.unit_scale()?,
        }))
    }
}
