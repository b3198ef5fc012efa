//! The batch function: a thin binary around the shared batch handler.

fn main() -> std::process::ExitCode {
    signals_shared::hosts::function::main(signals_shared::domain::job::Stage::Batch)
}
