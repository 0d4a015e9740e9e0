//! Stock changes straight from the warehouse's MySQL or MariaDB: a binlog
//! follower that registers as a replica of the server and turns the row
//! changes of one table into stock writes, the way the ingestion stream's
//! entries are ([`crate::workers::ingest`]).
//!
//! - **Order.** The binlog is the order of the server's commits, and the
//!   follower applies rows in it, one at a time.
//! - **Exactly once.** In snapshot mode a row's source_version is its
//!   position in the binlog (or the table's version column), so a row seen
//!   again is stale and changes nothing; in movement mode a row's id is its
//!   idempotency key. Rows are applied as they come and the position is
//!   saved in Redis at transaction boundaries after them, so a follower that
//!   dies anywhere (kill -9 in the middle of a transaction's rows included)
//!   resumes at the last boundary and replays at most one transaction,
//!   which changes nothing twice.
//! - **One follower.** Every replica runs the loop; the holder of a lease
//!   in Redis follows, and the checkpoint is saved only under the lease, so
//!   a replica that lost it while paused cannot move it.
//! - **Faults.** Rows that cannot be applied are dead-lettered with their
//!   position and reason and the follower goes on; a connection that drops
//!   or falls silent (no event or heartbeat for a few seconds), a restarted
//!   server, or a Redis error restarts the follower at the checkpoint; a
//!   setup that cannot work (a table or column missing) is reported and
//!   retried slowly, never skipped.

mod follower;
pub mod mapping;
pub mod position;
pub mod source;
mod transactions;

use std::sync::Arc;
use std::time::Duration;

use mysql_async::Opts;
use tokio::sync::watch;

pub use self::mapping::{Columns, Mapping, Mode, OnDelete};
use crate::domain::BinlogState;

/// How the follower is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How to reach the server (with the database of the table).
    pub opts: Opts,
    /// The table and what its columns mean.
    pub mapping: Mapping,
    /// The follower's name: its lease, checkpoint and status in Redis.
    pub name: String,
    /// The server id it registers with, unique among the server's replicas.
    pub server_id: u32,
    /// A leader that stops renewing its lease this long is replaced.
    pub lease: Duration,
    /// How often the server sends a heartbeat on an idle stream; a stream
    /// silent for five of them is taken for dead and reopened.
    pub heartbeat: Duration,
    /// How often the leader measures its lag and publishes its status.
    pub status_every: Duration,
}

/// Checks the server and the table before the service starts. A problem of
/// the setup (binlog settings, a table or column that does not exist) is
/// an error, with what to change; a server that cannot be reached is not
/// (the follower retries), only a warning.
pub async fn check_at_start(settings: &Settings) -> Result<(), String> {
    let checked = async {
        let mut conn = source::connect(&settings.opts).await?;
        let checked = source::check(&mut conn, &settings.mapping).await;
        let _ = tokio::time::timeout(source::QUERY_TIMEOUT, conn.disconnect()).await;
        checked
    };
    // Each step is bounded; so is the whole, so that a server that answers
    // slowly delays the start by this much at most.
    let checked = tokio::time::timeout(source::QUERY_TIMEOUT * 2, checked)
        .await
        .unwrap_or_else(|_| Err(source::Problem::Connection("no answer in time".into())));
    match checked {
        Ok(_) => Ok(()),
        Err(source::Problem::Setup(problem)) => {
            Err(format!("binlog follower of {}: {problem}", settings.mapping.qualified()))
        }
        Err(problem) => {
            tracing::warn!(error = %problem, "binlog follower: the database cannot be checked now; the follower retries");
            Ok(())
        }
    }
}

/// The default server id of follower `name`: stable (FNV-1a of the name),
/// and in the upper half of the id space, away from the small ids servers
/// are usually given.
pub fn server_id_of(name: &str) -> u32 {
    let hash = name.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    0x8000_0000 | (hash & 0x7fff_ffff)
}

/// Follows the binlog while this replica holds the lease, until `stop`.
pub async fn run<S: BinlogState>(store: Arc<S>, settings: Settings, stop: watch::Receiver<bool>) {
    follower::run(store, settings, stop).await;
}
