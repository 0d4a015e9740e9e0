//! Test harness: every test gets its own redis-server (on a free port) and
//! its own stocklock, started through the same `server::run` as the binary,
//! on port 0. Dropping the [`TestService`] stops both. The files beside
//! this one are the harness split by concern.
//!
//! With `STOCKLOCK_TEST_REDIS=cluster`, [`start`] gives each test its own
//! three-primary Redis Cluster instead, and the service runs in cluster
//! mode over 16 partitions: the same tests, across shards.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::time::Duration;

use clap::Parser;
use stocklock::config::{Cli, Command, ServeConfig};
use stocklock::embedded_redis::EmbeddedRedis;
use stocklock::pb;
use stocklock::pb::inventory_service_client::InventoryServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

mod admin;
mod auth;
mod cluster;
mod faults;
mod mariadb;
mod metrics;
mod openapi;
mod plain_http;
mod raw;
mod requests;
mod service;
mod wait;

// Each test binary uses a part of the harness.
#[allow(unused_imports)]
pub use admin::*;
#[allow(unused_imports)]
pub use auth::*;
#[allow(unused_imports)]
pub use cluster::*;
#[allow(unused_imports)]
pub use faults::*;
#[allow(unused_imports)]
pub use mariadb::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use openapi::*;
#[allow(unused_imports)]
pub use plain_http::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use requests::*;
#[allow(unused_imports)]
pub use service::*;
#[allow(unused_imports)]
pub use wait::*;
