//! The push function: a thin binary around the shared push handler.

fn main() -> std::process::ExitCode {
    signals_shared::hosts::function::main(signals_shared::domain::job::Stage::Push)
}
