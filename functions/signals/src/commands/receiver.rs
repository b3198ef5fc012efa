//! `signals receiver`: the reference implementation of the push protocol, backed by SQLite.

use anyhow::Context;
use clap::Args;
use signals_shared::receiver::db::ReceiverDb;
use signals_shared::receiver::faults::{FaultRates, RateFaults};
use signals_shared::receiver::server::{serve, ReceiverState};
use std::path::PathBuf;
use std::sync::Arc;

/// Options of `signals receiver`.
#[derive(Args)]
pub struct ReceiverArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Database file the datasets are written to.
    #[arg(long, default_value = "receiver.db")]
    pub db: PathBuf,
    /// Require `Authorization: Bearer <value of this environment variable>`.
    #[arg(long)]
    pub bearer_env: Option<String>,
    /// Inject faults by rate, `KIND=RATE` (repeatable): 500, 503, 429, slow, drop-before, drop-after.
    #[arg(long = "fault")]
    pub faults: Vec<String>,
    /// Seed of the fault generator (the same seed gives the same faults for the same requests).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Delay of a `slow` response, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub slow_ms: u64,
    /// `Retry-After` seconds sent with an injected 429.
    #[arg(long, default_value_t = 1)]
    pub retry_after_secs: u64,
    /// Answer 413 to bodies larger than this many bytes.
    #[arg(long)]
    pub max_body_bytes: Option<usize>,
}

/// Serves until SIGINT/SIGTERM.
pub async fn receiver(args: ReceiverArgs) -> anyhow::Result<()> {
    let db = ReceiverDb::open(&args.db).with_context(|| format!("cannot open {}", args.db.display()))?;
    let expect = match &args.bearer_env {
        Some(name) => Some(format!(
            "Bearer {}",
            std::env::var(name).with_context(|| format!("environment variable {name} is not set"))?
        )),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("receiver listening on http://{}", listener.local_addr()?);
    let mut state = ReceiverState::new(db, expect);
    state.max_body_bytes = args.max_body_bytes;
    if !args.faults.is_empty() {
        let mut rates = FaultRates::parse(&args.faults).map_err(anyhow::Error::msg)?;
        rates.slow_ms = args.slow_ms;
        rates.retry_after_secs = args.retry_after_secs;
        println!("injecting faults {rates:?} from seed {}", args.seed);
        state.rates = Some(RateFaults::new(rates, args.seed));
    }
    serve(listener, Arc::new(state), super::run::shutdown_signal()).await?;
    Ok(())
}
