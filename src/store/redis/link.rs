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
//! first bumps the fencing epoch there, then loads the scripts, then switches:
//! no write reaches the new primary before its epoch is higher than any the
//! old one had issued tokens under.
//!
//! The epoch (`<prefix>:epoch`) is the high part of every fencing token
//! (see lock.lua): tokens issued after a failover are above every token
//! issued before it, even when asynchronous replication lost the last
//! writes of the old primary and with them the per-record counters.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Cmd, Pipeline, RedisConnectionInfo, RedisFuture, Value};
use tokio::sync::{Mutex, Notify};

use super::call::bounded;
use super::scripts;
use crate::domain::Error;

/// Tokens of one epoch occupy the low 32 bits; epochs the 21 above (2^53 in
/// all, what a Lua number holds exactly). Under Sentinel every start of a
/// replica bumps the epoch, not only a failover, so epochs need the room:
/// 2 million of them. A lock takes the next token of its lock shard, 8.5
/// tokens on from the record's last one on average (see
/// `keys::RecordKeys`), so one epoch holds some 500 million locks of one
/// record before its tokens pass the next epoch's floor.
pub(super) const EPOCH_SHIFT: u32 = 32;

/// Epochs past this would put the token floor beyond what Lua holds exactly.
const MAX_EPOCH: u64 = (1 << (53 - EPOCH_SHIFT)) - 2;

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
    /// `epoch << EPOCH_SHIFT`: the lowest token the scripts may issue.
    token_floor: u64,
}

/// The store's way to its primary.
pub(super) struct Link {
    primary: RwLock<Primary>,
    sentinel: Option<Mutex<SentinelClient>>,
    suspect: Arc<Notify>,
    timeout: Duration,
    epoch_key: String,
}

impl Link {
    /// Finds and connects to the primary; with Sentinel, starts following it.
    pub(super) async fn connect(topology: &Topology, timeout: Duration, epoch_key: String) -> Result<Arc<Self>, Error> {
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
        let primary = open(client, timeout, &epoch_key, following).await?;
        tracing::info!(primary = %primary.addr, epoch = primary.token_floor >> EPOCH_SHIFT, "connected to Redis");
        let suspect = Arc::new(Notify::new());
        let link = Arc::new(Self {
            primary: RwLock::new(primary),
            sentinel,
            suspect: Arc::clone(&suspect),
            timeout,
            epoch_key,
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

    /// A connection of its own to the current primary, for commands that
    /// hold it for up to `wait` (blocking reads, WAIT), and that primary's address.
    pub(super) async fn dedicated(&self, wait: Duration) -> Result<(String, Conn), Error> {
        let (client, addr) = {
            let primary = self.primary.read().expect("link lock poisoned");
            (primary.client.clone(), primary.addr.clone())
        };
        Ok((addr, client.open(self.timeout, wait + self.timeout).await?))
    }

    /// True while `addr` is the primary in use.
    pub(super) fn is_primary(&self, addr: &str) -> bool {
        self.primary.read().expect("link lock poisoned").addr == addr
    }

    /// The lowest fencing token the primary in use may issue.
    pub(super) fn token_floor(&self) -> u64 {
        self.primary.read().expect("link lock poisoned").token_floor
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
        let primary = open(client, self.timeout, &self.epoch_key, true).await?;
        tracing::warn!(
            primary = %primary.addr,
            epoch = primary.token_floor >> EPOCH_SHIFT,
            "Redis primary changed (failover): following it with a new fencing epoch"
        );
        crate::metrics::METRICS.failovers.inc();
        *self.primary.write().expect("link lock poisoned") = primary;
        Ok(())
    }
}

/// Connects to `client`'s server, loads the scripts and reads (or, when
/// following failovers, bumps) the fencing epoch there. A cluster has no
/// epoch of the service's: its tokens start at 0.
async fn open(client: Client, timeout: Duration, epoch_key: &str, bump_epoch: bool) -> Result<Primary, Error> {
    let mut conn = client.open(timeout, timeout).await?;
    let epoch: u64 = if matches!(client, Client::Cluster { .. }) {
        0
    } else if bump_epoch {
        // Wait for a replica to hold the new epoch, so the next failover cannot
        // lose it; with none in time the epoch still rises, and we say so.
        // The wait stays well inside the connection's response timeout.
        let wait_ms = (timeout.as_millis() / 2).max(1) as u64;
        let mut bump = redis::pipe();
        bump.cmd("INCR").arg(epoch_key).cmd("WAIT").arg(1).arg(wait_ms);
        let (epoch, acks): (u64, u64) = bounded(timeout * 4, bump.query_async(&mut conn)).await?;
        if acks == 0 {
            tracing::warn!(epoch, "no replica acknowledged the new fencing epoch in time");
        }
        epoch
    } else {
        let epoch: Option<u64> = bounded(timeout, redis::cmd("GET").arg(epoch_key).query_async(&mut conn)).await?;
        epoch.unwrap_or(0)
    };
    // On a cluster, SCRIPT LOAD goes to every node.
    for (_, script) in scripts::all() {
        bounded(timeout, script.prepare_invoke().load_async(&mut conn)).await?;
    }
    if epoch > MAX_EPOCH {
        // Tokens above 2^53 would repeat in Lua: refuse rather than fence wrongly.
        return Err(Error::invalid(
            "redis_url",
            format!("holds fencing epoch {epoch}, past the last one ({MAX_EPOCH}); tokens would no longer be exact"),
        ));
    }
    let addr = client.addr();
    Ok(Primary { conn, client, addr, token_floor: epoch << EPOCH_SHIFT })
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
