//! The gRPC adapter: validates each request at the edge into domain commands,
//! runs it on the store, and converts the result (or the error, through the
//! table in `grpc/status.rs`) back to protobuf. It decides nothing the store must
//! decide atomically.
//!
//! - `inventory`: InventoryService, the order services' and warehouses' API.
//! - [`admin`]: AdminService, the operators' API.
//! - `validate`: requests into domain values, failing with the field named.
//! - `convert`: domain values into protobuf messages, and the time types.
//! - `status`: the one table from domain errors to gRPC statuses.
//! - `watch`: WatchAvailability's snapshot, catch-up and live follow.
//! - `holder`: WatchHolder, what a holder must act on, on the same follow.

pub mod admin;
pub(crate) mod convert;
mod holder;
mod inventory;
mod status;
pub(crate) mod validate;
mod watch;

pub use self::admin::AdminApi;
pub use self::inventory::InventoryApi;
pub use self::status::ERROR_DOMAIN;
pub use self::validate::Limits;
