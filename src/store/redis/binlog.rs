//! The binlog follower's state on Redis (see `crate::cdc`): its lease
//! (`lead_ingest.lua`, as the ingestion reader's), its checkpoint (saved by
//! the lease holder only, `save_checkpoint.lua`), its status (a JSON value
//! that lapses unless the leader renews it) and its dead letters (the
//! ingestion stream's dead-letter stream). Every call is O(1).

use std::time::Duration;

use super::call::Invocation;
use super::ingest::millis;
use super::reply::malformed;
use super::{RedisStore, scripts};
use crate::domain::{BinlogCheckpoint, BinlogState, BinlogStatus, Error};

impl BinlogState for RedisStore {
    async fn lead_binlog(&self, name: &str, me: &str, lease: Duration) -> Result<bool, Error> {
        Ok(self.lease(self.keys.binlog_lease(name), me, millis(lease).max(1)).await? == me)
    }

    async fn resign_binlog(&self, name: &str, me: &str) -> Result<(), Error> {
        self.lease(self.keys.binlog_lease(name), me, 0).await.map(drop)
    }

    async fn binlog_checkpoint(&self, name: &str) -> Result<Option<BinlogCheckpoint>, Error> {
        let saved: Option<String> = self.query(redis::cmd("GET").arg(self.keys.binlog_checkpoint(name))).await?;
        saved
            .map(|text| {
                let (position, committed_at) = text.rsplit_once('@').unwrap_or((&text, "0"));
                let committed_at = committed_at.parse().map_err(|_| malformed("a binlog checkpoint"))?;
                Ok(BinlogCheckpoint { position: position.to_owned(), committed_at })
            })
            .transpose()
    }

    async fn save_binlog_checkpoint(&self, name: &str, me: &str, checkpoint: &BinlogCheckpoint) -> Result<bool, Error> {
        let mut inv = Invocation::new(&scripts::SAVE_CHECKPOINT);
        inv.key(self.keys.binlog_lease(name))
            .key(self.keys.binlog_checkpoint(name))
            .arg(me)
            .arg(format!("{}@{}", checkpoint.position, checkpoint.committed_at));
        Ok(self.eval(&inv).await?.int()? == 1)
    }

    async fn dead_letter_row(&self, fields: &[(&str, String)], error: &Error) -> Result<(), Error> {
        let mut cmd = self.dead_letter(error);
        for (name, value) in fields {
            cmd.arg(*name).arg(value);
        }
        self.query(&cmd).await
    }

    async fn publish_binlog_status(&self, name: &str, status: &BinlogStatus, ttl: Duration) -> Result<(), Error> {
        let json = serde_json::to_string(status).map_err(|e| Error::Internal { detail: e.to_string() })?;
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        self.query(redis::cmd("SET").arg(self.keys.binlog_status(name)).arg(json).arg("PX").arg(ttl_ms)).await
    }

    async fn binlog_status(&self, name: &str) -> Result<Option<BinlogStatus>, Error> {
        let json: Option<String> = self.query(redis::cmd("GET").arg(self.keys.binlog_status(name))).await?;
        json.map(|json| serde_json::from_str(&json).map_err(|_| malformed("a binlog follower status"))).transpose()
    }
}
