//! stocklock: inventory locks on Redis, over gRPC.
//!
//! An order service locks stock for an order while it is paid, keeps the
//! lock alive with heartbeats, and then commits it (the stock is deducted)
//! or releases it; a lock that stops being renewed expires by itself.
//!
//! The modules, from the wire inwards:
//! - [`server`]: wiring and lifecycle: Redis, health, reflection, workers, drain.
//! - [`edge`]: the tower layers every call passes: telemetry, auth, admission.
//! - [`grpc`]: the tonic adapters (InventoryService, AdminService): validate
//!   requests into domain commands and map every domain error to one status
//!   code and reason.
//! - [`domain`]: identifiers, quantities, commands, results, errors, and the
//!   ports ([`domain::StockStore`] and the others). Knows neither protobuf nor Redis.
//! - [`store`]: the Redis adapter: keys, Lua scripts (in `lua/`), and the
//!   decoding of their replies.
//! - [`http`]: availability in JSON for the transfer system, probes, OpenAPI.
//! - [`metrics`]: the Prometheus metrics, served at `/metrics`.
//! - [`workers`]: the background loops, written against the domain ports:
//!   sweeper, auditor, ingestion, event tailer, lock-health flush, gauges, health.
//! - [`embedded_redis`]: a private redis-server child for trying it out and for tests.
//! - [`cli`]: `stocklock admin`, the operator's command line, and its heatmap.
//! - [`config`]: the one typed configuration (flags and `STOCKLOCK_*` variables).
//! - [`pb`]: the generated protobuf types of `proto/stocklock/v1/stocklock.proto`.

#![forbid(unsafe_code)]

pub mod cdc;
pub mod cli;
pub mod config;
pub mod domain;
pub mod edge;
pub mod embedded_redis;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod server;
pub mod store;
pub mod workers;

/// Generated protobuf and gRPC code of the `stocklock.v1` package.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("stocklock.v1");
    include!(concat!(env!("OUT_DIR"), "/stocklock.v1.serde.rs"));
    include!(concat!(env!("OUT_DIR"), "/stocklock.v1.schema.rs"));

    /// The encoded descriptors, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("stocklock_descriptor");
}
