//! Where the store's commands go: one primary, named by URL or found
//! through Sentinel and followed across failovers, or a Redis Cluster.
//!
//! On a cluster the cluster client routes each command by its key's slot,
//! follows MOVED and ASK during a resharding, and learns a failover from
//! the cluster itself; the service has no primary of its own to follow.
//!
//! Every call takes the current primary's multiplexed connection (a cheap
//! clone). With Sentinel, a background task asks the sentinels for the
//! primary every `poll`, and at once when a call saw a sign of failover (a
//! refused connection, `READONLY` from a demoted primary). On a new primary it
//! first raises the fencing epochs there, then loads the scripts, then
//! switches: no lock is taken on the new primary before its epochs are
//! above every token the old one issued.
//!
//! Each partition's epoch (`sl:{p0.0}:epoch` and so on) is the floor of its
//! fencing tokens (see lua/raise_epoch.lua). It is raised whenever the
//! dataset may have lost writes: on connecting, on a failover, and before a
//! script is loaded after NOSCRIPT (a Redis whose script cache is empty was
//! restarted or replaced, whatever its address, in every mode). lock.lua
//! reads it, so every replica's next lock is above it, and refuses to lock
//! in a partition that has none (its data is gone). Tokens issued
//! afterwards are above every token issued before, even when the writes
//! that issued them were lost, and with them the per-record counters.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisConnectionInfo, RedisFuture, Value};
use tokio::sync::{Mutex, Notify};

use super::call::{bounded, store_error};
use super::scripts::{self, ScriptSet};
use crate::domain::Error;

/// How the store finds its primary.
#[derive(Clone, Debug)]
pub enum Topology {
    /// One Redis at `url`.
    Standalone {
        /// `redis://host:port/db` or `rediss://...`.
        url: String,
    },
    /// The primary that the sentinels name `master_name`.
    Sentinel {
        /// `redis://host:port` of each sentinel.
        sentinels: Vec<String>,
        /// The monitored master's name.
        master_name: String,
        /// How often the sentinels are asked even without a sign of failover.
        poll: Duration,
        /// ACL user and password of the primary (the sentinels' own come with their URLs).
        username: Option<String>,
        /// See `username`.
        password: Option<String>,
    },
    /// A Redis Cluster, found through any of its nodes.
    Cluster {
        /// `redis://host:port` of some of the cluster's nodes (seeds).
        nodes: Vec<String>,
        /// ACL user of the nodes.
        username: Option<String>,
        /// See `username`.
        password: Option<String>,
    },
}

/// A connection to wherever the store's commands go.
#[derive(Clone)]
pub(super) enum Conn {
    /// One server's multiplexed connection, reconnecting by itself.
    Single(ConnectionManager),
    /// The cluster client: one multiplexed connection per node, routed by slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// How to open a connection.
#[derive(Clone)]
enum Client {
    Single(redis::Client),
    Cluster { nodes: Vec<String>, username: Option<String>, password: Option<String> },
}

impl Client {
    /// Opens a connection whose calls each wait up to `response` for an answer.
    async fn open(&self, timeout: Duration, response: Duration) -> Result<Conn, Error> {
        match self {
            Self::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(response))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(1));
                let conn = bounded(timeout * 4, ConnectionManager::new_with_config(client.clone(), config)).await?;
                Ok(Conn::Single(conn))
            }
            Self::Cluster { nodes, username, password } => {
                let mut builder = ClusterClient::builder(nodes.clone())
                    .connection_timeout(timeout)
                    .response_timeout(response)
                    // MOVED, ASK and TRYAGAIN during a resharding are retried;
                    // the store timeout bounds the whole call.
                    .retries(8)
                    .min_retry_wait(5)
                    .max_retry_wait(100);
                if let Some(username) = username {
                    builder = builder.username(username);
                }
                if let Some(password) = password {
                    builder = builder.password(password);
                }
                let client = builder.build().map_err(|e| Error::invalid("redis_url", e.to_string()))?;
                let conn = bounded(timeout * 4, client.get_async_connection()).await?;
                Ok(Conn::Cluster(conn))
            }
        }
    }

    /// The server's address; "cluster" for a cluster.
    fn addr(&self) -> String {
        match self {
            Self::Single(client) => client.get_connection_info().addr().to_string(),
            Self::Cluster { .. } => "cluster".to_owned(),
        }
    }
}

