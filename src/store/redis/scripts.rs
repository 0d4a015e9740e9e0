//! The Lua scripts, compiled into the binary with `lua/lib.lua` in front of
//! each. The store calls them with EVALSHA; on NOSCRIPT (a restarted,
//! replaced or flushed Redis) the link raises the fencing epochs, loads
//! every script and the call runs again (see `link`).

use std::ops::Deref;
use std::sync::OnceLock;

use redis::Script;

/// One script: its source (for SCRIPT LOAD in a pipeline) and, built from
/// it on first use, the script redis-rs calls (which holds its SHA1).
pub(super) struct Lua {
    pub(super) source: &'static str,
    script: OnceLock<Script>,
}

impl Lua {
    const fn new(source: &'static str) -> Self {
        Self { source, script: OnceLock::new() }
    }

    /// The source as loaded on a dataset of `identity` (see [`ScriptSet`]).
    pub(super) fn source_for(&self, identity: &str) -> String {
        if identity.is_empty() { self.source.to_owned() } else { format!("{}\n-- dataset {identity}\n", self.source) }
    }
}

impl Deref for Lua {
    type Target = Script;

    fn deref(&self) -> &Script {
        self.script.get_or_init(|| Script::new(self.source))
    }
}

/// The scripts as this service calls them on one dataset: each source with
/// the dataset's identity (its primaries' replication ids) appended as a
/// comment, so that its SHA1 names that identity. A Redis whose dataset
/// changed identity (restarted, promoted, replaced behind the same address)
/// without losing its script cache then answers NOSCRIPT all the same, and
/// the fencing epochs are raised before its next lock (see `link`). With an
/// empty identity (a Redis that refuses INFO) the sources are unchanged.
pub(super) struct ScriptSet {
    identity: String,
    shas: Vec<String>,
}

impl ScriptSet {
    /// The scripts for a dataset of this identity.
    pub(super) fn new(identity: &str) -> Self {
        let shas = all().iter().map(|(_, lua)| Script::new(&lua.source_for(identity)).get_hash().to_owned()).collect();
        Self { identity: identity.to_owned(), shas }
    }

    /// The identity the scripts are named for.
    pub(super) fn identity(&self) -> &str {
        &self.identity
    }

    /// The SHA1 `script` is called by on this dataset.
    pub(super) fn sha(&self, script: &Lua) -> &str {
        let index = all().iter().position(|(_, s)| std::ptr::eq(*s, script)).expect("a script of scripts::all()");
        &self.shas[index]
    }
}

/// A dataset identity from the `INFO replication` texts of its primaries:
/// their `master_replid`s, sorted. Redis gives a primary a new one when it
/// starts without its data, when it is promoted, and when it takes its
/// data from another primary.
pub fn dataset_identity<'a>(infos: impl IntoIterator<Item = &'a str>) -> String {
    let mut ids: Vec<&str> = infos
        .into_iter()
        .filter_map(|info| info.lines().find_map(|line| line.strip_prefix("master_replid:")))
        .map(str::trim)
        .collect();
    ids.sort_unstable();
    ids.join(",")
}

macro_rules! script {
    ($file:literal) => {
        script!("", $file)
    };
    ($shebang:literal, $file:literal) => {
        Lua::new(concat!(
            $shebang,
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/lua/lib.lua")),
            "\n",
            include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/lua/", $file)),
        ))
    };
}

