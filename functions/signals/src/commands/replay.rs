//! `signals replay FILE [--follow]`: a cloud event file through the same handlers.

use crate::app::{context, open_store, Exit, StoreSpec};
use anyhow::Context;
use clap::Args;
use signals_shared::ctx::DEFAULT_RETRY;
use std::path::PathBuf;

/// Options of `signals replay`.
#[derive(Args)]
pub struct ReplayArgs {
    /// An event file (SQS event, EventBridge scheduled event).
    pub file: PathBuf,
    /// Follow the resulting jobs through the whole pipeline (on the table queue).
    #[arg(long)]
    pub follow: bool,
    /// `jsonl:PATH` writes batches to a file instead of pushing them.
    #[arg(long)]
    pub sink: Option<String>,
}

/// Replays the file; exits 1 if any message failed.
pub async fn replay(store_path: &StoreSpec, args: ReplayArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let store = open_store(store_path).await?;
    let ctx = context(store.clone(), super::run::jsonl_sink(&args.sink)?, DEFAULT_RETRY);
    let failed = signals_shared::hosts::replay::replay(ctx, store.clone(), store, &text, args.follow)
        .await
        .with_context(|| args.file.display().to_string())?;
    if failed > 0 {
        return Err(Exit(1).into());
    }
    Ok(())
}