/// The primary in use.
#[derive(Clone)]
struct Primary {
    conn: Conn,
    client: Client,
    addr: String,
    /// Moves before a switch to a new primary takes effect and before the
    /// scripts are loaded again after NOSCRIPT (see [`Link::era`]).
    era: u64,
    /// The scripts as loaded there, named for its dataset's identity.
    scripts: Arc<ScriptSet>,
}

/// The store's way to its primary.
pub(super) struct Link {
    primary: RwLock<Primary>,
    sentinel: Option<Mutex<SentinelClient>>,
    suspect: Arc<Notify>,
    timeout: Duration,
    /// Every partition's fencing epoch.
    epoch_keys: Vec<String>,
    /// One recovery from NOSCRIPT at a time, so calls that met the same
    /// empty script cache recover from it once.
    recovery: Mutex<()>,
}

impl Link {
    /// Finds and connects to the primary; with Sentinel, starts following it.
    pub(super) async fn connect(
        topology: &Topology,
        timeout: Duration,
        epoch_keys: Vec<String>,
    ) -> Result<Arc<Self>, Error> {
        let (client, sentinel, poll) = match topology {
            Topology::Standalone { url } => {
                let client =
                    redis::Client::open(url.as_str()).map_err(|e| Error::invalid("redis_url", e.to_string()))?;
                (Client::Single(client), None, None)
            }
            Topology::Cluster { nodes, username, password } => {
                let client =
                    Client::Cluster { nodes: nodes.clone(), username: username.clone(), password: password.clone() };
                (client, None, None)
            }
            Topology::Sentinel { sentinels, master_name, poll, username, password } => {
                let mut primary = RedisConnectionInfo::default();
                if let Some(username) = username {
                    primary = primary.set_username(username);
                }
                if let Some(password) = password {
                    primary = primary.set_password(password);
                }
                let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(primary);
                let mut sentinel = SentinelClient::build(
                    sentinels.clone(),
                    master_name.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )
                .map_err(|e| Error::invalid("redis_url", e.to_string()))?;
                let client = bounded(timeout * 4, sentinel.async_get_client()).await?;
                (Client::Single(client), Some(Mutex::new(sentinel)), Some(*poll))
            }
        };
        let following = sentinel.is_some();
        let primary = open(client, timeout, &epoch_keys, following).await?;
        tracing::info!(primary = %primary.addr, "connected to Redis; fencing epochs raised");
        let suspect = Arc::new(Notify::new());
        let link = Arc::new(Self {
            primary: RwLock::new(primary),
            sentinel,
            suspect: Arc::clone(&suspect),
            timeout,
            epoch_keys,
            recovery: Mutex::new(()),
        });
        if let Some(poll) = poll {
            tokio::spawn(follow(Arc::downgrade(&link), suspect, poll));
        }
        Ok(link)
    }

    /// The current primary's multiplexed connection (or the cluster's).
    pub(super) fn conn(&self) -> Conn {
        self.primary.read().expect("link lock poisoned").conn.clone()
    }

    /// What a script call needs, taken at once: the era, the connection,
    /// and the scripts as named for the primary's dataset.
    pub(super) fn for_script(&self) -> (u64, Conn, Arc<ScriptSet>) {
        let primary = self.primary.read().expect("link lock poisoned");
        (primary.era, primary.conn.clone(), Arc::clone(&primary.scripts))
    }

    /// The scripts as named for the current primary's dataset.
    pub(super) fn scripts(&self) -> Arc<ScriptSet> {
        Arc::clone(&self.primary.read().expect("link lock poisoned").scripts)
    }

