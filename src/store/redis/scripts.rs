//! The Lua scripts, compiled into the binary with `lua/lib.lua` in front of
//! each. redis-rs calls them with EVALSHA and, on a NOSCRIPT error (matched by
//! its error kind, e.g. after a Redis restart), loads the script and retries.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        script!("", $file)
    };
    ($shebang:literal, $file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                $shebang,
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/lua/lib.lua")),
                "\n",
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/lua/", $file)),
            ))
        })
    };
}

/// Lock and BatchLock.
pub(super) static LOCK: LazyLock<Script> = script!("lock.lua");
/// Renew.
pub(super) static RENEW: LazyLock<Script> = script!("renew.lua");
/// Release.
pub(super) static RELEASE: LazyLock<Script> = script!("release.lua");
/// Commit.
pub(super) static COMMIT: LazyLock<Script> = script!("commit.lua");
/// SetStock.
pub(super) static SET_STOCK: LazyLock<Script> = script!("set_stock.lua");
/// AdjustStock.
pub(super) static ADJUST_STOCK: LazyLock<Script> = script!("adjust_stock.lua");
/// GetAvailability and friends. The flag line (Redis 7) marks it read-only,
/// so Redis runs it even while it refuses writes for lack of memory.
pub(super) static GET_STOCK: LazyLock<Script> = script!("#!lua flags=no-writes\n", "get_stock.lua");
/// One lock, for GetLock.
pub(super) static READ_LOCK: LazyLock<Script> = script!("#!lua flags=no-writes\n", "read_lock.lua");
/// The sweeper's step for one record.
pub(super) static EXPIRE_LOCKS: LazyLock<Script> = script!("expire_locks.lua");
/// The sweeper's look-up of records with expired locks.
pub(super) static DUE_RECORDS: LazyLock<Script> = script!("#!lua flags=no-writes\n", "due_records.lua");

/// RequestForceUnlock.
pub(super) static REQUEST_FORCE_UNLOCK: LazyLock<Script> = script!("request_force_unlock.lua");
/// ApproveForceUnlock and the single-step policy.
pub(super) static FORCE_RELEASE: LazyLock<Script> = script!("force_release.lua");
/// RejectForceUnlock.
pub(super) static REJECT_FORCE_UNLOCK: LazyLock<Script> = script!("reject_force_unlock.lua");

/// The invariant auditor's look at one record.
pub(super) static CHECK_RECORD: LazyLock<Script> = script!("#!lua flags=no-writes\n", "check_record.lua");
/// RepairRecord's slices: the expiry index mended and the locks summed.
pub(super) static REPAIR_SLICE: LazyLock<Script> = script!("repair_slice.lua");
/// RepairRecord's last step: the figure set from the sum.
pub(super) static REPAIR_RECORD: LazyLock<Script> = script!("repair_record.lua");

/// Every script by its file name, for loading at start-up and for naming
/// an EVALSHA in Redis's slow log.
pub(super) fn all() -> [(&'static str, &'static Script); 16] {
    [
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
        ("set_stock.lua", &SET_STOCK),
        ("adjust_stock.lua", &ADJUST_STOCK),
        ("get_stock.lua", &GET_STOCK),
        ("expire_locks.lua", &EXPIRE_LOCKS),
        ("due_records.lua", &DUE_RECORDS),
    ]
}
