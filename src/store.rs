//! Storage adapters for the [`crate::domain::StockStore`] port. There is one:
//! Redis, where every mutation is one Lua script.

pub mod redis;
