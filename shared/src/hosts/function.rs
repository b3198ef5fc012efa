//! Entry point shared by the per-stage function binaries: pick a host from the arguments and run
//! the stage's jobs there. `lambda` and `worker` hosts plug in here as they are added.

use super::runner::{self, RunnerOptions};
use crate::connectors::DefaultConnectors;
use crate::ctx::Ctx;
use crate::domain::job::Stage;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "usage: signals-STAGE [--store PATH] (replay EVENT_FILE | poll [--until-idle])";

/// Runs a function binary for `stage`; returns its exit code.
pub fn main(stage: Stage) -> ExitCode {
    crate::telemetry::init("info");
    let mut args = std::env::args().skip(1).peekable();
    let mut store = PathBuf::from(std::env::var("SIGNALS_STORE").unwrap_or_else(|_| "signals.db".into()));
    if args.peek().map(String::as_str) == Some("--store") {
        args.next();
        match args.next() {
            Some(p) => store = p.into(),
            None => return usage(),
        }
    }
    let (cmd, rest): (Option<String>, Vec<String>) = (args.next(), args.collect());
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    rt.block_on(async move {
        let store = match crate::sqlite::store::SqliteStore::open(&store) {
            Ok(s) => Arc::new(s),
            Err(e) => return fail(&e.to_string()),
        };
        let ctx = Arc::new(Ctx::new(store.clone(), Arc::new(DefaultConnectors::default())));
        match (cmd.as_deref(), rest.as_slice()) {
            (Some("replay"), [file]) => {
                let text = match std::fs::read_to_string(file) {
                    Ok(t) => t,
                    Err(e) => return fail(&format!("cannot read {file}: {e}")),
                };
                match super::replay::replay(ctx, store.clone(), store, &text, false).await {
                    Ok(0) => ExitCode::SUCCESS,
                    Ok(_) => ExitCode::FAILURE,
                    Err(e) => fail(&format!("{file}: {e}")),
                }
            }
            (Some("poll"), flags) => {
                let until_idle = flags.iter().any(|f| f == "--until-idle");
                let opts = RunnerOptions {
                    stages: vec![stage],
                    until_idle,
                    ..RunnerOptions::default()
                };
                match runner::run(ctx, store, opts, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await
                {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(e) => fail(&e.to_string()),
                }
            }
            _ => usage(),
        }
    })
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}
