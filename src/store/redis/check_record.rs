//! `lua/check_record.lua`: the invariant auditor's look at one record, in
//! slices of one lock shard at a time, so that a record of any size never
//! holds Redis for long.

use std::collections::HashSet;

use super::call::Invocation;
use super::keys::LOCK_SHARDS;
use super::reply::{Reply, Tag};
use super::{RedisStore, scripts};
use crate::domain::{Error, RecordCheck, RecordKey};

/// Locks read per call. Each call costs Redis about a microsecond per lock.
pub(super) const CHECK_SLICE: usize = 100;

/// A walk over a record's lock set, slice by slice: the locks it saw, each
/// once (HSCAN may repeat one after a rehash), and whether the record's
/// version stayed the same from the first slice to the last, which is when
/// the sum is the sum of one state of the record.
#[derive(Debug, Default)]
pub(super) struct LockWalk {
    version: Option<u64>,
    /// False once a slice saw another version than the first.
    pub(super) steady: bool,
    seen: HashSet<String>,
    /// The quantity of the locks seen.
    pub(super) sum: i64,
    /// Locks seen without an expiry entry.
    pub(super) without_expiry: u64,
}

impl LockWalk {
    pub(super) fn new() -> Self {
        Self { steady: true, ..Self::default() }
    }

    /// Takes a slice's version; false (and not steady) when the record changed.
    pub(super) fn version(&mut self, version: u64) -> bool {
        if *self.version.get_or_insert(version) != version {
            self.steady = false;
        }
        self.steady
    }

    /// How many locks it saw.
    pub(super) fn count(&self) -> usize {
        self.seen.len()
    }

    /// Takes a slice's `token, quantity, has_expiry` triples, to the end of `reply`.
    pub(super) fn locks(&mut self, reply: &mut Reply) -> Result<(), Error> {
        while !reply.is_done() {
            let (token, qty, has_expiry) = (reply.text()?, reply.int()?, reply.int()? == 1);
            if self.seen.insert(token) {
                self.sum += qty;
                self.without_expiry += u64::from(!has_expiry);
            }
        }
        Ok(())
    }
}

impl RedisStore {
    /// The figures the auditor checks of `record`; `None` when it no longer
    /// exists. The sum of the locks is compared only when the record did not
    /// change while it was read (a busy record is summed at a later pass).
    pub(super) async fn check_record(&self, record: RecordKey) -> Result<Option<RecordCheck>, Error> {
        let mut walk = LockWalk::new();
        // The lock and expiry counts and the oldest overdue expiry of the
        // shards walked, each shard's as its last slice saw them.
        let (mut locks, mut expiries, mut overdue_ms) = (0, 0, 0);
        let mut last = None;
        'shards: for shard in 0..LOCK_SHARDS {
            let mut cursor = "0".to_owned();
            loop {
                let mut inv = Invocation::new(&scripts::CHECK_RECORD);
                self.add_record_shard(&mut inv, &record, shard);
                inv.arg(&cursor).arg(CHECK_SLICE);
                let mut reply = self.run_script("check_record", &inv).await?;
                match reply.tag {
                    Tag::Ok => {}
                    // Deleted between the scan and the check.
                    Tag::Missing => return Ok(None),
                    _ => return Err(reply.unexpected()),
                }
                let steady = walk.version(reply.uint()?);
                cursor = reply.text()?;
                let locked = reply.int()?;
                let (shard_locks, shard_expiries) = (reply.uint()?, reply.uint()?);
                let (shard_overdue, available, unit_scale) = (reply.int()?, reply.int()?, reply.unit_scale()?);
                let live = reply.int()?;
                walk.locks(&mut reply)?;
                last = Some((locked, live, available, unit_scale));
                if cursor == "0" || !steady {
                    locks += shard_locks;
                    expiries += shard_expiries;
                    overdue_ms = overdue_ms.max(shard_overdue);
                    if !steady {
                        break 'shards;
                    }
                    break;
                }
            }
        }
        let (locked, live, available, unit_scale) = last.expect("a record has lock shards");
        // Every lock has an expiry, so expiries beyond the locks that have
        // one belong to no lock (the scripts change both at once).
        let indexed = locks.saturating_sub(walk.without_expiry);
        Ok(Some(RecordCheck {
            record,
            locked,
            sum_of_locks: walk.steady.then_some(walk.sum),
            live,
            count_of_locks: walk.steady.then_some(walk.count() as i64),
            locks_without_expiry: walk.without_expiry,
            expiries_without_lock: expiries.saturating_sub(indexed),
            overdue_ms,
            available,
            unit_scale,
        }))
    }
}
