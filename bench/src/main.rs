//! `signals-bench pg [--rows N]`: a 1,000,000-row PostgreSQL source through snapshot, merge and a
//! full initial sync to a receiver (in a child process), each reported as seconds, rows/s, MB/s
//! and peak RSS beside `COPY (SELECT ...) TO STDOUT` of the same table timed in the same run —
//! the machine is shared and noisy, so only ratios within one run mean anything.

mod measure;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use measure::{Phase, Report};
use signals_shared::backends::{self, Backend};
use signals_shared::connectors::DefaultConnectors;
use signals_shared::ctx::Ctx;
use signals_shared::domain::job::{Job, Stage, Task};
use signals_shared::hosts::runner::{self, RunnerOptions};
use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

const SRC: &str = "sigbench_src";

fn pg_url() -> String {
    std::env::var("SIGNALS_BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("pg") => {
            let rows = match args.iter().position(|a| a == "--rows") {
                Some(i) => args.get(i + 1).context("--rows needs a number")?.parse()?,
                None => 1_000_000,
            };
            pg(rows).await
        }
        Some("receiver") => {
            receiver(
                args.get(1).context("receiver needs a db path")?,
                args.iter().any(|a| a == "--ack-after-parse"),
            )
            .await
        }
        _ => bail!("usage: signals-bench pg [--rows N]"),
    }
}

/// The child process: a receiver that prints its URL and serves until killed.
async fn receiver(db: &str, ack_after_parse: bool) -> anyhow::Result<()> {
    use signals_shared::receiver::{db::ReceiverDb, server};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("http://{}", listener.local_addr()?);
    let mut state = server::ReceiverState::new(ReceiverDb::open(std::path::Path::new(db))?, None);
    state.ack_after_parse = ack_after_parse;
    let state = Arc::new(state);
    server::serve(listener, state, std::future::pending()).await?;
    Ok(())
}

/// A receiver in a child process (its memory is its own); returns it and its URL.
fn spawn_receiver(db: &std::path::Path, ack_after_parse: bool) -> anyhow::Result<(std::process::Child, String)> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["receiver", &db.display().to_string()]);
    if ack_after_parse {
        cmd.arg("--ack-after-parse");
    }
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("receiver stdout")?).read_line(&mut line)?;
    Ok((child, line.trim().to_owned()))
}

async fn client() -> anyhow::Result<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .context("PostgreSQL")?;
    tokio::spawn(conn);
    Ok(c)
}

async fn create_source(c: &tokio_postgres::Client, rows: i64) -> anyhow::Result<()> {
    c.batch_execute(&format!(
        "DROP SCHEMA IF EXISTS {SRC} CASCADE; CREATE SCHEMA {SRC};
         CREATE TABLE {SRC}.big (id BIGINT PRIMARY KEY, customer_id INTEGER, sku TEXT, name TEXT, qty SMALLINT,
             price NUMERIC(12,2), discount DOUBLE PRECISION, paid BOOLEAN, ordered_on DATE, created_at TIMESTAMPTZ,
             updated_at TIMESTAMP, ref UUID, notes TEXT);
         INSERT INTO {SRC}.big SELECT i, i % 50000, 'SKU-' || (i % 9973), 'customer name ' || md5(i::text), (i % 30)::smallint,
             (i % 100000) / 100.0, (i % 17) / 7.0, i % 3 = 0, DATE '2020-01-01' + (i % 2000),
             TIMESTAMPTZ '2024-01-01 00:00:00+00' + i * INTERVAL '1 second', TIMESTAMP '2024-06-01' + i * INTERVAL '1 second',
             md5(i::text)::uuid, CASE WHEN i % 5 = 0 THEN NULL ELSE 'note ' || repeat('x', (i % 40)::int) END
         FROM generate_series(1, {rows}) AS i;
         ANALYZE {SRC}.big;"
    ))
    .await?;
    Ok(())
}

async fn copy_baseline(c: &tokio_postgres::Client) -> anyhow::Result<u64> {
    let stream = c
        .copy_out(&format!("COPY (SELECT * FROM {SRC}.big ORDER BY id) TO STDOUT"))
        .await?;
    futures_util::pin_mut!(stream);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len() as u64;
    }
    Ok(bytes)
}

