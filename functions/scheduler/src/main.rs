//! The scheduler function: a thin binary around the shared scheduler handler.

fn main() -> std::process::ExitCode {
    signals_shared::hosts::function::main(signals_shared::domain::job::Stage::Scheduler)
}
