//! `signals pause|resume|resync|offboard`: acting on one tenant or data source without touching
//! the others. Every action is recorded in the store's audit log with who did it.

use crate::app::{context, open_queue, open_store, StoreSpec};
use anyhow::Context;
use clap::Args;
use signals_shared::ctx::DEFAULT_RETRY;
use signals_shared::ops::resync::resync;
use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

/// Which tenant or data source an action targets.
#[derive(Args)]
pub struct Target {
    /// Tenant id.
    #[arg(long)]
    pub tenant: String,
    /// One data source (default: all of the tenant's).
    #[arg(long)]
    pub source: Option<String>,
    /// Who acts (default: $USER); recorded in the audit log.
    #[arg(long)]
    pub by: Option<String>,
}

fn who(by: &Option<String>) -> String {
    by.clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn subject(t: &Target) -> String {
    match &t.source {
        Some(s) => format!("{}/{s}", t.tenant),
        None => t.tenant.clone(),
    }
}

/// Pauses or resumes: no new runs start; running runs park at their next stage boundary.
pub async fn pause(store: &StoreSpec, target: Target, paused: bool) -> anyhow::Result<()> {
    let backend = open_store(store).await?;
    let by = who(&target.by);
    backend
        .set_paused(&target.tenant, target.source.as_deref(), paused, &by)
        .await?;
    let action = if paused { "pause" } else { "resume" };
    backend.audit(&by, action, &subject(&target), "").await?;
    if paused {
        println!(
            "{} paused by {by}: no new runs start; running runs park at their next stage",
            subject(&target)
        );
    } else {
        println!("{} resumed by {by}", subject(&target));
    }
    Ok(())
}

/// Options of `signals resync`.
#[derive(Args)]
pub struct ResyncArgs {
    #[command(flatten)]
    pub target: Target,
    /// Only keys in `A..B` (inclusive; a value, or a JSON array for composite keys; a side may be empty).
    #[arg(long)]
    pub key_range: Option<String>,
}

/// Re-sends the current state of a data source (or a key range of it) now.
pub async fn resync_cmd(store: &StoreSpec, args: ResyncArgs) -> anyhow::Result<()> {
    let backend = open_store(store).await?;
    let queue = open_queue(store, &backend).await?;
    let ctx = context(backend.clone(), None, DEFAULT_RETRY);
    let (_, config) = ctx.latest_config().await?.context("no configuration applied")?;
    let tenant = config
        .tenants
        .get(&args.target.tenant)
        .with_context(|| format!("no tenant `{}`", args.target.tenant))?;
    let sources: Vec<String> = match &args.target.source {
        Some(s) => vec![s.clone()],
        None => tenant.sources.keys().cloned().collect(),
    };
    let by = who(&args.target.by);
    for source in sources {
        let (r, jobs) = resync(&ctx, &args.target.tenant, &source, args.key_range.as_deref()).await?;
        queue.enqueue(&jobs, Duration::ZERO).await?;
        let range = args.key_range.as_deref().unwrap_or("all keys");
        backend
            .audit(&by, "resync", &format!("{}/{source}", args.target.tenant), range)
            .await?;
        match r.run {
            Some(run) => println!(
                "{}/{source}: {} keys ({range}) re-sent by run {run}",
                args.target.tenant, r.keys
            ),
            None => println!(
                "{}/{source}: {} keys ({range}) re-sent by the run after the active one",
                args.target.tenant, r.keys
            ),
        }
    }
    Ok(())
}

/// Options of `signals offboard`.
#[derive(Args)]
pub struct OffboardArgs {
    /// Tenant id.
    #[arg(long)]
    pub tenant: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Who acts (default: $USER).
    #[arg(long)]
    pub by: Option<String>,
    /// Keep run history and the delivery ledger (for the retention period) instead of removing them now.
    #[arg(long)]
    pub keep_history: bool,
    /// Also ask the destination to drop the tenant's datasets (`DELETE /v1/tenants/{tenant}`).
    #[arg(long)]
    pub drop_datasets: bool,
}

/// Stops everything of a tenant and removes its rows from the store.
pub async fn offboard(store: &StoreSpec, args: OffboardArgs) -> anyhow::Result<()> {
    if !args.yes {
        anyhow::ensure!(
            std::io::stdin().is_terminal(),
            "refusing to offboard without confirmation: pass --yes"
        );
        print!(
            "Offboard tenant `{}`: stop its syncs and delete its staging state? Type the tenant id to confirm: ",
            args.tenant
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        anyhow::ensure!(answer.trim() == args.tenant, "not confirmed; nothing changed");
    }
    let backend = open_store(store).await?;
    let by = who(&args.by);
    // Stop first: no new runs, and running jobs park instead of writing while we delete.
    backend.set_paused(&args.tenant, None, true, &by).await?;
    for run in backend.runs(Some(&args.tenant), 10_000).await? {
        if !matches!(run.display_state(), "done" | "abandoned") {
            backend
                .abandon_run(&run.id, &format!("tenant offboarded by {by}"))
                .await?;
        }
    }
    let removed = backend.purge_tenant(&args.tenant, args.keep_history).await?;
    let mut note = format!("{removed} rows removed");
    if args.drop_datasets {
        let ctx = context(backend.clone(), None, DEFAULT_RETRY);
        let (version, config) = ctx.latest_config().await?.context("no configuration applied")?;
        let (dest_id, dest) = ctx.destination(&config, &args.tenant, version)?;
        let dropped = ctx.connectors.pusher(dest_id, dest)?.drop_tenant(&args.tenant).await?;
        note.push_str(if dropped {
            "; destination datasets dropped"
        } else {
            "; the destination offers no drop endpoint"
        });
    }
    backend.audit(&by, "offboard", &args.tenant, &note).await?;
    println!(
        "tenant `{}` offboarded by {by}: {note}. Remove it from the config file too.",
        args.tenant
    );
    Ok(())
}
