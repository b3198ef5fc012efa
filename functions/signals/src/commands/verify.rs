//! `signals verify`: compares a receiver's datasets with the sources, row for row.

use crate::app::{open_store, Exit};
use anyhow::Context;
use clap::Args;
use signals_shared::connectors::DefaultConnectors;
use signals_shared::ctx::Ctx;
use signals_shared::domain::config::Config;
use signals_shared::receiver::db::ReceiverDb;
use signals_shared::verify::{compare, VerifyReport};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Options of `signals verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// The receiver's database file.
    #[arg(long)]
    pub receiver_db: PathBuf,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
}

/// Compares every data source (of one tenant, or all) with the receiver; one line per dataset.
pub async fn verify_all(
    store: &Path,
    receiver_db: &Path,
    tenant: Option<&str>,
) -> anyhow::Result<Vec<(String, String, VerifyReport)>> {
    let store = open_store(store)?;
    let ctx = Ctx::new(store, Arc::new(DefaultConnectors::default()));
    let (version, config): (i64, Arc<Config>) = ctx
        .latest_config()
        .await?
        .context("no configuration applied")?;
    let db = ReceiverDb::open(receiver_db)
        .with_context(|| format!("cannot open {}", receiver_db.display()))?;
    let mut out = Vec::new();
    for (tid, t) in config
        .tenants
        .iter()
        .filter(|(id, _)| tenant.is_none_or(|w| w == id.as_str()))
    {
        for (sid, ds) in &t.sources {
            let (src, spec, _) = ctx.source_for(&config, tid, sid, version)?;
            let rows = db.rows(tid, ds.dataset_name(sid))?.into_iter().collect();
            let report = compare(src.as_ref(), &spec, rows).await?;
            out.push((tid.clone(), sid.clone(), report));
        }
    }
    Ok(out)
}

/// Prints the comparison; exits 2 if any dataset differs.
pub async fn verify(store: &Path, args: VerifyArgs) -> anyhow::Result<()> {
    let reports = verify_all(store, &args.receiver_db, args.tenant.as_deref()).await?;
    print_reports(&reports);
    if reports.iter().all(|r| r.2.equal()) {
        Ok(())
    } else {
        Err(Exit(2).into())
    }
}

/// One line per dataset.
pub fn print_reports(reports: &[(String, String, VerifyReport)]) {
    for (t, s, r) in reports {
        let verdict = if r.equal() { "EQUAL" } else { "DIFFERENT" };
        println!(
            "  {t}/{s}: {verdict} — source {} rows, destination {} rows, missing {}, extra {}, different {}{}",
            r.source_rows,
            r.destination_rows,
            r.missing,
            r.extra,
            r.different,
            if r.examples.is_empty() { String::new() } else { format!(" (e.g. {})", r.examples.join("; ")) }
        );
    }
}
