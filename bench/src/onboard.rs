//! The whole-onboarding phases: 12 data sources onboarded by two workers while a second tenant
//! keeps syncing on its interval (its lag reported), then the same onboarding killed half way
//! and restarted (the work redone reported).

use crate::measure::{Measured, Phase};
use crate::source::{client, rows_fetched};
use crate::worker::{Worker, WorkerOpts};
use crate::{fresh_store, Source};
use signals_shared::backends::Backend;
use signals_shared::domain::job::{Job, Task};
use signals_shared::ports::Run;
use std::sync::Arc;
use std::time::Duration;

/// The steady tenant's sync interval while the other one onboards.
pub const STEADY_INTERVAL_SECS: u64 = 10;

/// What one onboarding needs.
pub struct Onboarding<'a> {
    /// Receiver URL.
    pub url: &'a str,
    /// Source connection reference.
    pub pg_ref: &'a str,
    /// Tables to onboard (one data source each) and their total rows and bytes.
    pub tables: Vec<String>,
    /// Total source rows.
    pub rows: u64,
    /// Total size as COPY text.
    pub bytes: u64,
    /// The steady tenant's table.
    pub steady_table: &'a str,
}

impl Onboarding<'_> {
    fn config(&self) -> String {
        let mut sources: Vec<Source> = self
            .tables
            .iter()
            .map(|t| Source::new("onboard", t, t).interval(3600))
            .collect();
        sources.push(Source::new("steady", "orders", self.steady_table).interval(STEADY_INTERVAL_SECS));
        crate::config(self.url, self.pg_ref, &sources)
    }
}

/// The tenant's latest run per data source.
async fn latest_runs(store: &Arc<dyn Backend>, tenant: &str, sources: usize) -> anyhow::Result<Vec<Run>> {
    let mut runs = store.runs(Some(tenant), sources * 4).await?;
    runs.sort_by(|a, b| a.source.cmp(&b.source).then(b.created_at.cmp(&a.created_at)));
    runs.dedup_by(|a, b| a.source == b.source);
    Ok(runs)
}

/// One progress line (what `signals status` shows per data source, summed): chunks, rows read,
/// batches delivered, pace and ETA. Returns the fraction done.
fn progress(runs: &[Run], sources: usize, rows: u64, elapsed: f64) -> (f64, String) {
    let done = runs.iter().filter(|r| r.display_state() == "done").count();
    let (chunks, chunks_total) = runs
        .iter()
        .fold((0, 0), |a, r| (a.0 + r.chunks_done, a.1 + r.chunks_total));
    let read: i64 = runs.iter().map(|r| r.rows_read).sum();
    let (delivered, batches) = runs
        .iter()
        .fold((0, 0), |a, r| (a.0 + r.batches_delivered, a.1 + r.batches_total));
    // Reading and delivering weigh the same; a source not yet cut counts its batches as none
    // delivered of its rows' share.
    let read_frac = read as f64 / rows.max(1) as f64;
    let sent_frac: f64 = runs
        .iter()
        .filter(|r| r.batches_total > 0)
        .map(|r| r.batches_delivered as f64 / r.batches_total as f64 * r.rows_read as f64)
        .sum::<f64>()
        / rows.max(1) as f64;
    let frac = if done == sources {
        1.0
    } else {
        (read_frac + sent_frac) / 2.0
    };
    let eta = if frac > 0.0 {
        elapsed / frac * (1.0 - frac)
    } else {
        f64::NAN
    };
    let line = format!(
        "  {elapsed:5.1} s  {done}/{sources} sources done, {chunks}/{chunks_total} chunks, {read} rows read \
         ({:.0} rows/s), {delivered}/{batches} batches delivered, {:.0}% — ETA {eta:.0} s",
        read as f64 / elapsed.max(0.001),
        frac * 100.0
    );
    (frac, line)
}

/// Starts two workers (the first also runs the timer).
fn two_workers(schema: &str, lease_secs: u64) -> anyhow::Result<[Worker; 2]> {
    let mut o = WorkerOpts::new(schema);
    o.until_idle = false;
    o.lease_secs = lease_secs;
    o.tick_secs = 1;
    let first = Worker::spawn(&o)?;
    o.tick_secs = 0;
    Ok([first, Worker::spawn(&o)?])
}

/// Polls until every source of the tenant is done, printing progress; `stop_at` returns early
/// once that fraction is reached.
async fn follow(
    store: &Arc<dyn Backend>,
    tenant: &str,
    ob: &Onboarding<'_>,
    phase: &Phase,
    stop_at: f64,
    samples: &mut Vec<serde_json::Value>,
) -> anyhow::Result<f64> {
    let mut last_print = -10.0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let runs = latest_runs(store, tenant, ob.tables.len()).await?;
        let (frac, line) = progress(&runs, ob.tables.len(), ob.rows, phase.elapsed());
        if phase.elapsed() - last_print >= 5.0 || frac >= stop_at {
            eprintln!("{line}");
            samples.push(serde_json::json!({ "seconds": phase.elapsed(), "fraction": frac }));
            last_print = phase.elapsed();
        }
        if let Some(r) = runs
            .iter()
            .find(|r| r.dead_letters > 0 || r.display_state() == "blocked")
        {
            anyhow::bail!("onboarding blocked: {r:?}");
        }
        if frac >= stop_at {
            return Ok(frac);
        }
        anyhow::ensure!(phase.elapsed() < 3600.0, "onboarding did not finish within an hour");
    }
}

