//! stocklock: inventory locks on Redis, over gRPC.
//!
//! An order service locks stock for an order while it is paid, keeps the
//! lock alive with heartbeats, and then commits it (the stock is deducted)
//! or releases it; a lock that stops being renewed expires by itself.
//!
//! The modules, from the wire inwards:
//! - [`server`]: wiring and lifecycle: Redis, health, reflection, sweeper, drain.
//! - [`auth`]: bearer tokens, roles, and query rate limits, as a tower layer.
//! - [`grpc`]: the tonic adapters (InventoryService, AdminService): validate
//!   requests into domain commands and map every domain error to one status
//!   code and reason.
//! - [`domain`]: identifiers, quantities, commands, results, errors, and the
//!   [`domain::StockStore`] port. Knows neither protobuf nor Redis.
//! - [`store`]: the Redis adapter: keys, Lua scripts (in `lua/`), and the
//!   decoding of their replies.
//! - [`http`]: availability in JSON for the transfer system, probes, OpenAPI.
//! - [`telemetry`]: logs, OpenTelemetry traces, and RPC metrics as a tower layer.
//! - [`metrics`]: the Prometheus metrics, served at `/metrics`.
//! - [`sweeper`]: returns the stock of expired locks, safely from many replicas.
//! - [`embedded_redis`]: a private redis-server child for trying it out and for tests.
//! - [`heatmap`]: the lock-health heatmap, for a terminal and as SVG.
//! - [`cli`]: `stocklock admin`, the operator's command line.
//! - [`config`]: the one typed configuration (flags and `STOCKLOCK_*` variables).
//! - [`pb`]: the generated protobuf types of `proto/stocklock/v1/stocklock.proto`.

#![forbid(unsafe_code)]

pub mod admission;
pub mod auditor;
pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod embedded_redis;
pub mod grpc;
pub mod heatmap;
pub mod http;
mod layer;
pub mod metrics;
pub mod server;
pub mod store;
pub mod sweeper;
pub mod telemetry;

/// Generated protobuf and gRPC code of the `stocklock.v1` package.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("stocklock.v1");

    /// The encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("stocklock_descriptor");
}
