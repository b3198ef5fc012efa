//! The `signals` CLI, built inside the test package so tests can run it as a subprocess.

fn main() -> std::process::ExitCode {
    signals::cli::main()
}
