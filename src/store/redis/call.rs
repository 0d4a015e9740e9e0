//! How the store calls Redis: every call bounded by the store timeout, the
//! script runner (EVALSHA, SCRIPT LOAD on NOSCRIPT), the mapping of client
//! errors to domain errors, and request claims.

use std::future::Future;
use std::time::Duration;

use redis::{RedisError, Script, ScriptInvocation};
use tracing::Instrument;

use super::reply::{Reply, Tag};
use super::{Partition, RedisStore};
use crate::domain::{Error, LockId, RecordKey, RequestId};

impl RedisStore {
    /// `call` within the store timeout; an error that looks like a failover
    /// makes the link look for a new primary.
    pub(super) async fn bounded<T>(&self, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, Error> {
        let observed = async {
            let result = call.await;
            if let Err(e) = &result {
                self.link.observe(e);
            }
            result
        };
        bounded(self.timeout, observed).await
    }

    /// One command on the primary (or the cluster), bounded.
    pub(super) async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, Error> {
        let mut conn = self.link.conn();
        self.bounded(cmd.query_async(&mut conn)).await
    }

    /// One pipeline on the primary (one partition's shard on a cluster), bounded.
    pub(super) async fn query_pipe<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, Error> {
        let mut conn = self.link.conn();
        self.bounded(pipe.query_async(&mut conn)).await
    }

    /// An invocation of a writing script with its partition keys in front
    /// (see `lua/lib.lua`): `idempotency` names the request's method and id.
    pub(super) fn writing(
        &self,
        script: &'static Script,
        partition: Partition,
        idempotency: Option<(&str, &RequestId)>,
    ) -> ScriptInvocation<'static> {
        let keys = self.keys.partition_keys(partition, idempotency);
        let mut inv = script.prepare_invoke();
        inv.key(keys.idempotency).key(keys.due).key(keys.events).key(keys.audit).key(keys.locks);
        inv
    }

    /// Adds a record's four keys to `inv`, in script order.
    pub(super) fn add_record(&self, inv: &mut ScriptInvocation<'_>, record: &RecordKey) {
        for key in self.keys.record(record).in_script_order() {
            inv.key(key);
        }
    }

    /// Adds the four keys of a lock's record to `inv`, in script order: the
    /// record's, with the tombstone bucket of the lock's token.
    pub(super) fn add_lock_record(&self, inv: &mut ScriptInvocation<'_>, id: &LockId) {
        for key in self.keys.lock_record(&id.record, id.token).in_script_order() {
            inv.key(key);
        }
    }

    /// One EVALSHA of a request's script, timed as `op` in a child span and
    /// in the Redis metrics.
    pub(super) async fn run_script(&self, op: &'static str, invocation: &ScriptInvocation<'_>) -> Result<Reply, Error> {
        let started = std::time::Instant::now();
        let result = self
            .eval(invocation)
            .instrument(tracing::debug_span!("redis", otel.name = op, db.system = "redis", db.operation = op))
            .await;
        let kind = result.as_ref().err().map(|e| match e {
            Error::StoreTimeout => "timeout",
            Error::StoreUnavailable { .. } => "unavailable",
            Error::StoreOutOfMemory => "out_of_memory",
            _ => "other",
        });
        crate::metrics::METRICS.redis(op, started.elapsed(), kind);
        result
    }

    /// One EVALSHA, untimed: for the background loops (the sweeper runs every
    /// few hundred ms in every partition of every replica; its calls would
    /// drown the request spans and metrics).
    pub(super) async fn eval(&self, invocation: &ScriptInvocation<'_>) -> Result<Reply, Error> {
        let mut conn = self.link.conn();
        // invoke_async loads the script on NOSCRIPT and retries once; a
        // SCRIPT FLUSH (or a failover) between the load and the retry gives
        // NOSCRIPT again. Each round is a round trip to Redis, and the store
        // timeout bounds them all, so it goes on until it runs or time is up.
        let call = async {
            loop {
                match invocation.invoke_async(&mut conn).await {
                    Err(e) if e.code() == Some("NOSCRIPT") => {}
                    result => return result,
                }
            }
        };
        let items: Vec<String> = self.bounded(call).await?;
        Reply::new(items)
    }

