//! Entry point shared by the per-stage function binaries: pick a host and run the stage's jobs
//! there — the Lambda host when `AWS_LAMBDA_RUNTIME_API` is set (the Lambda runtime sets it),
//! otherwise what the arguments say.

use crate::connectors::DefaultConnectors;
use crate::ctx::Ctx;
use crate::domain::job::Stage;
use std::process::ExitCode;
use std::sync::Arc;

const USAGE: &str = "usage: signals-STAGE [--store SPEC] [--store-schema NAME] [--queue QUEUE] COMMAND
  replay EVENT_FILE                      run one cloud event file through this stage's handler
  worker [--listen ADDR] [--concurrency N] [--push-slots N] [--lease-secs S] [--grace-secs S]
                                         poll this stage's queue until SIGTERM
  (SPEC: SQLite path, postgres:// URL, ADO.NET SQL Server string, or env:NAME / file:PATH / aws-sm:ARN holding one; default
   $SIGNALS_STORE. QUEUE: table (the store's) or sqs://PREFIX; default $SIGNALS_QUEUE or table.
   Under AWS Lambda (AWS_LAMBDA_RUNTIME_API set) no command is needed: the Lambda host runs.)";

struct Args {
    store: String,
    schema: String,
    queue: String,
    command: Option<String>,
    rest: Vec<String>,
}

fn parse() -> Option<Args> {
    let mut a = Args {
        store: std::env::var("SIGNALS_STORE").unwrap_or_else(|_| "signals.db".into()),
        schema: std::env::var("SIGNALS_STORE_SCHEMA").unwrap_or_else(|_| crate::backends::DEFAULT_PG_SCHEMA.into()),
        queue: std::env::var("SIGNALS_QUEUE").unwrap_or_else(|_| "table".into()),
        command: None,
        rest: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--store" if a.command.is_none() => a.store = it.next()?,
            "--store-schema" if a.command.is_none() => a.schema = it.next()?,
            "--queue" if a.command.is_none() => a.queue = it.next()?,
            _ if a.command.is_none() => a.command = Some(arg),
            _ => a.rest.push(arg),
        }
    }
    Some(a)
}

/// The value after `--name` in `rest`, parsed.
#[cfg(feature = "http-server")]
fn flag<T: std::str::FromStr>(rest: &[String], name: &str) -> Result<Option<T>, String> {
    match rest.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => rest
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("{name} needs a valid value")),
    }
}

/// Runs a function binary for `stage`; returns its exit code.
pub fn main(stage: Stage) -> ExitCode {
    // Declared before the runtime so it is dropped after it: spans still buffered are flushed.
    let _telemetry = crate::telemetry::init("info", &format!("signals-{stage}"));
    let Some(args) = parse() else { return usage() };
    super::tune_malloc();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the async runtime: {e}")),
    };
    rt.block_on(async move {
        let connections = match (args.command.as_deref(), worker_options(stage, &args.rest)) {
            (Some("worker"), Ok(opts)) => opts.store_connections(),
            (Some("worker"), Err(e)) => return fail(&e),
            _ => crate::backends::DEFAULT_STORE_CONNECTIONS,
        };
        let store = match crate::backends::open_for(&args.store, &args.schema, connections).await {
            Ok(s) => s,
            Err(e) => return fail(&e.to_string()),
        };
        let ctx = Arc::new(Ctx::new(store.clone(), Arc::new(DefaultConnectors::default())));
        if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
            return lambda(ctx, &args.queue, stage).await;
        }
        let queue = match crate::backends::open_queue(&args.queue, &store).await {
            Ok(q) => q,
            Err(e) => return fail(&e.to_string()),
        };
        match (args.command.as_deref(), args.rest.as_slice()) {
            (Some("replay"), [file]) => {
                let text = match std::fs::read_to_string(file) {
                    Ok(t) => t,
                    Err(e) => return fail(&format!("cannot read {file}: {e}")),
                };
                match super::replay::replay(ctx, store, queue, &text, false).await {
                    Ok(0) => ExitCode::SUCCESS,
                    Ok(_) => ExitCode::FAILURE,
                    Err(e) => fail(&format!("{file}: {e}")),
                }
            }
            (Some("worker"), rest) => match worker(ctx, queue, stage, rest).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            },
            _ => usage(),
        }
    })
}

#[cfg(feature = "lambda")]
async fn lambda(ctx: Arc<Ctx>, queue: &str, stage: Stage) -> ExitCode {
    let sqs = match crate::sqs::SqsQueue::connect(queue).await {
        Ok(q) => Arc::new(q),
        Err(e) => {
            return fail(&format!(
                "the Lambda host needs SQS queues (SIGNALS_QUEUE=sqs://PREFIX): {e}"
            ))
        }
    };
    match super::lambda::run(ctx, sqs, stage).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

#[cfg(not(feature = "lambda"))]
async fn lambda(_: Arc<Ctx>, _: &str, _: Stage) -> ExitCode {
    fail("this build has no Lambda host (feature lambda)")
}

#[cfg(feature = "http-server")]
async fn worker(
    ctx: Arc<Ctx>,
    queue: Arc<dyn crate::ports::JobQueue>,
    stage: Stage,
    rest: &[String],
) -> Result<(), String> {
    use std::net::SocketAddr;
    let opts = worker_options(stage, rest)?;
    let listen: Option<SocketAddr> = flag(rest, "--listen")?;
    super::worker::run(ctx, queue, opts, listen, terminate())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// The `worker` command's runner options from its flags (the runner's defaults without them).
#[cfg(feature = "http-server")]
fn worker_options(stage: Stage, rest: &[String]) -> Result<super::runner::RunnerOptions, String> {
    use std::time::Duration;
    let defaults = super::runner::RunnerOptions::default();
    Ok(super::runner::RunnerOptions {
        stages: vec![stage],
        concurrency: flag(rest, "--concurrency")?.unwrap_or(defaults.concurrency),
        push_only_slots: flag(rest, "--push-slots")?,
        lease: flag(rest, "--lease-secs")?.map_or(defaults.lease, Duration::from_secs),
        grace: flag(rest, "--grace-secs")?.map_or(defaults.grace, Duration::from_secs),
        ..defaults
    })
}

#[cfg(not(feature = "http-server"))]
fn worker_options(stage: Stage, _: &[String]) -> Result<super::runner::RunnerOptions, String> {
    Ok(super::runner::RunnerOptions {
        stages: vec![stage],
        ..Default::default()
    })
}

#[cfg(not(feature = "http-server"))]
async fn worker(_: Arc<Ctx>, _: Arc<dyn crate::ports::JobQueue>, _: Stage, _: &[String]) -> Result<(), String> {
    Err("this build has no worker host (feature http-server)".into())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn terminate() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("error: {msg}");
    ExitCode::FAILURE
}
