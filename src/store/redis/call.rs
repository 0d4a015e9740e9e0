//! How the store calls Redis: every call bounded by the store timeout, the
//! script runner (EVALSHA, SCRIPT LOAD on NOSCRIPT), the mapping of client
//! errors to domain errors, and request claims.

use std::future::Future;
use std::time::Duration;

use redis::{Cmd, RedisError, ToRedisArgs};
use tracing::Instrument;

use super::reply::{Reply, Tag};
use super::scripts::Lua;
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
        script: &'static Lua,
        partition: Partition,
        idempotency: Option<(&str, &RequestId)>,
    ) -> Invocation {
        let keys = self.keys.partition_keys(partition, idempotency);
        let mut inv = Invocation::new(script);
        inv.key(keys.idempotency).key(keys.due).key(keys.events).key(keys.audit);
        inv
    }

    /// Adds every key of a record to `inv`, in script order (see
    /// `whole_record_at` in `lua/lib.lua`).
    pub(super) fn add_whole_record(&self, inv: &mut Invocation, record: &RecordKey) {
        for key in self.keys.whole_record(record) {
            inv.key(key);
        }
    }

    /// Adds the five keys of one lock shard of a record to `inv`, in script order.
    pub(super) fn add_record_shard(&self, inv: &mut Invocation, record: &RecordKey, shard: usize) {
        for key in self.keys.record(record, shard).in_script_order() {
            inv.key(key);
        }
    }

    /// Adds the five keys of a lock's record to `inv`, in script order: the
    /// record's in the lock's shard, with the tombstone bucket of its token.
    pub(super) fn add_lock_record(&self, inv: &mut Invocation, id: &LockId) {
        for key in self.keys.lock_record(&id.record, id.token).in_script_order() {
            inv.key(key);
        }
    }

    /// One EVALSHA of a request's script, timed as `op` in a child span and
    /// in the Redis metrics.
    pub(super) async fn run_script(&self, op: &'static str, invocation: &Invocation) -> Result<Reply, Error> {
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
    pub(super) async fn eval(&self, invocation: &Invocation) -> Result<Reply, Error> {
        // On NOSCRIPT (Redis restarted, was replaced or flushed its scripts)
        // raise the fencing epochs and load the scripts (see `link`), then
        // run it again; a SCRIPT FLUSH (or a failover) between the load and
        // the run gives NOSCRIPT again. Each round is a round trip to Redis,
        // and the store timeout bounds them all, so it goes on until it runs
        // or time is up.
        let call = async {
            loop {
                // The script's name depends on the dataset's identity, which
                // a recovery may have just learned.
                let (seen, mut conn, scripts) = self.link.for_script();
                let command = invocation.command(scripts.sha(invocation.script));
                match command.query_async(&mut conn).await {
                    Err(e) if e.code() == Some("NOSCRIPT") => self.link.recover_scripts(seen).await?,
                    Err(e) => {
                        self.link.observe(&e);
                        return Err(store_error(e));
                    }
                    Ok(items) => return Ok(items),
                }
            }
        };
        let items: Vec<String> = tokio::time::timeout(self.timeout, call).await.map_err(|_| Error::StoreTimeout)??;
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
        // The claim stays after a store fault (the call may have gone
        // through) and while an earlier attempt runs (the claim is its).
        if let Err(e) = &result
            && !matches!(
                e,
                Error::StoreTimeout
                    | Error::StoreUnavailable { .. }
                    | Error::StoreOutOfMemory
                    | Error::RequestInProgress { .. }
            )
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

/// One call of a script, built in place: keys and arguments are packed into
/// two buffers as they are added, and into one EVALSHA command when it is
/// sent. (redis-rs's `ScriptInvocation` allocates a vector per key and
/// argument, then copies them all into the command: on the Lock path that
/// was most of the service's own work per call.)
pub(super) struct Invocation {
    script: &'static Lua,
    keys: Cmd,
    args: Cmd,
}

impl Invocation {
    /// A call of `script`, with no keys or arguments yet.
    pub(super) fn new(script: &'static Lua) -> Self {
        Self { script, keys: Cmd::new(), args: Cmd::new() }
    }

    /// Adds `KEYS[n+1]`.
    pub(super) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        self.keys.arg(key);
        self
    }

    /// Adds `ARGV[n+1]`.
    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args.arg(arg);
        self
    }

    /// `EVALSHA sha numkeys key... arg...`, the script named `sha`.
    fn command(&self, sha: &str) -> Cmd {
        let parts = || self.keys.args_iter().chain(self.args.args_iter());
        let bytes: usize = parts().map(|a| if let redis::Arg::Simple(b) = a { b.len() } else { 0 }).sum();
        let (keys, args) = (self.keys.args_iter().len(), self.args.args_iter().len());
        let mut cmd = Cmd::with_capacity(3 + keys + args, bytes + sha.len() + 16);
        cmd.arg("EVALSHA").arg(sha).arg(keys);
        for part in parts() {
            if let redis::Arg::Simple(bytes) = part {
                cmd.arg(bytes);
            }
        }
        cmd
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
/// so a reused request_id with other content is told apart from a retry: the
/// SHA-1 of the parts joined by U+001F, in hex (hashed piece by piece; the
/// joined text is never built).
pub(super) fn fingerprint(parts: &[&str]) -> String {
    let mut sha = sha1_smol::Sha1::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            sha.update(b"\x1f");
        }
        sha.update(part.as_bytes());
    }
    hex(&sha.digest().bytes())
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        text.push(char::from(DIGITS[usize::from(b >> 4)]));
        text.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Part of the data layout: stored fingerprints must stay comparable
    /// across versions, so the digest is pinned to SHA-1 of the joined parts.
    #[test]
    fn fingerprints_are_sha1_of_the_joined_parts() {
        assert_eq!(fingerprint(&["lock", "30000", "h", "o-1"]), "e73fcb7261edb51daa4e17bec05a70753b73799a");
        assert_eq!(fingerprint(&[]), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }
}
