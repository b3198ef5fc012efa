//! `signals-bench [--rows N] [--onboard-rows N] [--sources N] [--memory-rows N]`: generates
//! PostgreSQL sources and measures, beside `COPY (SELECT ...) TO STDOUT` of the same table timed
//! in the same run (the machine is shared and noisy: only ratios within one run mean anything),
//! the initial sync (stage by stage, then whole), a 1% change and the interval sync per diff
//! mode, a larger table's memory, and a whole onboarding of many sources by two workers — with
//! a second tenant's interval lag and a kill-and-restart half way. Every pipeline phase runs in
//! child worker processes, so each process's peak RSS is its own. Figures go to stdout and
//! `target/bench/bench.json`.

mod measure;
mod onboard;
mod source;
mod worker;

use anyhow::{bail, Context};
use measure::{reset_own_peak, Measured, Phase, Report};
use signals_shared::backends::{self, Backend};
use signals_shared::connectors::DefaultConnectors;
use signals_shared::ctx::Ctx;
use signals_shared::domain::job::{Job, Stage, Task};
use source::{client, pg_url, SRC};
use std::sync::Arc;
use std::time::Duration;
use worker::{Receiver, Worker, WorkerOpts};

/// How long the distant receiver takes to answer a batch: a round trip to a platform in another
/// region plus its own work, modest for an API on the public internet.
const DISTANT_MS: u64 = 20;

/// One data source of a benchmark tenant.
pub struct Source {
    tenant: String,
    id: String,
    table: String,
    interval: u64,
    extra: String,
}

impl Source {
    /// A source of `tenant` reading `table` in the benchmark's source schema.
    pub fn new(tenant: &str, id: &str, table: &str) -> Source {
        Source {
            tenant: tenant.into(),
            id: id.into(),
            table: table.into(),
            interval: 1,
            extra: String::new(),
        }
    }
    /// Its sync interval.
    pub fn interval(mut self, secs: u64) -> Source {
        self.interval = secs;
        self
    }
    /// Further TOML lines (diff mode and its settings).
    pub fn extra(mut self, toml: &str) -> Source {
        self.extra = toml.into();
        self
    }
}

/// The benchmark configuration: every tenant pushes to the receiver at `url`.
pub fn config(url: &str, pg_ref: &str, sources: &[Source]) -> String {
    let mut toml = format!("[destinations.receiver]\nurl = \"{url}\"\nbatch_max_rows = 5000\n");
    let mut tenants: Vec<&str> = sources.iter().map(|s| s.tenant.as_str()).collect();
    tenants.dedup();
    for t in tenants {
        toml.push_str(&format!(
            "\n[tenants.{t}]\ndestination = \"receiver\"\n\n[tenants.{t}.connections.pg]\nurl = \"{pg_ref}\"\n"
        ));
    }
    for s in sources {
        toml.push_str(&format!(
            "\n[tenants.{}.sources.{}]\nconnection = \"pg\"\ntable = \"{SRC}.{}\"\nkey = [\"id\"]\nchunk_rows = 100000\n\
             interval_secs = {}\n{}",
            s.tenant, s.id, s.table, s.interval, s.extra
        ));
    }
    toml
}

/// Fails the benchmark unless the latest run of tenant `bench` is done with `rows` inserts: a
/// phase that stopped short would otherwise report a time for work it did not do.
async fn initial_sync_done(store: &Arc<dyn Backend>, name: &str, rows: u64) -> anyhow::Result<()> {
    let run = store.runs(Some("bench"), 1).await?.remove(0);
    anyhow::ensure!(
        run.display_state() == "done" && run.inserts == rows as i64,
        "{name}: initial sync incomplete: {run:?}"
    );
    Ok(())
}

/// A new store schema with the configuration applied and the tenants' onboarding queued.
pub async fn fresh_store(name: &str, toml: &str, onboard: &[&str]) -> anyhow::Result<(Arc<dyn Backend>, Arc<Ctx>)> {
    client()
        .await?
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
        .await?;
    let store = backends::open(&pg_url(), name).await?;
    store.apply_config(toml, "bench").await?;
    let jobs: Vec<Job> = onboard
        .iter()
        .map(|t| {
            Job::new(Task::Onboard {
                tenant: (*t).into(),
                reports: vec![],
            })
        })
        .collect();
    store.enqueue(&jobs, Duration::ZERO).await?;
    let ctx = Arc::new(Ctx::new(store.clone(), Arc::new(DefaultConnectors::default())));
    Ok((store, ctx))
}

struct Args {
    rows: u64,
    onboard_rows: u64,
    sources: usize,
    memory_rows: u64,
    resume_lease_secs: u64,
}

