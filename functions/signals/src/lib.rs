//! The `signals` operator CLI and single-process mode, as a library so tests run the exact code
//! the binary runs.
//!
//! # Layout
//! - [`cli`]: argument parsing and dispatch.
//! - `app`: opening the store and building the handler context once.
//! - `commands`: one module per subcommand group.
//! - `demo`: `signals demo`, the whole product on embedded defaults.
//! - `ui`: `signals ui`, the operations page.

mod app;
pub mod cli;
mod commands;
mod demo;
mod ui;
