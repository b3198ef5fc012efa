//! PostgreSQL adapters: the store and table queue (many workers share one database) and
//! PostgreSQL as a source.

pub mod pool;
pub mod source;
pub mod store;
mod types;
