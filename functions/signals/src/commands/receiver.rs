//! `signals receiver`: the reference implementation of the push protocol, backed by SQLite.

use anyhow::Context;
use clap::Args;
use signals_shared::receiver::db::ReceiverDb;
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
    serve(
        listener,
        Arc::new(ReceiverState::new(db, expect)),
        super::run::shutdown_signal(),
    )
    .await?;
    Ok(())
}