    /// A connection of its own to the current primary, for commands that
    /// hold it for up to `wait` (blocking reads, WAIT), and that primary's era.
    pub(super) async fn dedicated(&self, wait: Duration) -> Result<(u64, Conn), Error> {
        let (client, era) = {
            let primary = self.primary.read().expect("link lock poisoned");
            (primary.client.clone(), primary.era)
        };
        Ok((era, client.open(self.timeout, wait + self.timeout).await?))
    }

    /// The primary's era: it moves before a switch to a new primary and
    /// before the scripts are loaded again after NOSCRIPT, so no script runs
    /// on a new or restarted primary in the era taken before it. Two calls
    /// that took the same era and saw no NOSCRIPT ran on the same Redis
    /// process. Taken before a call: for [`Link::recover_scripts`] after
    /// its NOSCRIPT, and for the durability wait after its change.
    pub(super) fn era(&self) -> u64 {
        self.primary.read().expect("link lock poisoned").era
    }

    /// The primary answered NOSCRIPT: it was restarted, replaced, promoted
    /// or flushed its scripts, or its dataset is another than the one the
    /// scripts were named for, and it may have lost data. Raises every
    /// partition's epoch, then loads every script named for the dataset as
    /// it is now, unless the era moved since `seen` (taken before the call
    /// that failed): another call recovered, or the primary changed. The
    /// call runs again either way.
    pub(super) async fn recover_scripts(&self, seen: u64) -> Result<(), Error> {
        let _one_at_a_time = self.recovery.lock().await;
        let mut conn = {
            let mut primary = self.primary.write().expect("link lock poisoned");
            if primary.era != seen {
                return Ok(());
            }
            primary.era += 1;
            primary.conn.clone()
        };
        let scripts = raise_and_load(&mut conn, &self.epoch_keys, self.timeout).await?;
        let mut primary = self.primary.write().expect("link lock poisoned");
        if primary.era == seen + 1 {
            if primary.scripts.identity() != scripts.identity() {
                tracing::warn!(
                    before = primary.scripts.identity(),
                    now = scripts.identity(),
                    "Redis's dataset changed identity (restarted, promoted or replaced): fencing epochs raised"
                );
            }
            primary.scripts = scripts;
        }
        tracing::info!("Redis answered NOSCRIPT (restarted, replaced or flushed): fencing epochs raised");
        Ok(())
    }

    /// Raises the fencing epoch of the partition whose epoch key is `key`
    /// (lock.lua found none: the partition's data is gone).
    pub(super) async fn raise_epoch(&self, key: &str) -> Result<(), Error> {
        let mut conn = self.conn();
        raise_epoch_if_missing(&mut conn, key, self.timeout).await
    }

    /// A call failed with `error`: if it looks like a failover, look for the
    /// new primary now instead of at the next poll.
    pub(super) fn observe(&self, error: &redis::RedisError) {
        let failover_sign = matches!(error.code(), Some("READONLY" | "MASTERDOWN" | "LOADING"))
            || error.is_connection_refusal()
            || error.is_connection_dropped()
            || error.is_io_error();
        if self.sentinel.is_some() && failover_sign {
            self.suspect.notify_one();
        }
    }

    /// Asks the sentinels for the primary and switches to it if it moved.
    async fn refresh(&self) -> Result<(), Error> {
        let Some(sentinel) = &self.sentinel else { return Ok(()) };
        let client = {
            let mut sentinel = sentinel.lock().await;
            bounded(self.timeout * 4, sentinel.async_get_client()).await?
        };
        let client = Client::Single(client);
        if client.addr() == self.primary.read().expect("link lock poisoned").addr {
            return Ok(());
        }
        let primary = open(client, self.timeout, &self.epoch_keys, true).await?;
        tracing::warn!(primary = %primary.addr, "Redis primary changed (failover): following it with new fencing epochs");
        crate::metrics::METRICS.failovers.inc();
        let mut current = self.primary.write().expect("link lock poisoned");
        *current = Primary { era: current.era + 1, ..primary };
        Ok(())
    }
}

