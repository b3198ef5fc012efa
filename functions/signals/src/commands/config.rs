//! `signals config apply|check` and `signals onboard`.

use crate::app::{open_queue, open_store, StoreSpec};
use anyhow::Context;
use signals_shared::domain::config::Config;
use signals_shared::domain::job::{Job, Task};
use std::path::Path;
use std::time::Duration;

/// Validates a file and stores it as a new version (unless identical to the latest).
pub async fn apply(store: &StoreSpec, file: &Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let store = open_store(store).await?;
    let (version, new) = store.apply_config(&text, &file.display().to_string()).await?;
    let tenants = config.tenants.len();
    let sources: usize = config.tenants.values().map(|t| t.sources.len()).sum();
    if new {
        println!("applied config version {version}: {tenants} tenants, {sources} data sources");
    } else {
        println!("config unchanged: still version {version}");
    }
    Ok(())
}

/// Validates a file.
pub fn check(file: &Path) -> anyhow::Result<()> {
    Config::load(file)?;
    println!("{}: valid", file.display());
    Ok(())
}

/// Enqueues an onboarding job; the scheduler opens the initial runs when it handles it.
pub async fn onboard(spec: &StoreSpec, tenant: &str, reports: Vec<String>) -> anyhow::Result<()> {
    let store = open_store(spec).await?;
    let (version, toml) = store
        .latest_config()
        .await?
        .context("no configuration applied: run `signals config apply FILE` first")?;
    let config = Config::parse(&toml, &format!("config version {version}"))?;
    // Check now so a typo is an error at the prompt, not a dead letter later.
    let sources = config
        .sources_for_reports(tenant, &reports, version)
        .map_err(anyhow::Error::msg)?;
    open_queue(spec, &store)
        .await?
        .enqueue(
            &[Job::new(Task::Onboard {
                tenant: tenant.to_owned(),
                reports,
            })],
            Duration::ZERO,
        )
        .await?;
    println!(
        "onboarding tenant `{tenant}`: initial runs for {} data sources ({}) will open",
        sources.len(),
        sources.join(", ")
    );
    Ok(())
}

/// Enqueues one timer tick: the scheduler opens interval runs for the data sources that are due.
pub async fn tick(spec: &StoreSpec) -> anyhow::Result<()> {
    let store = open_store(spec).await?;
    open_queue(spec, &store)
        .await?
        .enqueue(&[Job::new(Task::Tick)], Duration::ZERO)
        .await?;
    println!("tick enqueued");
    Ok(())
}