/// The steady tenant's interval runs that started during the onboarding: run time (opened →
/// done) and the longest wait between two runs finishing, against its interval.
async fn steady_lag(
    store: &Arc<dyn Backend>,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<serde_json::Value> {
    let runs: Vec<Run> = store
        .runs(Some("steady"), 10_000)
        .await?
        .into_iter()
        .filter(|r| r.created_at >= since && r.kind.as_str() == "interval")
        .collect();
    let mut durations: Vec<f64> = runs
        .iter()
        .filter_map(|r| {
            r.finished_at
                .map(|f| (f - r.created_at).num_milliseconds() as f64 / 1e3)
        })
        .collect();
    durations.sort_by(f64::total_cmp);
    let mut finishes: Vec<_> = runs.iter().filter_map(|r| r.finished_at).collect();
    finishes.sort();
    let max_gap = finishes
        .windows(2)
        .map(|w| (w[1] - w[0]).num_milliseconds() as f64 / 1e3)
        .fold(0.0, f64::max);
    Ok(serde_json::json!({
        "interval_secs": STEADY_INTERVAL_SECS,
        "runs": runs.len(),
        "runs_finished": durations.len(),
        "run_seconds_median": durations.get(durations.len() / 2),
        "run_seconds_max": durations.last(),
        "longest_gap_between_finishes_secs": max_gap,
    }))
}

/// Onboards the tenant with two workers while the steady tenant syncs on its interval.
pub async fn onboarding(ob: &Onboarding<'_>) -> anyhow::Result<Measured> {
    let (store, _) = fresh_store("sigbench_onboard", &ob.config(), &["steady"]).await?;
    // The steady tenant's initial sync first: during the onboarding it only has interval work.
    let mut o = WorkerOpts::new("sigbench_onboard");
    o.concurrency = 2;
    Worker::spawn(&o)?.wait()?;
    let since = chrono::Utc::now();
    store
        .enqueue(
            &[Job::new(Task::Onboard {
                tenant: "onboard".into(),
                reports: vec![],
            })],
            Duration::ZERO,
        )
        .await?;
    let c = client().await?;
    let fetched_before = rows_fetched(&c, "onboard_").await?;
    let phase = Phase::start();
    let workers = two_workers("sigbench_onboard", 60)?;
    let mut samples = Vec::new();
    follow(&store, "onboard", ob, &phase, 1.0, &mut samples).await?;
    let secs = phase.elapsed();
    let rss: Vec<u64> = workers.into_iter().map(Worker::kill).collect();
    let lag = steady_lag(&store, since).await?;
    let fetched = rows_fetched(&c, "onboard_").await? - fetched_before;
    let mut m = phase.finish(
        &format!("onboarding: {} sources, two workers, to acknowledged", ob.tables.len()),
        ob.rows,
        ob.bytes,
        rss,
    );
    m.secs = secs;
    Ok(m.with("second_tenant_interval_syncs", lag)
        .with("progress", samples)
        .with("source_rows_fetched", fetched))
}

/// Onboards again, kills both workers (SIGKILL) half way, restarts them, and counts the work
/// done twice: source rows fetched beyond what the uninterrupted onboarding fetched (planning
/// reads keys too, so that is the baseline), and chunks that had written part of their delta
/// when killed.
pub async fn resumed(ob: &Onboarding<'_>, lease_secs: u64, clean_fetched: i64) -> anyhow::Result<Measured> {
    let (store, _) = fresh_store("sigbench_resume", &ob.config(), &["onboard"]).await?;
    let c = client().await?;
    let fetched_before = rows_fetched(&c, "onboard_").await?;
    let phase = Phase::start();
    let workers = two_workers("sigbench_resume", lease_secs)?;
    let mut samples = Vec::new();
    let at = follow(&store, "onboard", ob, &phase, 0.5, &mut samples).await?;
    let killed_at = phase.elapsed();
    let mut rss: Vec<u64> = workers.into_iter().map(Worker::kill).collect();
    let in_flight = partial_chunks(&c).await?;
    eprintln!(
        "  killed both workers at {:.0}% ({killed_at:.1} s); restarting",
        at * 100.0
    );
    let workers = two_workers("sigbench_resume", lease_secs)?;
    follow(&store, "onboard", ob, &phase, 1.0, &mut samples).await?;
    let secs = phase.elapsed();
    rss.extend(workers.into_iter().map(Worker::kill));
    let fetched = rows_fetched(&c, "onboard_").await? - fetched_before;
    let mut m = phase.finish(
        &format!("onboarding killed at 50% and restarted (lease {lease_secs} s)"),
        ob.rows,
        ob.bytes,
        rss,
    );
    m.secs = secs;
    Ok(m.with("killed_at_fraction", at)
        .with("killed_at_secs", killed_at)
        .with("chunks_partly_written_when_killed", in_flight.0)
        .with("delta_rows_discarded", in_flight.1)
        .with("source_rows_fetched", fetched)
        .with("source_rows_fetched_again", fetched - clean_fetched))
}

/// Chunks not done that had written part of their delta, and those rows.
async fn partial_chunks(c: &tokio_postgres::Client) -> anyhow::Result<(i64, i64)> {
    let r = c
        .query_one(
            "SELECT COUNT(DISTINCT (d.run_id, d.chunk_no))::BIGINT, COALESCE(SUM(d.rows), 0)::BIGINT \
             FROM sigbench_resume.delta_segments d \
             JOIN sigbench_resume.chunks c ON c.run_id = d.run_id AND c.chunk_no = d.chunk_no WHERE NOT c.done",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}
