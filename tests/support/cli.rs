//! Running the operator CLI against a harness's store.

use super::Harness;

/// Runs a CLI binary with the harness's store; returns (status, stdout + stderr).
pub fn run_cli(bin: &str, h: &Harness, args: &[&str], env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let out = std::process::Command::new(bin)
        .arg("--store")
        .arg(&h.store_spec)
        .arg("--store-schema")
        .arg(&h.store_schema)
        .args(args)
        .envs(env.iter().copied())
        .env("SIGNALS_LOG_FORMAT", "json")
        .output()
        .expect("run the signals binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// Writes a config file into the harness directory and returns its path as a string.
pub fn write_config(h: &Harness, toml: &str) -> String {
    let path = h.dir.path().join("signals.toml");
    std::fs::write(&path, toml).expect("write config");
    path.display().to_string()
}

/// Applies `toml` and onboards tenant `t` through the CLI binary `bin` (nothing runs yet).
pub fn cli_onboard(bin: &str, h: &Harness, toml: &str) {
    let path = write_config(h, toml);
    let (status, out) = run_cli(bin, h, &["config", "apply", &path], &[]);
    assert!(status.success(), "{out}");
    let (status, out) = run_cli(bin, h, &["onboard", "--tenant", "t"], &[]);
    assert!(status.success(), "{out}");
}