fn config(url: &str, pg_ref: &str, extra: &str) -> String {
    format!(
        "[destinations.receiver]\nurl = \"{url}\"\nbatch_max_rows = 5000\n\n[tenants.bench]\ndestination = \"receiver\"\n\n\
         [tenants.bench.connections.pg]\nurl = \"{pg_ref}\"\n\n\
         [tenants.bench.sources.big]\nconnection = \"pg\"\ntable = \"{SRC}.big\"\nkey = [\"id\"]\nchunk_rows = 100000\n\
         interval_secs = 1\n{extra}"
    )
}

/// 0.5% updates (moving `updated_at`), 0.25% inserts, 0.25% deletes.
async fn change_one_percent(c: &tokio_postgres::Client, rows: i64) -> anyhow::Result<u64> {
    let (upd, ins) = (rows / 200, rows / 400);
    let n = c.execute(&format!("UPDATE {SRC}.big SET name = name || '*', updated_at = now() WHERE id % 200 = 7"), &[]).await?
        + c.execute(&format!("DELETE FROM {SRC}.big WHERE id % 400 = 3"), &[]).await?
        + c.execute(
            &format!(
                "INSERT INTO {SRC}.big SELECT i, 1, 'SKU-new', 'new', 1, 1.00, 0, true, DATE '2026-01-01', now(), now(), \
                 md5(i::text)::uuid, NULL FROM generate_series({rows} + 1, {rows} + {ins}) AS i"
            ),
            &[],
        )
        .await?;
    let _ = upd;
    Ok(n)
}

async fn fresh_store(name: &str, toml: &str) -> anyhow::Result<(Arc<dyn Backend>, Arc<Ctx>)> {
    client()
        .await?
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
        .await?;
    let store = backends::open(&pg_url(), name).await?;
    store.apply_config(toml, "bench").await?;
    store
        .enqueue(
            &[Job::new(Task::Onboard {
                tenant: "bench".into(),
                reports: vec![],
            })],
            Duration::ZERO,
        )
        .await?;
    let ctx = Arc::new(Ctx::new(store.clone(), Arc::new(DefaultConnectors::default())));
    Ok((store, ctx))
}

