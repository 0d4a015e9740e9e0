//! The background loops every replica runs beside the services, written
//! against the domain ports so the store only reads and writes:
//! - [`sweeper`]: returns the stock of expired locks, safely from many replicas.
//! - [`auditor`]: checks every record against its locks, one replica at a time.

pub mod auditor;
pub mod sweeper;