/// `run`'s flags, each followed by a number.
const FLAGS: [&str; 5] = [
    "--rows",
    "--onboard-rows",
    "--sources",
    "--memory-rows",
    "--resume-lease-secs",
];
const USAGE: &str = "usage: signals-bench run [--rows N] [--onboard-rows N] [--sources N] [--memory-rows N] \
    [--resume-lease-secs N]";

/// `run`'s arguments. Anything else is an error: a misspelt flag (or `--help`) would otherwise
/// start a ten-minute run with the defaults.
fn args(a: &[String]) -> anyhow::Result<Args> {
    for pair in a.chunks(2) {
        if !FLAGS.contains(&pair[0].as_str()) {
            bail!("unknown argument `{}`\n{USAGE}", pair[0]);
        }
    }
    let num = |flag: &str, default: u64| -> anyhow::Result<u64> {
        match a.iter().position(|x| x == flag) {
            Some(i) => a
                .get(i + 1)
                .with_context(|| format!("{flag} needs a number"))?
                .parse()
                .with_context(|| format!("{flag} needs a number")),
            None => Ok(default),
        }
    };
    let rows = num("--rows", 1_000_000)?;
    Ok(Args {
        rows,
        onboard_rows: num("--onboard-rows", rows)?,
        sources: num("--sources", 12)? as usize,
        memory_rows: num("--memory-rows", 0)?,
        resume_lease_secs: num("--resume-lease-secs", 10)?,
    })
}

fn main() -> anyhow::Result<()> {
    signals_shared::hosts::tune_malloc();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    match a.first().map(String::as_str) {
        Some("worker") => worker::child(&a[1..]).await,
        Some("receiver") => {
            let after = a.iter().position(|x| x == "--answer-after-ms");
            worker::receiver_child(
                a.get(1).context("receiver needs a db path")?,
                a.iter().any(|x| x == "--ack-after-parse"),
                after.and_then(|i| a.get(i + 1)).map_or(Ok(0), |v| v.parse())?,
            )
            .await
        }
        Some("run") if a.iter().any(|x| x == "--help" || x == "-h") => {
            println!("{USAGE}");
            Ok(())
        }
        Some("run") => bench(args(&a[1..])?).await,
        _ => bail!("{USAGE}"),
    }
}

/// Reads the whole table through the PostgreSQL source adapter, counting rows.
async fn read_source(pg_ref: &str, table: &str) -> anyhow::Result<u64> {
    use signals_shared::ports::{KeyRange, SnapshotSource, SourceSpec};
    let url = std::fs::read_to_string(pg_ref.trim_start_matches("file:"))?;
    let source = signals_shared::postgres::source::PgSource::new(
        signals_shared::postgres::pool::pool(&url, 2).map_err(anyhow::Error::msg)?,
        "pg",
    );
    let spec = SourceSpec {
        table: Some(format!("{SRC}.{table}")),
        key: vec!["id".into()],
        ..Default::default()
    };
    let schema = source.describe(&spec).await?;
    let mut rx = source.read(&spec, &schema, &KeyRange::default());
    let mut n = 0u64;
    while let Some(batch) = rx.recv().await {
        n += batch?.len() as u64;
    }
    Ok(n)
}

/// Runs one worker until the queue is empty: wall time, its peak RSS and store rows written,
/// and the WAL bytes the server wrote meanwhile.
async fn timed(o: &WorkerOpts, name: &str, rows: u64, bytes: u64) -> anyhow::Result<Measured> {
    let c = client().await?;
    source::checkpoint(&c).await?;
    let wal = source::wal_lsn(&c).await?;
    let p = Phase::start();
    let r = Worker::spawn(o)?.wait()?;
    let m = p.finish(name, rows, bytes, vec![r.peak_rss]);
    Ok(m.with("store_rows_written", r.rows_written)
        .with("store_wal_bytes", source::wal_since(&c, &wal).await?))
}