/// Reads the whole table through the PostgreSQL source adapter, counting rows.
async fn read_source(pg_ref: &str) -> anyhow::Result<u64> {
    use signals_shared::ports::{KeyRange, SnapshotSource, SourceSpec};
    let url = std::fs::read_to_string(pg_ref.trim_start_matches("file:"))?;
    let source = signals_shared::postgres::source::PgSource::new(
        signals_shared::postgres::pool::pool(&url, 2).map_err(anyhow::Error::msg)?,
        "pg",
    );
    let spec = SourceSpec {
        table: Some(format!("{SRC}.big")),
        query: None,
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

async fn run_stages(ctx: &Arc<Ctx>, store: &Arc<dyn Backend>, stages: &[Stage]) -> anyhow::Result<()> {
    let opts = RunnerOptions {
        until_idle: true,
        concurrency: 2,
        stages: stages.to_vec(),
        ..RunnerOptions::default()
    };
    runner::run(ctx.clone(), store.clone(), opts, std::future::pending()).await?;
    Ok(())
}

async fn pg(rows: i64) -> anyhow::Result<()> {
    let c = client().await?;
    eprintln!("creating {rows} rows in {SRC}.big …");
    create_source(&c, rows).await?;
    let dir = std::env::temp_dir().join(format!("signals-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // The source connection is a secret reference, as in production.
    std::fs::write(dir.join("pg.url"), pg_url())?;
    let pg_ref = format!("file:{}", dir.join("pg.url").display());
    let (mut child, url) = spawn_receiver(&dir.join("receiver.db"), false)?;
    let (mut parse_only, parse_only_url) = spawn_receiver(&dir.join("receiver-ack.db"), true)?;

    let mut report = Report::new(rows as u64);
    let p = Phase::start();
    let bytes = copy_baseline(&c).await?;
    report.baseline(p.finish("COPY (SELECT … ORDER BY id) TO STDOUT, text, read by client", bytes));

    let p = Phase::start();
    let read = read_source(&pg_ref).await?;
    anyhow::ensure!(read == rows as u64, "read {read} rows, expected {rows}");
    report.add(p.finish(
        "source read only: row stream → canonical values (the snapshot's reader)",
        bytes,
    ));

    let (store, ctx) = fresh_store("sigbench_stages", &config(&url, &pg_ref, "")).await?;
    let p = Phase::start();
    run_stages(&ctx, &store, &[Stage::Scheduler, Stage::Snapshot]).await?;
    report.add(p.finish("snapshot: read, hash, diff, write delta (initial: every row)", bytes));
    let p = Phase::start();
    run_stages(&ctx, &store, &[Stage::Merge]).await?;
    report.add(p.finish("merge: delta → staging, one transaction", bytes));
    let p = Phase::start();
    run_stages(&ctx, &store, &[Stage::Batch, Stage::Push]).await?;
    report.add(p.finish("batch + push to the receiver (HTTP, SQLite apply)", bytes));

    // One full initial sync per diff mode (the snapshot one timed), then one 1% change, then
    // one interval sync per mode: bytes read from the source beside the table's size.
    let modes = [("snapshot", ""), ("remote_hash", "diff = \"remote_hash\"\n"), (
        "watermark",
        "diff = \"watermark\"\nwatermark_column = \"updated_at\"\nwatermark_overlap = 60\nfull_diff_interval_secs = 86400\n",
    )];
    let mut stores = Vec::new();
    for (i, (name, extra)) in modes.iter().enumerate() {
        let (store, ctx) = fresh_store(&format!("sigbench_{name}"), &config(&url, &pg_ref, extra)).await?;
        let p = Phase::start();
        run_stages(&ctx, &store, &[]).await?;
        let m = p.finish(
            &format!("full initial sync, all stages concurrently ({name} mode)"),
            bytes,
        );
        if i == 0 {
            report.add(m);
        }
        let runs = store.runs(Some("bench"), 1).await?;
        anyhow::ensure!(
            runs.first()
                .is_some_and(|r| r.display_state() == "done" && r.inserts == rows),
            "{name}: initial sync incomplete: {runs:?}"
        );
        eprintln!("{name}: initial sync done");
        stores.push((*name, store, ctx));
    }
    let (store, ctx) = fresh_store("sigbench_ackonly", &config(&parse_only_url, &pg_ref, "")).await?;
    let p = Phase::start();
    run_stages(&ctx, &store, &[]).await?;
    report.add(p.finish(
        "full initial sync, receiver acknowledging after parsing (no SQLite apply)",
        bytes,
    ));
    let _ = parse_only.kill();
    let changed = change_one_percent(&c, rows).await?;
    eprintln!("changed {changed} rows (1%)");
    let mut loads = Vec::new();
    for (name, store, ctx) in &stores {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        store.enqueue(&[Job::new(Task::Tick)], Duration::ZERO).await?;
        let p = Phase::start();
        run_stages(ctx, store, &[]).await?;
        report.add(p.finish(&format!("interval sync after 1% changes ({name} mode)"), bytes));
        let run = store.runs(Some("bench"), 1).await?.remove(0);
        anyhow::ensure!(
            run.display_state() == "done" && run.changes() > 0,
            "{name}: interval sync incomplete: {run:?}"
        );
        loads.push((*name, run.bytes_read, run.rows_read, run.changes()));
    }
    let full = loads.first().map_or(1, |l| l.1).max(1);
    println!(
        "\nbytes read from the source by one interval sync after 1% changes (table: {:.1} MB as COPY text)\n",
        bytes as f64 / 1e6
    );
    println!("| mode | bytes read | × snapshot mode | rows read | changes sent |\n| --- | ---: | ---: | ---: | ---: |");
    for (name, read, rows_read, changes) in &loads {
        println!(
            "| {name} | {:.1} MB | {:.3} | {rows_read} | {changes} |",
            *read as f64 / 1e6,
            *read as f64 / full as f64
        );
    }
    let _ = child.kill();
    let _ = std::fs::remove_dir_all(&dir);
    print!("{}", report.render());
    let mut json = report.to_json();
    json["source_bytes_read_per_interval_sync"] = loads
        .iter()
        .map(|(name, read, rows_read, changes)| serde_json::json!({ "mode": name, "bytes": read, "rows": rows_read, "changes": changes }))
        .collect::<Vec<_>>()
        .into();
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("pg.json"), serde_json::to_string_pretty(&json)?)?;
    eprintln!("figures written to target/bench/pg.json");
    Ok(())
}