/// Connects to `client`'s server, raises every partition's fencing epoch
/// there and loads the scripts. When following failovers it waits (briefly)
/// for a replica to hold the new epochs, so the next failover cannot lose
/// them; with none in time they still rose, and we say so.
async fn open(client: Client, timeout: Duration, epoch_keys: &[String], following: bool) -> Result<Primary, Error> {
    let mut conn = client.open(timeout, timeout).await?;
    let scripts = raise_and_load(&mut conn, epoch_keys, timeout).await?;
    if following {
        // The wait stays well inside the connection's response timeout.
        let wait_ms = (timeout.as_millis() / 2).max(1) as u64;
        let acks: u64 = bounded(timeout * 4, redis::cmd("WAIT").arg(1).arg(wait_ms).query_async(&mut conn)).await?;
        if acks == 0 {
            tracing::warn!("no replica acknowledged the new fencing epochs in time");
        }
    }
    let addr = client.addr();
    Ok(Primary { conn, client, addr, era: 0, scripts })
}

/// Reads the dataset's identity, raises every partition's fencing epoch,
/// then loads every script named for that identity: the epochs first, and
/// the scripts only once every epoch rose (a pipeline is not atomic: a
/// refused raise, say for lack of memory, must not leave lock.lua loaded on
/// a Redis whose epochs did not move). Three round trips on one Redis; on a
/// cluster, a call per key and per script. The store timeout bounds it.
async fn raise_and_load(conn: &mut Conn, epoch_keys: &[String], timeout: Duration) -> Result<Arc<ScriptSet>, Error> {
    let steps = async {
        let identity = read_identity(conn).await?;
        let replies = raise_epochs(conn, epoch_keys, false).await.map_err(store_error)?;
        check_raised(epoch_keys, &replies)?;
        load_scripts(conn, &identity).await.map_err(store_error)?;
        Ok(Arc::new(ScriptSet::new(&identity)))
    };
    tokio::time::timeout(timeout, steps).await.map_err(|_| Error::StoreTimeout)?
}

/// The dataset's identity (see [`ScriptSet`]): the replication ids of the
/// primary, or of every primary of a cluster. Empty, with a warning, where
/// INFO is refused (an ACL): then a dataset replaced without losing its
/// script cache goes unnoticed.
async fn read_identity(conn: &mut Conn) -> Result<String, Error> {
    let mut info = redis::cmd("INFO");
    info.arg("replication");
    let reply = match conn {
        Conn::Cluster(cluster) => {
            cluster
                .route_command(info.clone(), RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None)))
                .await
        }
        Conn::Single(_) => conn.req_packed_command(&info).await,
    };
    match reply {
        Ok(value) => {
            let mut texts = Vec::new();
            collect_texts(&value, &mut texts);
            Ok(scripts::dataset_identity(texts.iter().map(String::as_str)))
        }
        // NOPERM from an ACL, ERR from a proxy that does not pass INFO on.
        Err(e) if matches!(e.code(), Some("NOPERM" | "ERR")) => {
            tracing::warn!(error = %e, "INFO replication refused: a Redis replaced without a restart would go unnoticed");
            Ok(String::new())
        }
        Err(e) => Err(store_error(e)),
    }
}

/// Every text in a reply, however nested (a cluster answers per node).
fn collect_texts(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => out.push(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => out.push(text.clone()),
        Value::Array(items) | Value::Set(items) => items.iter().for_each(|item| collect_texts(item, out)),
        Value::Map(pairs) => pairs.iter().for_each(|(_, v)| collect_texts(v, out)),
        _ => {}
    }
}