async fn bench(a: Args) -> anyhow::Result<()> {
    let c = client().await?;
    let dir = std::env::temp_dir().join(format!("signals-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The source connection is a secret reference, as in production.
    std::fs::write(dir.join("pg.url"), pg_url())?;
    let pg_ref = format!("file:{}", dir.join("pg.url").display());
    eprintln!(
        "generating sources: big ({} rows), steady, {} × {} rows …",
        a.rows, a.sources, a.onboard_rows
    );
    source::reset(&c).await?;
    source::create_table(&c, "big", a.rows.max(a.onboard_rows)).await?;
    let steady_rows = (a.rows / 20).max(1000);
    source::copy_table(&c, "big", "steady", steady_rows).await?;
    let tables: Vec<String> = (1..=a.sources).map(|i| format!("onboard_{i:02}")).collect();
    for t in &tables {
        source::copy_table(&c, "big", t, a.onboard_rows).await?;
    }
    if a.onboard_rows > a.rows {
        c.batch_execute(&format!("DELETE FROM {SRC}.big WHERE id > {}", a.rows))
            .await?;
        source::settle(&c, "big").await?;
    }
    let receiver = Receiver::spawn(&dir.join("receiver.db"), false, 0)?;
    let ack_only = Receiver::spawn(&dir.join("receiver-ack.db"), true, 0)?;
    let distant = Receiver::spawn(&dir.join("receiver-distant.db"), true, DISTANT_MS)?;
    let mut report = Report::default();
    let rows = a.rows;

    // The median of three: one COPY on this shared machine has taken anything from 1.9 to 3.1 s
    // within an hour, and every ratio of the run divides by it.
    source::checkpoint(&c).await?;
    let mut copies = Vec::new();
    for _ in 0..3 {
        let p = Phase::start();
        let bytes = source::copy_baseline(&c, "big").await?;
        copies.push(p.finish(
            "COPY (SELECT … ORDER BY id) TO STDOUT, text, read by client (median of 3)",
            rows,
            bytes,
            vec![],
        ));
    }
    copies.sort_by(|x, y| x.secs.total_cmp(&y.secs));
    let bytes = copies[1].bytes;
    report.baseline(copies.swap_remove(1));

    reset_own_peak();
    let p = Phase::start();
    let read = read_source(&pg_ref, "big").await?;
    anyhow::ensure!(read == rows, "read {read} rows, expected {rows}");
    report.add(p.finish(
        "source read only: row stream → canonical values (the snapshot's reader)",
        rows,
        bytes,
        vec![measure::peak_rss("self")],
    ));

    // The stages one after another, as an interval run (or a run planned before decision 0025)
    // takes them, with an initial run's rows: where the time of each goes.
    let big = |extra: &str| vec![Source::new("bench", "big", "big").extra(extra)];
    fresh_store("sigbench_stages", &config(&receiver.url, &pg_ref, &big("")), &["bench"]).await?;
    for (stages, name) in [
        (
            vec![Stage::Scheduler, Stage::Snapshot],
            "stage snapshot: read, hash, diff, write delta",
        ),
        (vec![Stage::Merge], "stage merge: delta → staging, one transaction"),
        (vec![Stage::Batch], "stage batch: cut change records into stored bodies"),
        (vec![Stage::Push], "stage push: to the receiver (HTTP, SQLite apply)"),
    ] {
        let mut o = WorkerOpts::new("sigbench_stages");
        o.stages = stages;
        o.cut_beside_merge = false;
        o.number_at_commit = false;
        report.add(timed(&o, name, rows, bytes).await?);
    }
    // The merge as production runs it: the cut beside it, in the same job (decision 0019).
    fresh_store("sigbench_beside", &config(&receiver.url, &pg_ref, &big("")), &["bench"]).await?;
    let mut o = WorkerOpts::new("sigbench_beside");
    o.number_at_commit = false;
    o.stages = vec![Stage::Scheduler, Stage::Snapshot];
    Worker::spawn(&o)?.wait()?;
    o.stages = vec![Stage::Merge];
    report.add(timed(&o, "stage merge with the cut beside it (one job, as run)", rows, bytes).await?);

    // Whole initial syncs, one per diff mode (the snapshot one also against a receiver that
    // acknowledges after parsing, to take its SQLite writes out), then 1% changes and one
    // interval sync per mode.
    let modes = [("snapshot", ""), ("remote_hash", "diff = \"remote_hash\"\n"), (
        "watermark",
        "diff = \"watermark\"\nwatermark_column = \"updated_at\"\nwatermark_overlap = 60\nfull_diff_interval_secs = 86400\n",
    )];
    let mut stores = Vec::new();
    for (name, extra) in modes {
        let schema = format!("sigbench_{name}");
        let (store, _) = fresh_store(&schema, &config(&receiver.url, &pg_ref, &big(extra)), &["bench"]).await?;
        let m = timed(
            &WorkerOpts::new(&schema),
            &format!("initial sync, whole pipeline ({name} mode)"),
            rows,
            bytes,
        )
        .await?;
        initial_sync_done(&store, name, rows).await?;
        report.add(m);
        stores.push((name, schema, store));
    }
    let (ack_store, _) = fresh_store(
        "sigbench_ackonly",
        &config(&ack_only.url, &pg_ref, &big("")),
        &["bench"],
    )
    .await?;
    let m = timed(
        &WorkerOpts::new("sigbench_ackonly"),
        "initial sync, receiver acknowledging after parsing",
        rows,
        bytes,
    )
    .await?;
    initial_sync_done(&ack_store, "parse-only receiver", rows).await?;
    report.add(m);
    // A destination a round trip away, with and without the push-only slots (production's
    // pushes wait on the network; this machine's loopback hides it).
    for (slots, name) in [
        (None, "pushes in slots of their own"),
        (Some(0), "pushes sharing the general slots"),
    ] {
        let schema = "sigbench_distant";
        let (store, _) = fresh_store(schema, &config(&distant.url, &pg_ref, &big("")), &["bench"]).await?;
        let mut o = WorkerOpts::new(schema);
        o.push_only_slots = slots;
        let phase = format!("initial sync, parse-only receiver answering after {DISTANT_MS} ms, {name}");
        let m = timed(&o, &phase, rows, bytes).await?;
        initial_sync_done(&store, name, rows).await?;
        report.add(m);
    }
    // Its interval sync too, after the others: the receiver's own writes out of the figure.
    stores.push(("snapshot, parse-only receiver", "sigbench_ackonly".into(), ack_store));

    let changed = source::change_one_percent(&c, "big", rows).await?;
    eprintln!("changed {changed} rows (1%)");
    let mut loads = Vec::new();
    for (name, schema, store) in &stores {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        store.enqueue(&[Job::new(Task::Tick)], Duration::ZERO).await?;
        let m = timed(
            &WorkerOpts::new(schema),
            &format!("interval sync after 1% changes ({name})"),
            rows,
            bytes,
        )
        .await?;
        let run = store.runs(Some("bench"), 1).await?.remove(0);
        anyhow::ensure!(
            run.display_state() == "done" && run.changes() > 0,
            "{name}: interval sync incomplete: {run:?}"
        );
        report.add(m.with("changes", run.changes()));
        loads.push(serde_json::json!({ "mode": name, "bytes": run.bytes_read, "rows": run.rows_read, "changes": run.changes() }));
    }
    report
        .notes
        .insert("source_bytes_read_per_interval_sync".into(), loads.into());

    if a.memory_rows > 0 {
        // Peak memory must not grow with the table: the same initial sync on a larger one.
        source::create_table(&c, "bigger", a.memory_rows).await?;
        let bigger_bytes = source::copy_baseline(&c, "bigger").await?;
        let toml = config(&receiver.url, &pg_ref, &[Source::new("bench", "bigger", "bigger")]);
        fresh_store("sigbench_memory", &toml, &["bench"]).await?;
        let m = timed(
            &WorkerOpts::new("sigbench_memory"),
            "initial sync of the larger table (memory)",
            a.memory_rows,
            bigger_bytes,
        )
        .await?;
        report.add(m);
        c.batch_execute(&format!("DROP TABLE {SRC}.bigger")).await?;
    }

    if let Some(first) = tables.first() {
        let onboard_bytes = source::copy_baseline(&c, first).await? * a.sources as u64;
        // The onboarding against the receiver that acknowledges after parsing: the platform's
        // API is not ours, and our receiver's single SQLite writer would be what is measured.
        let ob = onboard::Onboarding {
            url: &ack_only.url,
            pg_ref: &pg_ref,
            tables: tables.clone(),
            rows: a.onboard_rows * a.sources as u64,
            bytes: onboard_bytes,
            steady_table: "steady",
        };
        report.add(onboard::onboarding(&ob).await?);
        report.add(onboard::resumed(&ob, a.resume_lease_secs).await?);
    }

    drop((receiver, ack_only, distant));
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", report.render());
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("bench.json"), serde_json::to_string_pretty(&report.to_json())?)?;
    eprintln!("figures written to target/bench/bench.json");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::args;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn flags_are_read_and_anything_else_is_refused() {
        let a = args(&argv("--rows 1000 --sources 2")).expect("known flags");
        assert_eq!((a.rows, a.onboard_rows, a.sources, a.memory_rows), (1000, 1000, 2, 0));
        for bad in ["--help", "--row 5", "--rows 5 extra", "--rows five"] {
            let e = args(&argv(bad)).err().map(|e| format!("{e:#}"));
            assert!(e.is_some(), "`{bad}` accepted");
        }
        let e = format!("{:#}", args(&argv("--rosw 5")).err().expect("misspelt"));
        assert!(e.contains("unknown argument `--rosw`") && e.contains("usage:"), "{e}");
    }
}
