//! `signals`: the operator CLI and single-process mode.

fn main() -> std::process::ExitCode {
    signals::cli::main()
}
