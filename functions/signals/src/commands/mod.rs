//! One module per subcommand group.

pub mod config;
pub mod dlq;
pub mod ops;
pub mod receiver;
pub mod replay;
pub mod run;
pub mod status;
pub mod ui;
pub mod verify;
