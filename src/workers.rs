//! The background loops every replica runs beside the services, written
//! against the domain ports so the store only reads and writes:
//! - [`sweeper`]: returns the stock of expired locks, safely from many replicas.
//! - [`auditor`]: checks every record against its locks, one replica at a time.
//! - [`gauges`]: the gauges that need a look at the store, and the lock-health rule.
//! - [`health`]: the gRPC health status and HTTP readiness follow the store.
//! - [`ingest`]: applies the warehouses' stock changes from the ingestion stream.
//! - [`events`]: tails the lifecycle event streams into the watchers' hub.
//! - [`lock_health`]: writes the counted lock outcomes every second.

pub mod auditor;
pub mod events;
pub mod gauges;
pub mod health;
pub mod ingest;
pub mod lock_health;
pub mod sweeper;
