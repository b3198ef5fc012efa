//! Pure domain rules: no I/O, no async. Everything here is tested next to the code.

pub mod batching;
pub mod buffers;
pub mod checksum;
pub mod config;
pub mod diff;
pub mod encoding;
pub mod ident;
pub mod job;
pub mod json;
mod json_time;
pub mod key;
pub mod packing;
pub mod rate;
pub mod retry;
pub mod sampling;
pub mod schedule;
pub mod schema;
pub mod secret_ref;
pub mod segment;
pub mod url;
pub mod value;