/// Lock and BatchLock.
pub(super) static LOCK: Lua = script!("lock.lua");
/// Renew.
pub(super) static RENEW: Lua = script!("renew.lua");
/// Release.
pub(super) static RELEASE: Lua = script!("release.lua");
/// Commit.
pub(super) static COMMIT: Lua = script!("commit.lua");
/// TransferLock.
pub(super) static TRANSFER_LOCK: Lua = script!("transfer_lock.lua");
/// SetStock.
pub(super) static SET_STOCK: Lua = script!("set_stock.lua");
/// AdjustStock.
pub(super) static ADJUST_STOCK: Lua = script!("adjust_stock.lua");
/// GetAvailability and friends. The flag line (Redis 7) marks it read-only,
/// so Redis runs it even while it refuses writes for lack of memory.
pub(super) static GET_STOCK: Lua = script!("#!lua flags=no-writes\n", "get_stock.lua");
/// One lock, for GetLock.
pub(super) static READ_LOCK: Lua = script!("#!lua flags=no-writes\n", "read_lock.lua");
/// The sweeper's step for one record.
pub(super) static EXPIRE_LOCKS: Lua = script!("expire_locks.lua");
/// A partition's fencing epoch raised (see `link`).
pub(super) static RAISE_EPOCH: Lua = script!("raise_epoch.lua");
/// The ingestion reader's lease.
pub(super) static LEAD_INGEST: Lua = script!("lead_ingest.lua");
/// The binlog follower's checkpoint, saved by the lease holder only.
pub(super) static SAVE_CHECKPOINT: Lua = script!("save_checkpoint.lua");
/// A hold given up by its holder only.
pub(super) static DROP_HOLD: Lua = script!("drop_hold.lua");
/// The sweeper's look-up of records with expired locks.
pub(super) static DUE_RECORDS: Lua = script!("#!lua flags=no-writes\n", "due_records.lua");

/// OpenSession.
pub(super) static OPEN_SESSION: Lua = script!("open_session.lua");
/// KeepAlive.
pub(super) static KEEP_ALIVE: Lua = script!("keep_alive.lua");
/// A Lock's check of its session.
pub(super) static JOIN_SESSION: Lua = script!("join_session.lua");
/// The first step of a session's end.
pub(super) static END_SESSION: Lua = script!("end_session.lua");
/// A session's locks in one partition ended, a bounded number a call.
pub(super) static END_SESSION_PART: Lua = script!("end_session_part.lua");

/// RequestForceUnlock.
pub(super) static REQUEST_FORCE_UNLOCK: Lua = script!("request_force_unlock.lua");
/// ApproveForceUnlock and the single-step policy.
pub(super) static FORCE_RELEASE: Lua = script!("force_release.lua");
/// RejectForceUnlock.
pub(super) static REJECT_FORCE_UNLOCK: Lua = script!("reject_force_unlock.lua");

/// The invariant auditor's look at one record.
pub(super) static CHECK_RECORD: Lua = script!("#!lua flags=no-writes\n", "check_record.lua");
/// RepairRecord's slices: the expiry index mended and the locks summed.
pub(super) static REPAIR_SLICE: Lua = script!("repair_slice.lua");
/// RepairRecord's last step: the figure set from the sum.
pub(super) static REPAIR_RECORD: Lua = script!("repair_record.lua");

/// Every script by its file name, for loading at start-up and for naming
/// an EVALSHA in Redis's slow log.
pub(super) fn all() -> [(&'static str, &'static Lua); 26] {
    [
        ("raise_epoch.lua", &RAISE_EPOCH),
        ("read_lock.lua", &READ_LOCK),
        ("check_record.lua", &CHECK_RECORD),
        ("repair_slice.lua", &REPAIR_SLICE),
        ("repair_record.lua", &REPAIR_RECORD),
        ("request_force_unlock.lua", &REQUEST_FORCE_UNLOCK),
        ("force_release.lua", &FORCE_RELEASE),
        ("reject_force_unlock.lua", &REJECT_FORCE_UNLOCK),
        ("lock.lua", &LOCK),
        ("renew.lua", &RENEW),
        ("release.lua", &RELEASE),
        ("commit.lua", &COMMIT),
        ("transfer_lock.lua", &TRANSFER_LOCK),
        ("set_stock.lua", &SET_STOCK),
        ("adjust_stock.lua", &ADJUST_STOCK),
        ("get_stock.lua", &GET_STOCK),
        ("expire_locks.lua", &EXPIRE_LOCKS),
        ("due_records.lua", &DUE_RECORDS),
        ("lead_ingest.lua", &LEAD_INGEST),
        ("save_checkpoint.lua", &SAVE_CHECKPOINT),
        ("drop_hold.lua", &DROP_HOLD),
        ("open_session.lua", &OPEN_SESSION),
        ("keep_alive.lua", &KEEP_ALIVE),
        ("join_session.lua", &JOIN_SESSION),
        ("end_session.lua", &END_SESSION),
        ("end_session_part.lua", &END_SESSION_PART),
    ]
}
