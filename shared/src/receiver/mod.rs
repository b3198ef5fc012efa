//! The reference receiver of the push protocol (`signals receiver`): applies batches to
//! per-dataset SQLite tables, treats a repeated `Idempotency-Key` as already applied, and counts
//! every application of each (run, sequence number) so tests can prove exactly-once effect.

pub mod body;
pub mod db;
pub mod faults;
pub mod server;
