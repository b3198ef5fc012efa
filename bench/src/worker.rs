//! Child processes: pipeline workers (so each process's memory is its own, as in production)
//! and receivers.

use crate::measure::{add_worker_cpu, peak_rss, process_cpu, watch_receiver};
use crate::source::pg_url;
use anyhow::Context;
use signals_shared::backends;
use signals_shared::connectors::DefaultConnectors;
use signals_shared::ctx::Ctx;
use signals_shared::domain::job::Stage;
use signals_shared::hosts::runner::{self, RunnerOptions};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// How a worker child runs.
#[derive(Clone)]
pub struct WorkerOpts {
    /// Store schema (the store's PostgreSQL schema on the benchmark server).
    pub schema: String,
    /// Jobs at once.
    pub concurrency: usize,
    /// Lease of a claimed job.
    pub lease_secs: u64,
    /// Exit once the queue is empty (else run until killed).
    pub until_idle: bool,
    /// Enqueue the timer tick this often (0: no timer).
    pub tick_secs: u64,
    /// Only these stages (all when empty).
    pub stages: Vec<Stage>,
    /// A merge job cuts the batches beside the merge (production's default); off for the
    /// stage-by-stage figures, where the batch stage cuts after the merge.
    pub cut_beside_merge: bool,
    /// An initial run's chunks number and cut their own batches (production's default,
    /// decision 0025); off for the stage-by-stage figures of the snapshot, merge and batch
    /// stages, which interval runs take.
    pub number_at_commit: bool,
    /// Push-only slots beside `concurrency` (`None`: production's default, half as many).
    pub push_only_slots: Option<usize>,
}

impl WorkerOpts {
    /// A worker on `schema` with the production defaults of `signals worker`.
    pub fn new(schema: &str) -> WorkerOpts {
        WorkerOpts {
            schema: schema.into(),
            concurrency: RunnerOptions::default().concurrency,
            lease_secs: 60,
            until_idle: true,
            tick_secs: 0,
            stages: Vec::new(),
            cut_beside_merge: true,
            number_at_commit: true,
            push_only_slots: None,
        }
    }
}