/// raise_epoch.lua on each of `epoch_keys` (only where it is missing, with
/// `if_missing`): its reply per key. The script is loaded first in the same
/// round trip (on a cluster, on the primaries only, see [`load_scripts`]);
/// a SCRIPT FLUSH in between gives NOSCRIPT, and it starts again.
async fn raise_epochs(
    conn: &mut Conn,
    epoch_keys: &[String],
    if_missing: bool,
) -> redis::RedisResult<Vec<Vec<String>>> {
    loop {
        match raise_epochs_once(conn, epoch_keys, if_missing).await {
            Err(e) if e.code() == Some("NOSCRIPT") => continue,
            result => return result,
        }
    }
}

/// One attempt of [`raise_epochs`].
async fn raise_epochs_once(
    conn: &mut Conn,
    epoch_keys: &[String],
    if_missing: bool,
) -> redis::RedisResult<Vec<Vec<String>>> {
    let mode = if if_missing { "if-missing" } else { "raise" };
    let raise = |key: &String| {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(scripts::RAISE_EPOCH.get_hash()).arg(1).arg(key).arg(mode);
        cmd
    };
    if let Conn::Cluster(cluster) = conn {
        cluster.route_command(script_load(scripts::RAISE_EPOCH.source), primaries()).await?;
        let mut replies = Vec::with_capacity(epoch_keys.len());
        for key in epoch_keys {
            replies.push(redis::from_redis_value(cluster.req_packed_command(&raise(key)).await?)?);
        }
        return Ok(replies);
    }
    let mut pipe = redis::pipe();
    pipe.add_command(script_load(scripts::RAISE_EPOCH.source)).ignore();
    for key in epoch_keys {
        pipe.add_command(raise(key));
    }
    pipe.query_async(conn).await
}

/// Refuses an epoch that could not be raised.
fn check_raised(epoch_keys: &[String], replies: &[Vec<String>]) -> Result<(), Error> {
    for (key, reply) in epoch_keys.iter().zip(replies) {
        match reply.as_slice() {
            [ok, _] if ok == "OK" => {}
            // Tokens above 2^53 would repeat in Lua: refuse rather than fence wrongly.
            [_, epoch] => {
                return Err(Error::invalid(
                    "redis_url",
                    format!("{key} would reach fencing epoch {epoch}, past the last one whose tokens stay exact"),
                ));
            }
            _ => return Err(Error::Internal { detail: format!("raise_epoch.lua answered {reply:?}") }),
        }
    }
    Ok(())
}

/// Loads every script. On a cluster, on the primaries only: Redis does not
/// replicate scripts, so a replica that a failover promotes answers
/// NOSCRIPT to its first call, and the epochs are raised there before its
/// first lock.
async fn load_scripts(conn: &mut Conn, identity: &str) -> redis::RedisResult<()> {
    if let Conn::Cluster(cluster) = conn {
        for (_, script) in scripts::all() {
            cluster.route_command(script_load(&script.source_for(identity)), primaries()).await?;
        }
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (_, script) in scripts::all() {
        pipe.add_command(script_load(&script.source_for(identity))).ignore();
    }
    pipe.query_async(conn).await
}

fn script_load(source: &str) -> Cmd {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(source);
    cmd
}

/// Every primary of a cluster, each to succeed.
fn primaries() -> RoutingInfo {
    RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, Some(ResponsePolicy::AllSucceeded)))
}

/// Creates the fencing epoch `key` if it is missing (lock.lua found none:
/// the partition's data is gone); many callers may find it missing at
/// once, and one raise serves them all.
async fn raise_epoch_if_missing(conn: &mut Conn, key: &str, timeout: Duration) -> Result<(), Error> {
    let keys = [key.to_owned()];
    let replies = bounded(timeout, raise_epochs(conn, &keys, true)).await?;
    check_raised(&keys, &replies)
}

/// Follows the primary until the link is dropped.
async fn follow(link: Weak<Link>, suspect: Arc<Notify>, poll: Duration) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = suspect.notified() => {}
        }
        let Some(link) = link.upgrade() else { return };
        if let Err(e) = link.refresh().await {
            tracing::warn!(error = %e, "cannot ask the sentinels for the Redis primary");
            // Sentinels that are electing a new primary answer with the old
            // one or not at all: try again soon, not in a tight loop.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
