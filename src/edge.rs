//! The tower layers every call passes before it reaches a service, outermost
//! first: [`telemetry`] (spans, RPC metrics, logs), [`auth`] (bearer tokens,
//! roles, query rate limits) and [`admission`] (a concurrency limit with a
//! short bounded queue, and calls whose deadline would pass before they
//! start refused at once).

pub mod admission;
pub mod auth;
mod layer;
pub mod telemetry;
