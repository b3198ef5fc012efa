//! The whole-onboarding phases: 12 data sources onboarded by two workers while a second tenant
//! keeps syncing on its interval (its lag reported), then the same onboarding killed half way
//! and restarted (the work redone reported).

use crate::measure::{Measured, Phase};
use crate::source::client;
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
    // Nothing done yet gives no pace to go by.
    let eta = if frac > 0.0 {
        format!("{:.0} s", elapsed / frac * (1.0 - frac))
    } else {
        "not yet known".into()
    };
    let line = format!(
        "  {elapsed:5.1} s  {done}/{sources} sources done, {chunks}/{chunks_total} chunks, {read} rows read \
         ({:.0} rows/s), {delivered}/{batches} batches delivered, {:.0}% — ETA {eta}",
        read as f64 / elapsed.max(0.001),
        frac * 100.0
    );
    (frac, line)
}

/// Starts two workers; with `tick`, the first also runs the timer, and both run until killed
/// (else both exit once the queue is empty).
fn two_workers(schema: &str, lease_secs: u64, tick: bool) -> anyhow::Result<[Worker; 2]> {
    let mut o = WorkerOpts::new(schema);
    o.until_idle = !tick;
    o.lease_secs = lease_secs;
    o.tick_secs = u64::from(tick);
    let first = Worker::spawn(&o)?;
    o.tick_secs = 0;
    Ok([first, Worker::spawn(&o)?])
}

/// When to stop following an onboarding.
#[derive(Clone, Copy)]
enum Until {
    /// Every source done.
    Done,
    /// Half of all chunks read (every source planned).
    HalfTheChunks,
}

/// Polls until every source of the tenant is done, printing progress; `stop_at` returns early
/// once that fraction is reached.
async fn follow(
    store: &Arc<dyn Backend>,
    tenant: &str,
    ob: &Onboarding<'_>,
    phase: &Phase,
    until: Until,
    samples: &mut Vec<serde_json::Value>,
) -> anyhow::Result<Vec<Run>> {
    let mut last_print = -10.0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let runs = latest_runs(store, tenant, ob.tables.len()).await?;
        let (frac, line) = progress(&runs, ob.tables.len(), ob.rows, phase.elapsed());
        let (chunks, total) = runs
            .iter()
            .fold((0, 0), |a, r| (a.0 + r.chunks_done, a.1 + r.chunks_total));
        let planned = runs.len() == ob.tables.len() && runs.iter().all(|r| r.chunks_total > 0);
        let stop = match until {
            Until::Done => frac >= 1.0,
            Until::HalfTheChunks => planned && chunks * 2 >= total,
        };
        if phase.elapsed() - last_print >= 5.0 || stop {
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
        if stop {
            return Ok(runs);
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
    crate::source::checkpoint(&c).await?;
    let wal = crate::source::wal_lsn(&c).await?;
    let phase = Phase::start();
    let workers = two_workers("sigbench_onboard", 60, true)?;
    let mut samples = Vec::new();
    follow(&store, "onboard", ob, &phase, Until::Done, &mut samples).await?;
    let secs = phase.elapsed();
    let rss: Vec<u64> = workers.into_iter().map(Worker::kill).collect();
    let lag = steady_lag(&store, since).await?;
    let mut m = phase.finish(
        &format!("onboarding: {} sources, two workers, to acknowledged", ob.tables.len()),
        ob.rows,
        ob.bytes,
        rss,
    );
    m.secs = secs;
    // Every byte of WAL the server wrote meanwhile (the second tenant's syncs included): the
    // store's writes, deterministic where CPU seconds are noisy.
    let wal = crate::source::wal_since(&c, &wal).await?;
    Ok(m.with("second_tenant_interval_syncs", lag)
        .with("server_wal_bytes", wal)
        .with("progress", samples))
}

/// Onboards again, kills both workers (SIGKILL) once half the chunks are read, restarts them,
/// and accounts for the work: rows read before the kill (finished chunks), the chunks in flight
/// then (their partial work is what is lost and redone), and rows read and batches pushed by
/// the restarted workers — which must come to the rest of the tables, not all of them.
pub async fn resumed(ob: &Onboarding<'_>, lease_secs: u64) -> anyhow::Result<Measured> {
    let (store, _) = fresh_store("sigbench_resume", &ob.config(), &["onboard"]).await?;
    let c = client().await?;
    crate::source::checkpoint(&c).await?;
    let phase = Phase::start();
    let workers = two_workers("sigbench_resume", lease_secs, false)?;
    let mut samples = Vec::new();
    follow(&store, "onboard", ob, &phase, Until::HalfTheChunks, &mut samples).await?;
    let mut rss: Vec<u64> = workers.into_iter().map(Worker::kill).collect();
    let killed_at = phase.elapsed();
    let in_flight: i64 = c
        .query_one(
            "SELECT COUNT(*) FROM sigbench_resume.jobs WHERE stage = 'snapshot' AND lease_token IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    // What the store holds once the workers are dead: chunks that finished between the last
    // progress sample and the kill were read before it (and are not read again).
    let at_kill = latest_runs(&store, "onboard", ob.tables.len()).await?;
    let read_before: i64 = at_kill.iter().map(|r| r.rows_read).sum();
    let (chunks_done, chunks_total) = at_kill
        .iter()
        .fold((0, 0), |a, r| (a.0 + r.chunks_done, a.1 + r.chunks_total));
    let delivered_before: i64 = at_kill.iter().map(|r| r.batches_delivered).sum();
    eprintln!("  killed both workers at {chunks_done}/{chunks_total} chunks ({killed_at:.1} s), {in_flight} in flight; restarting");
    let workers = two_workers("sigbench_resume", lease_secs, false)?;
    let reports: Vec<_> = workers.into_iter().map(Worker::wait).collect::<anyhow::Result<_>>()?;
    let secs = phase.elapsed();
    let runs = latest_runs(&store, "onboard", ob.tables.len()).await?;
    anyhow::ensure!(
        runs.iter().all(|r| r.display_state() == "done"),
        "the restarted workers did not finish: {runs:?}"
    );
    rss.extend(reports.iter().map(|r| r.peak_rss));
    let read_after: u64 = reports.iter().map(|r| r.rows_read).sum();
    let pushed_after: u64 = reports.iter().map(|r| r.batches_pushed).sum();
    let batches: i64 = runs.iter().map(|r| r.batches_total).sum();
    let mut m = phase.finish(
        &format!("onboarding killed at half its chunks and restarted (lease {lease_secs} s)"),
        ob.rows,
        ob.bytes,
        rss,
    );
    m.secs = secs;
    Ok(m.with("killed_at_secs", killed_at)
        .with("chunks_done_when_killed", chunks_done)
        .with("chunks_total", chunks_total)
        .with("chunks_in_flight_when_killed", in_flight)
        .with("rows_read_before_kill", read_before)
        .with("rows_read_after_restart", read_after)
        .with("rows_read_twice", read_before + read_after as i64 - ob.rows as i64)
        .with("batches_delivered_before_kill", delivered_before)
        .with("batches_pushed_after_restart", pushed_after)
        .with("batches_pushed_twice", delivered_before + pushed_after as i64 - batches)
        .with("progress", samples))
}
