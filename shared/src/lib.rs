//! Signals ETL common crate: the domain, the ports, every adapter, and the hosts.
//!
//! # Layout
//! - [`domain`]: pure rules — config, job envelope, canonical encoding and row hash, key
//!   encoding, diff, batching, retry and scheduling.
pub mod domain;
