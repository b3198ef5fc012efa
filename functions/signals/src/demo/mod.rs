//! `signals demo`: the whole product on embedded defaults — a demo source, a receiver, an initial
//! sync, a mutation, an interval sync, and a row-for-row verification that decides the exit code.

mod data;
mod progress;

use crate::app::{context, open_store, Exit, StoreSpec};
use crate::commands::verify::{print_reports, verify_all};
use anyhow::Context;
use clap::Args;
use signals_shared::backends::Backend;
use signals_shared::ctx::DEFAULT_RETRY;
use signals_shared::domain::job::{Job, Task};
use signals_shared::hosts::runner::{self, RunnerOptions};
use signals_shared::ports::Run;
use signals_shared::receiver::db::ReceiverDb;
use signals_shared::receiver::server::{serve, ReceiverState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Options of `signals demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Working directory for the demo's files (recreated).
    #[arg(long, default_value = ".demo")]
    pub dir: PathBuf,
    /// Rows across the three demo tables.
    #[arg(long, default_value_t = 220_000)]
    pub rows: i64,
}

fn config_toml(source: &Path, url: &str) -> String {
    format!(
        r#"# Written by `signals demo`.
[destinations.platform]
url = "{url}"
batch_max_rows = 5000

[tenants.demo]
destination = "platform"
reports = {{ sales = ["customers", "orders"], fulfilment = ["orders", "order_lines"] }}

[tenants.demo.connections.shop]
sqlite_path = "{}"

[tenants.demo.sources.customers]
connection = "shop"
table = "customers"
key = ["id"]
interval_secs = 1
chunk_rows = 20000

[tenants.demo.sources.orders]
connection = "shop"
table = "orders"
key = ["id"]
interval_secs = 1
chunk_rows = 20000

[tenants.demo.sources.order_lines]
connection = "shop"
table = "order_lines"
key = ["order_id", "line_no"]
interval_secs = 1
chunk_rows = 20000
"#,
        source.display().to_string().replace('\\', "\\\\").replace('"', "\\\"")
    )
}

async fn sync(store: &Arc<dyn Backend>, label: &str, first: Job) -> anyhow::Result<Vec<Run>> {
    let started = Instant::now();
    let since = chrono::Utc::now();
    store.enqueue(&[first], Duration::ZERO).await?;
    let ctx = context(store.clone(), None, DEFAULT_RETRY);
    let progress = progress::spawn(store.clone(), label.to_owned());
    let opts = RunnerOptions {
        until_idle: true,
        concurrency: 4,
        ..RunnerOptions::default()
    };
    runner::run(ctx, store.clone(), opts, std::future::pending()).await?;
    progress.abort();
    let secs = started.elapsed().as_secs_f64();
    let runs: Vec<Run> = store
        .runs(Some("demo"), 100)
        .await?
        .into_iter()
        .filter(|r| r.created_at >= since)
        .collect();
    let (read, ins, upd, del, batches, bytes) = runs.iter().fold((0, 0, 0, 0, 0, 0), |a, r| {
        (
            a.0 + r.rows_read,
            a.1 + r.inserts,
            a.2 + r.updates,
            a.3 + r.deletes,
            a.4 + r.batches_delivered,
            a.5 + r.bytes,
        )
    });
    println!("{label}: {} runs in {secs:.2}s", runs.len());
    println!(
        "  read {read} rows ({:.0} rows/s); pushed {} changes = {ins} inserts, {upd} updates, {del} deletes in {batches} batches ({:.1} MB, {:.1} MB/s)",
        read as f64 / secs,
        ins + upd + del,
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs
    );
    for r in &runs {
        println!(
            "  {:<12} {:<8} {:>8} rows read  +{} ~{} -{}  {} batches  {}",
            r.source,
            r.kind.as_str(),
            r.rows_read,
            r.inserts,
            r.updates,
            r.deletes,
            r.batches_total,
            r.display_state()
        );
    }
    Ok(runs)
}

/// Runs the demo; exits non-zero unless every run finished and the receiver equals the source.
pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let wall = Instant::now();
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    for f in [
        "store.db",
        "store.db-wal",
        "store.db-shm",
        "receiver.db",
        "receiver.db-wal",
        "receiver.db-shm",
        "source.db-wal",
        "source.db-shm",
    ] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let (source, store_path, receiver_path) = (dir.join("source.db"), dir.join("store.db"), dir.join("receiver.db"));

    let sizes = data::Sizes::for_total(args.rows);
    let t = Instant::now();
    let rows = data::create(&source, sizes)?;
    println!(
        "demo source: {rows} rows in 3 tables at {} ({:.1}s)",
        source.display(),
        t.elapsed().as_secs_f64()
    );

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let receiver = Arc::new(ReceiverState::new(ReceiverDb::open(&receiver_path)?, None));
    let server = tokio::spawn(serve(listener, receiver.clone(), std::future::pending()));
    println!("receiver: {url} → {}", receiver_path.display());

    let config_path = dir.join("signals.toml");
    std::fs::write(&config_path, config_toml(&source, &url))?;
    let spec = StoreSpec {
        spec: store_path.display().to_string(),
        schema: String::new(),
        queue: "table".into(),
    };
    let store = open_store(&spec).await?;
    let (version, _) = store
        .apply_config(
            &std::fs::read_to_string(&config_path)?,
            &config_path.display().to_string(),
        )
        .await?;
    println!("config: {} applied as version {version}\n", config_path.display());

    let onboard = Job::new(Task::Onboard {
        tenant: "demo".into(),
        reports: vec!["sales".into(), "fulfilment".into()],
    });
    let initial = sync(&store, "initial sync", onboard).await?;

    let m = data::mutate(&source, sizes)?;
    println!(
        "\nmutated the source: {} inserts, {} updates, {} deletes\n",
        m.inserts, m.updates, m.deletes
    );
    tokio::time::sleep(Duration::from_millis(1100)).await; // the demo's interval is 1 s
    let interval = sync(&store, "interval sync", Job::new(Task::Tick)).await?;

    println!("\nverifying the receiver against the source:");
    let reports = verify_all(&spec, &receiver_path, Some("demo"), None).await?;
    print_reports(&reports);
    let stats = receiver.db.stats()?;
    println!(
        "receiver: {} batches applied, {} changes, {} applied twice",
        stats.batches, stats.changes, stats.applied_twice
    );
    server.abort();

    let all_done = initial.iter().chain(&interval).all(|r| r.display_state() == "done");
    let dead = store.dead_letters(true).await?.len();
    let ok =
        all_done && dead == 0 && stats.applied_twice == 0 && reports.len() == 3 && reports.iter().all(|r| r.2.equal());
    println!(
        "\n{} in {:.1}s (store: {}, `signals --store {} status` for history)",
        if ok {
            "demo OK: the receiver equals the source"
        } else {
            "demo FAILED"
        },
        wall.elapsed().as_secs_f64(),
        store_path.display(),
        store_path.display()
    );
    if ok {
        Ok(())
    } else {
        Err(Exit(1).into())
    }
}
