//! `signals verify`: compares a receiver's datasets with the sources, row for row.

use crate::app::{context, open_store, Exit, StoreSpec};
use anyhow::Context;
use clap::Args;
use signals_shared::ctx::DEFAULT_RETRY;
use signals_shared::receiver::db::ReceiverDb;
use signals_shared::verify::{verify_receiver, VerifyReport};
use std::path::{Path, PathBuf};

/// Options of `signals verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// The receiver's database file.
    #[arg(long)]
    pub receiver_db: PathBuf,
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this data source.
    #[arg(long)]
    pub source: Option<String>,
}

/// Compares every data source (of one tenant, or all) with the receiver.
pub async fn verify_all(
    store: &StoreSpec,
    receiver_db: &Path,
    tenant: Option<&str>,
    source: Option<&str>,
) -> anyhow::Result<Vec<(String, String, VerifyReport)>> {
    let ctx = context(open_store(store).await?, None, DEFAULT_RETRY);
    let db = ReceiverDb::open(receiver_db).with_context(|| format!("cannot open {}", receiver_db.display()))?;
    Ok(verify_receiver(&ctx, &db, tenant, source).await?)
}

/// Prints the comparison; exits 2 if any dataset differs.
pub async fn verify(store: &StoreSpec, args: VerifyArgs) -> anyhow::Result<()> {
    let reports = verify_all(store, &args.receiver_db, args.tenant.as_deref(), args.source.as_deref()).await?;
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
            if r.examples.is_empty() {
                String::new()
            } else {
                format!(" (e.g. {})", r.examples.join("; "))
            }
        );
    }
}
