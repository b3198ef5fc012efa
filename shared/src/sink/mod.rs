//! Sinks: the HTTP Data Push API client and a JSONL file for dry runs.

#[cfg(feature = "http-sink")]
pub mod http;
pub mod jsonl;
pub mod limiter;
