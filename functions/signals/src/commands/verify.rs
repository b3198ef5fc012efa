//! `signals verify`: compares a receiver's datasets with the sources, row for row.

use crate::app::{context, open_queue, open_store, Exit, StoreSpec};
use anyhow::Context;
use clap::Args;
use signals_shared::ctx::DEFAULT_RETRY;
use signals_shared::ops::reconcile::reconcile;
use signals_shared::receiver::db::ReceiverDb;
use signals_shared::verify::{verify_receiver, VerifyReport};
use std::path::{Path, PathBuf};

/// Options of `signals verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// Compare with a reference receiver's database file directly, row by row, instead of
    /// through the destination's checksum endpoint.
    #[arg(long)]
    pub receiver_db: Option<PathBuf>,
    /// Re-send exactly the drifted keys (upserts, and deletes for keys the source lacks).
    #[arg(long, conflicts_with = "receiver_db")]
    pub repair: bool,
    /// Buckets the key space is checksummed in (more buckets: finer drift reports).
    #[arg(long, default_value_t = 256)]
    pub buckets: u32,
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

/// Prints the comparison; exits 2 if any dataset differs (and was not repaired).
pub async fn verify(store: &StoreSpec, args: VerifyArgs) -> anyhow::Result<()> {
    let Some(receiver_db) = &args.receiver_db else {
        return reconcile_all(store, &args).await;
    };
    let reports = verify_all(store, receiver_db, args.tenant.as_deref(), args.source.as_deref()).await?;
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

/// Reconciles every matching data source through its destination's checksum endpoint.
async fn reconcile_all(store: &StoreSpec, args: &VerifyArgs) -> anyhow::Result<()> {
    let backend = open_store(store).await?;
    let queue = open_queue(store, &backend).await?;
    let ctx = context(backend.clone(), None, DEFAULT_RETRY);
    let (_, config) = ctx.latest_config().await?.context("no configuration applied")?;
    let mut drift = false;
    for (tid, t) in config
        .tenants
        .iter()
        .filter(|(id, _)| args.tenant.as_deref().is_none_or(|w| w == id.as_str()))
    {
        for sid in t
            .sources
            .keys()
            .filter(|id| args.source.as_deref().is_none_or(|w| w == id.as_str()))
        {
            let (r, jobs) = reconcile(&ctx, tid, sid, args.buckets, args.repair).await?;
            queue.enqueue(&jobs, std::time::Duration::ZERO).await?;
            backend
                .record_verification(tid, sid, &serde_json::to_string(&r)?, Some(r.in_sync()))
                .await?;
            let verdict = if r.in_sync() { "IN SYNC" } else { "DRIFT" };
            println!(
                "  {tid}/{sid}: {verdict} — source {} rows, destination {} rows, missing {}, extra {}, different {} \
                 ({} of {} key buckets drifted); {} changes pending in staging",
                r.source_rows,
                r.destination_rows,
                r.missing,
                r.extra,
                r.different,
                r.drifted_buckets.len(),
                r.buckets,
                r.staging_pending
            );
            if !r.examples.is_empty() {
                println!("    e.g. {}", r.examples.join("; "));
            }
            if args.repair && !r.in_sync() {
                match &r.repair_run {
                    Some(run) => println!("    repair: {} keys re-sent by run {run}", r.repaired),
                    None => println!(
                        "    repair: {} keys re-sent by the next run (one is active now)",
                        r.repaired
                    ),
                }
            } else if !r.in_sync() {
                drift = true;
            }
        }
    }
    if drift {
        return Err(Exit(2).into());
    }
    Ok(())
}
