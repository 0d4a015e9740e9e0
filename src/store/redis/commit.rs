//! `lua/commit.lua`: turns a lock into a deduction.

use super::reply::{Facts, Tag, lock_refusal};
use super::{RedisStore, scripts, signed_args};
use crate::domain::{CommitCommand, CommitOutcome, Error};

impl RedisStore {
    /// Commits the lock `cmd` names (all of it, or `cmd.quantity`). Commit is
    /// idempotent by the lock's own state (a retry finds it committed:
    /// `committed_now` false, with the figures of the commit it found), so
    /// no record of the call is kept.
    pub(super) async fn commit_lock(&self, cmd: &CommitCommand) -> Result<CommitOutcome, Error> {
        let id = &cmd.lock_id;
        let holder = cmd.holder.as_ref().map_or("", |h| h.as_str());
        let [mantissa, scale] = cmd.quantity.map_or([String::new(), String::new()], |q| signed_args(q.decimal()));
        let lock_id = id.to_string();

        let partition = self.keys.partition_of(&id.record.sku);
        let call = |lease: &str, ended: &str| {
            let mut inv = self.writing(&scripts::COMMIT, partition, None);
            self.add_lock_record(&mut inv, id);
            inv.key(self.keys.epoch(partition));
            inv.arg("")
                .arg(holder)
                .arg(&mantissa)
                .arg(&scale)
                .arg(self.retention_ms)
                .arg(self.retention_ms)
                .arg(id.record.to_string())
                .arg(id.token)
                .arg(&id.nonce)
                .arg(lease)
                .arg(ended)
                .arg(if cmd.allow_late { "1" } else { "" });
            inv
        };
        // A lock in a session lives while its session does: the script
        // checks the session's lease, read again should it pass meanwhile.
        let lease = async || match id.session() {
            None => Ok((String::new(), "")),
            Some(session) => self.session_lease(&session).await.map(|(lease, ended)| (lease.to_string(), ended)),
        };
        let (mut at, mut ended) = lease().await?;
        let mut reply = self.run_script("commit", &call(&at, ended)).await?;
        for _ in 0..2 {
            match reply.tag {
                // The session's lease passed since it was read: read it again.
                Tag::Lease => (at, ended) = lease().await?,
                // A late commit in a partition without a fencing epoch (its
                // data is gone): raise it, so no token goes back.
                Tag::Epoch => self.link.raise_epoch(&self.keys.epoch(partition)).await?,
                _ => break,
            }
            reply = self.run_script("commit", &call(&at, ended)).await?;
        }
        let facts = Facts { request_id: cmd.request_id.to_string(), lock_id, ..Facts::default() };
        let (committed, released, committed_now) = match reply.tag {
            Tag::Ok => (Some(reply.int()?), Some(reply.int()?), true),
            // What the earlier commit did, from its tombstone (none from
            // a tombstone written before tombstones kept it).
            Tag::AlreadyCommitted => (reply.optional_int()?, reply.optional_int()?, false),
            _ => return Err(lock_refusal(&mut reply, id, facts)?),
        };
        let late_token = reply.optional_int()?.map(|t| u64::try_from(t).unwrap_or_default());
        let replayed = reply.replayed;
        let record = reply.record(id.record.clone())?;
        Ok(CommitOutcome { committed, released, committed_now, record, replayed, late_token })
    }
}
