//! SQLite adapters: the embedded default store and table queue, and SQLite as a source.

pub mod db;
pub mod source;
pub mod store;
pub mod types;
