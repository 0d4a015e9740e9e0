//! The domain: validated identifiers and quantities, the commands and
//! results of each operation, the one error type, and the [`StockStore`]
//! port that a storage adapter implements.
//!
//! Nothing here knows about protobuf or Redis. Values are validated when they
//! are built, so a command that exists is a command the store may run.

mod admin;
mod error;
mod events;
mod feeds;
mod health;
mod ids;
mod invariants;
mod quantity;
mod store;

pub use admin::{
    AdminStore, Approval, AuditEvent, AuditFilter, DeadLetter, ForceUnlockItem, ForceUnlockState, ForceUnlockView,
    IngestStats, LockStats,
};
pub use error::{Error, LockEnd, Shortage, reason};
pub use events::{Coverage, EventHub, EventId, LifecycleEvent, StreamPosition, WatchPosition};
pub use feeds::{
    BinlogCheckpoint, BinlogState, BinlogStatus, EventRetention, EventStream, IngestConsumer, IngestEntry, IngestStream,
};
pub use health::{LockHealthCell, SUCCESS_TARGET, breaking_rule, is_service_failure};
pub use ids::{
    BatchId, Holder, LockId, MAX_ID_LEN, MAX_LOCK_ID_LEN, OrderId, RecordKey, RequestId, SessionId, Sku, WarehouseId,
    new_nonce, session_nonce,
};
pub use invariants::{RecordCheck, Repair, Violation};
pub use quantity::{MAX_SCALED, MAX_UNIT_SCALE, Quantity, ScaledStock, Signed, UnitScale, format_scaled};
pub use store::*;