    /// Runs `call` under a claim of `request_id` for `method`. With several
    /// partitions each keeps its own idempotency records, so a request id
    /// reused with other content in another partition would go unnoticed:
    /// the claim, one key in the request id's partition holding the first
    /// content's fingerprint, catches it (one more round trip). A call that
    /// definitely failed gives its claim back, as a failed call leaves no
    /// idempotency record. With one partition the scripts see every reuse;
    /// `--request-id-claims false` turns the claim off. `fingerprint` is
    /// only computed when a claim is made.
    pub(super) async fn claimed<T>(
        &self,
        method: &str,
        request_id: &RequestId,
        fingerprint: impl FnOnce() -> String,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        if self.keys.partitions() == 1 || !self.request_id_claims {
            return call.await;
        }
        let claim = self.keys.request_claim(method, request_id);
        let fp = fingerprint();
        if self.set_or_get(&claim, &fp, self.retention_ms).await?.is_some_and(|first| first != fp) {
            return Err(reused(request_id));
        }
        let result = call.await;
        if let Err(e) = &result
            && !matches!(e, Error::StoreTimeout | Error::StoreUnavailable { .. } | Error::StoreOutOfMemory)
        {
            let _: Result<(), Error> = self.query(redis::cmd("DEL").arg(&claim)).await;
        }
        result
    }

    /// Sets `key` to `value` for `ttl_ms` unless it is set, in one command
    /// (so a cluster client follows MOVED and ASK for it); the value already
    /// there, if any.
    pub(super) async fn set_or_get(&self, key: &str, value: &str, ttl_ms: u64) -> Result<Option<String>, Error> {
        self.query(redis::cmd("SET").arg(key).arg(value).arg("NX").arg("GET").arg("PX").arg(ttl_ms.max(1))).await
    }
}

/// `call` within `limit`, its error mapped to the domain's.
pub(super) async fn bounded<T>(limit: Duration, call: impl Future<Output = redis::RedisResult<T>>) -> Result<T, Error> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(store_error(e)),
        Err(_) => Err(Error::StoreTimeout),
    }
}

/// Maps a client error to what the caller can do about it.
pub(super) fn store_error(e: RedisError) -> Error {
    match e.code() {
        Some("OOM") => return Error::StoreOutOfMemory,
        // A long script, a loading replica, a failover in progress: transient.
        Some("BUSY" | "LOADING" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY") => {
            return Error::StoreUnavailable { detail: e.to_string() };
        }
        // A redirect the cluster client could not follow (a pipeline in a
        // slot that is migrating): the slot is moving, try again.
        _ if e.is_cluster_error() => {
            return Error::StoreUnavailable { detail: format!("the Redis Cluster slot is moving: {e}") };
        }
        _ => {}
    }
    if e.is_timeout() {
        Error::StoreTimeout
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_unrecoverable_error() {
        Error::StoreUnavailable { detail: e.to_string() }
    } else {
        Error::Internal { detail: e.to_string() }
    }
}

/// The error of a request_id reused with other content.
pub(super) fn reused(request_id: &impl std::fmt::Display) -> Error {
    Tag::IdempotencyKeyReused.error(super::reply::Facts { request_id: request_id.to_string(), ..Default::default() })
}

/// A duration in ms, as the scripts take it.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A stable digest of a request's content, stored with its idempotency record
/// so a reused request_id with other content is told apart from a retry.
pub(super) fn fingerprint(parts: &[&str]) -> String {
    sha1_smol::Sha1::from(parts.join("\u{1f}")).digest().to_string()
}