/// The child side: runs the pipeline, then prints its peak RSS and store writes as JSON.
pub async fn child(args: &[String]) -> anyhow::Result<()> {
    let arg = |i: usize| args.get(i).cloned().context("worker: missing argument");
    let schema = arg(0)?;
    let stages = arg(5)?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            Stage::ALL
                .into_iter()
                .find(|st| st.as_str() == s)
                .with_context(|| format!("unknown stage {s}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tick: u64 = arg(4)?.parse()?;
    let opts = RunnerOptions {
        concurrency: arg(1)?.parse()?,
        lease: Duration::from_secs(arg(2)?.parse()?),
        until_idle: arg(3)? == "1",
        tick_every: (tick > 0).then(|| Duration::from_secs(tick)),
        stages,
        push_only_slots: arg(7)?.parse().ok(),
        ..RunnerOptions::default()
    };
    let store = backends::open_for(&pg_url(), &schema, opts.store_connections()).await?;
    let mut ctx = Ctx::new(store.clone(), Arc::new(DefaultConnectors::default()));
    ctx.cut_beside_merge = arg(6)? == "1";
    // `SIGNALS_BENCH_MERGE_INITIAL` set: every initial run merges and cuts as before decision
    // 0025, so the same build measures both paths on one machine in one hour.
    ctx.number_at_commit = arg(8)? == "1" && std::env::var_os("SIGNALS_BENCH_MERGE_INITIAL").is_none();
    let ctx = Arc::new(ctx);
    runner::run(ctx, store.clone(), opts, std::future::pending()).await?;
    let metrics = signals_shared::metrics::render(&[]);
    let total = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    println!(
        "{}",
        serde_json::json!({
            "peak_rss": peak_rss("self"),
            "cpu_secs": process_cpu("self"),
            "rows_written": store.rows_written(),
            "rows_read": total("signals_rows_read_total"),
            "batches_pushed": total("signals_batches_pushed_total"),
        })
    );
    Ok(())
}

/// What an `until_idle` worker reports as it exits.
pub struct WorkerReport {
    /// Peak RSS, bytes.
    pub peak_rss: u64,
    /// Rows it wrote to the store.
    pub rows_written: u64,
    /// Source rows it read (chunks it finished).
    pub rows_read: u64,
    /// Batches it delivered.
    pub batches_pushed: u64,
}

/// The profiler to start a phase's worker under, if any: `SIGNALS_BENCH_PROFILER` (a command
/// that takes the program and its arguments, such as `heaptrack`) for the store schemas listed
/// in `SIGNALS_BENCH_PROFILE` (comma-separated, e.g. `sigbench_snapshot,sigbench_memory`). A
/// profile of one phase's own process answers what a whole-machine `perf record` cannot: what
/// that worker's heap held at its peak.
fn profiler_for(schema: &str) -> Option<String> {
    let listed = std::env::var("SIGNALS_BENCH_PROFILE").ok()?;
    listed
        .split(',')
        .any(|s| s.trim() == schema)
        .then(|| std::env::var("SIGNALS_BENCH_PROFILER").ok())
        .flatten()
}

/// A worker child process.
pub struct Worker(Child);

impl Worker {
    /// Starts one.
    pub fn spawn(o: &WorkerOpts) -> anyhow::Result<Worker> {
        let stages: Vec<&str> = o.stages.iter().map(|s| s.as_str()).collect();
        let exe = std::env::current_exe()?;
        let mut cmd = match profiler_for(&o.schema) {
            Some(profiler) => {
                let mut c = Command::new(profiler);
                c.arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let child = cmd
            .args([
                "worker",
                &o.schema,
                &o.concurrency.to_string(),
                &o.lease_secs.to_string(),
                if o.until_idle { "1" } else { "0" },
                &o.tick_secs.to_string(),
                &stages.join(","),
                if o.cut_beside_merge { "1" } else { "0" },
                &o.push_only_slots.map_or("default".into(), |n| n.to_string()),
                if o.number_at_commit { "1" } else { "0" },
            ])
            .stdout(Stdio::piped())
            .spawn()?;
        Ok(Worker(child))
    }

    /// Its peak RSS so far.
    pub fn peak_rss(&self) -> u64 {
        peak_rss(&self.0.id().to_string())
    }

    /// Waits for an `until_idle` worker and reads its report: the first line of its output that
    /// is a JSON object (a profiler around it prints lines of its own).
    pub fn wait(mut self) -> anyhow::Result<WorkerReport> {
        let out = std::io::BufReader::new(self.0.stdout.take().context("worker stdout")?);
        let mut line = String::new();
        // Read to the end: a profiler that prints after the worker exits must not find the pipe
        // closed.
        for l in out.lines() {
            let l = l?;
            if line.is_empty() && l.starts_with('{') {
                line = l;
            }
        }
        let status = self.0.wait()?;
        anyhow::ensure!(status.success(), "a worker failed: {status}");
        let v: serde_json::Value = serde_json::from_str(line.trim()).context("worker report")?;
        add_worker_cpu(v["cpu_secs"].as_f64().unwrap_or(0.0));
        let n = |k: &str| v[k].as_f64().unwrap_or(0.0) as u64;
        Ok(WorkerReport {
            peak_rss: n("peak_rss"),
            rows_written: n("rows_written"),
            rows_read: n("rows_read"),
            batches_pushed: n("batches_pushed"),
        })
    }

    /// Kills it at once (SIGKILL: a crash, not a shutdown); returns its peak RSS.
    pub fn kill(mut self) -> u64 {
        let peak = self.peak_rss();
        add_worker_cpu(process_cpu(&self.0.id().to_string()));
        let _ = self.0.kill();
        let _ = self.0.wait();
        peak
    }
}

/// The child side of a receiver: prints its URL and serves until killed.
pub async fn receiver_child(db: &str, ack_after_parse: bool, answer_after_ms: u64) -> anyhow::Result<()> {
    use signals_shared::receiver::faults::{FaultRates, RateFaults};
    use signals_shared::receiver::{db::ReceiverDb, server};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("http://{}", listener.local_addr()?);
    let mut state = server::ReceiverState::new(ReceiverDb::open(std::path::Path::new(db))?, None);
    state.ack_after_parse = ack_after_parse;
    if answer_after_ms > 0 {
        // Every request waits, as one to a destination a round trip away would.
        let rates = FaultRates {
            slow: 1.0,
            slow_ms: answer_after_ms,
            ..FaultRates::default()
        };
        state.rates = Some(RateFaults::new(rates, 1));
    }
    server::serve(listener, Arc::new(state), std::future::pending()).await?;
    Ok(())
}

/// A receiver child process, killed on drop.
pub struct Receiver {
    child: Child,
    /// Its base URL.
    pub url: String,
}

impl Receiver {
    /// Starts one on a SQLite file (`ack_after_parse`: acknowledge before applying), answering
    /// each batch no sooner than `answer_after_ms`.
    pub fn spawn(db: &std::path::Path, ack_after_parse: bool, answer_after_ms: u64) -> anyhow::Result<Receiver> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["receiver", &db.display().to_string()]);
        if ack_after_parse {
            cmd.arg("--ack-after-parse");
        }
        cmd.args(["--answer-after-ms", &answer_after_ms.to_string()]);
        let mut child = cmd.stdout(Stdio::piped()).spawn()?;
        watch_receiver(child.id());
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("receiver stdout")?).read_line(&mut line)?;
        Ok(Receiver {
            child,
            url: line.trim().to_owned(),
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
