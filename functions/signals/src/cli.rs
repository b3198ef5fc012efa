//! Command-line interface.

use crate::{app, commands, demo};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Signals ETL: keeps reporting datasets in sync with customers' databases.
#[derive(Parser)]
#[command(name = "signals", version, about)]
struct Cli {
    /// The store holding config versions, runs, staging and the queue: a SQLite file, a
    /// `postgres://` URL, an ADO.NET SQL Server string (`Server=…;…`), or `env:NAME` /
    /// `file:PATH` holding one (they carry passwords).
    #[arg(long, global = true, env = "SIGNALS_STORE", default_value = "signals.db")]
    store: String,
    /// PostgreSQL or SQL Server schema of the store (created and migrated on first use).
    #[arg(long, global = true, env = "SIGNALS_STORE_SCHEMA", default_value = "signals")]
    store_schema: String,
    /// Where jobs travel between stages: `table` (the store's table queue) or `sqs://PREFIX`
    /// (an Amazon SQS queue per stage, `PREFIX-snapshot` and so on; `AWS_ENDPOINT_URL` honoured).
    #[arg(long, global = true, env = "SIGNALS_QUEUE", default_value = "table")]
    queue: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Configuration versions.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Open initial runs for the data sources a tenant's reports need.
    Onboard {
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Report names, comma separated (default: every data source of the tenant).
        #[arg(long, value_delimiter = ',')]
        reports: Vec<String>,
    },
    /// Enqueue one timer tick and exit (a Kubernetes CronJob's timer for the scheduler workers).
    Tick,
    /// Single-process mode: the timer and every stage on the table queue.
    Run(commands::run::RunArgs),
    /// A long-running worker for some stages, with probes and metrics (Kubernetes, many processes).
    Worker(commands::run::WorkerArgs),
    /// Run history per tenant and data source.
    Status {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Most runs shown.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Dead letters: list, show, retry.
    Dlq {
        #[command(subcommand)]
        action: commands::dlq::DlqAction,
    },
    /// Pause a tenant or data source: no new runs; running runs park at their next stage.
    Pause(commands::ops::Target),
    /// Resume a paused tenant or data source.
    Resume(commands::ops::Target),
    /// Re-send the current state of a data source (or a key range of it) now.
    Resync(commands::ops::ResyncArgs),
    /// Stop a tenant's syncs and remove its rows from the store (audited, confirmed).
    Offboard(commands::ops::OffboardArgs),
    /// The operations page: tenants, lag, recent runs, running syncs, dead letters (retry with a token).
    Ui(commands::ui::UiArgs),
    /// The reference receiver of the push protocol.
    Receiver(commands::receiver::ReceiverArgs),
    /// Compare a receiver's datasets with the sources, row for row.
    Verify(commands::verify::VerifyArgs),
    /// Run a cloud event file (events/) through the handlers.
    Replay(commands::replay::ReplayArgs),
    /// The whole pipeline on embedded defaults, end to end, verified.
    Demo(demo::DemoArgs),
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a TOML file and store it as a new config version.
    Apply {
        /// The TOML file.
        file: PathBuf,
    },
    /// Validate a TOML file without storing it.
    Check {
        /// The TOML file.
        file: PathBuf,
    },
}

/// Parses arguments, runs the command, and maps errors to a message and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout; its logs only matter when something goes wrong.
    // Declared before the runtime so it is dropped after it: spans still buffered are flushed.
    let level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    let _telemetry = signals_shared::telemetry::init(level, "signals");
    signals_shared::hosts::tune_malloc();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let store = app::StoreSpec {
        spec: cli.store,
        schema: cli.store_schema,
        queue: cli.queue,
    };
    match cli.command {
        Command::Config {
            action: ConfigAction::Apply { file },
        } => commands::config::apply(&store, &file).await,
        Command::Config {
            action: ConfigAction::Check { file },
        } => commands::config::check(&file),
        Command::Onboard { tenant, reports } => commands::config::onboard(&store, &tenant, reports).await,
        Command::Tick => commands::config::tick(&store).await,
        Command::Run(args) => commands::run::run(&store, args).await,
        Command::Worker(args) => commands::run::worker(&store, args).await,
        Command::Status { tenant, json, limit } => {
            commands::status::status(&store, tenant.as_deref(), json, limit).await
        }
        Command::Dlq { action } => commands::dlq::dlq(&store, action).await,
        Command::Receiver(args) => commands::receiver::receiver(args).await,
        Command::Ui(args) => commands::ui::ui(&store, args).await,
        Command::Pause(t) => commands::ops::pause(&store, t, true).await,
        Command::Resume(t) => commands::ops::pause(&store, t, false).await,
        Command::Resync(args) => commands::ops::resync_cmd(&store, args).await,
        Command::Offboard(args) => commands::ops::offboard(&store, args).await,
        Command::Verify(args) => commands::verify::verify(&store, args).await,
        Command::Replay(args) => commands::replay::replay(&store, args).await,
        Command::Demo(args) => demo::demo(args).await,
    }
    .map(|()| ExitCode::SUCCESS)
    .or_else(|e| match e.downcast_ref::<app::Exit>() {
        Some(app::Exit(code)) => {
            eprintln!("{e}");
            Ok(ExitCode::from(*code))
        }
        None => Err(e),
    })
}
