//! Signals ETL common crate: the domain, the ports, every adapter, and the hosts.
//!
//! # Layout
//! - [`domain`]: pure rules — config, job envelope, canonical encoding and row hash, key
//!   encoding, diff, batching, retry and scheduling. No I/O.
//! - [`ports`]: the narrow traits stages use (`SnapshotSource`, the store traits, `JobQueue`,
//!   `Pusher`); [`errors`] classifies every failure retryable or fatal.
//! - [`stages`]: the five handlers, `job → next jobs`, each idempotent.
//! - [`hosts`]: how handlers are invoked (single-process runner, event replay), with retry and
//!   dead-letter rules in one place.
//! - Adapters: [`sqlite`] (store, table queue, source), [`sink`] (HTTP, JSONL), [`receiver`]
//!   (the reference implementation of the push protocol), wired by [`connectors`].

#[cfg(feature = "azure-queue")]
pub mod azure_queue;
pub mod backends;
pub mod connectors;
pub mod crash;
pub mod ctx;
pub mod domain;
pub mod errors;
pub mod hosts;
pub mod limits;
pub mod metrics;
#[cfg(feature = "mssql")]
pub mod mssql;
pub mod ops;
pub mod ports;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod privacy;
pub mod protocol;
#[cfg(feature = "receiver")]
pub mod receiver;
pub mod secrets;
pub mod sink;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "sqs")]
pub mod sqs;
pub mod stages;
pub mod telemetry;
pub mod verify;
