//! Many worker processes sharing one PostgreSQL store and queue: they sync a tenant of four
//! 100,000-row data sources, survive two of them being killed with SIGKILL mid-snapshot and
//! mid-push, dead-letter a poison job without holding up the others, and drain on SIGTERM.

use signals_shared::domain::job::{Job, Task};
use signals_tests::{
    cli_onboard, create_items, free_port, http_get, items_and_a_poison_source, items_source, mutate_items, run_cli,
    terminate, Harness, PgSource, StoreKind,
};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_signals-under-test");
const ROWS: i64 = 100_000;
const TABLES: [&str; 4] = ["accounts", "invoices", "payments", "events"];

fn spawn_worker(h: &Harness, crash_at: Option<&str>, extra: &[&str]) -> Child {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--store",
        &h.store_spec,
        "--store-schema",
        &h.store_schema,
        "worker",
        "--concurrency",
        "2",
        "--lease-secs",
        "2",
    ])
    .args(extra)
    .env("SIGNALS_LOG_FORMAT", "json")
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(p) = crash_at {
        cmd.env("SIGNALS_CRASH_AT", p);
    }
    cmd.spawn().expect("spawn worker")
}

/// Waits until every run of tenant `t` is done and the queue is empty.
async fn wait_all_done(h: &Harness, runs_expected: usize, limit: Duration) {
    let started = Instant::now();
    loop {
        let runs = h.runs().await;
        let (depth, _) = h.store.depth(&[]).await.unwrap();
        if runs.len() == runs_expected && runs.iter().all(|r| r.display_state() == "done") && depth == 0 {
            return;
        }
        assert!(started.elapsed() < limit, "runs not done after {limit:?}: {runs:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn killed_by_sigkill(w: &mut Child, what: &str) {
    let status = w
        .try_wait()
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: crash point never reached, worker still running"));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{what}: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_sync_four_large_sources_through_kills() {
    let h = Harness::on(StoreKind::Postgres).await;
    let pg = PgSource::new(&h).await;
    let mut sources = String::new();
    for t in TABLES {
        pg.exec(&format!(
            "CREATE TABLE {{s}}.{t} (id BIGINT PRIMARY KEY, name TEXT, amount NUMERIC(12,2), at TIMESTAMPTZ, flag BOOLEAN);
             INSERT INTO {{s}}.{t} SELECT i, 'row ' || i, (i % 100000) / 100.0, '2025-01-01'::timestamptz + i * interval '1 minute', i % 2 = 0
             FROM generate_series(1, {ROWS}) AS i;"
        ))
        .await;
        sources.push_str(&format!(
            "[tenants.t.sources.{t}]\nconnection = \"db\"\ntable = \"{{s}}.{t}\"\nkey = [\"id\"]\ninterval_secs = 1\nchunk_rows = 20000\n\n"
        ));
    }
    h.apply(
        &pg.config(&h, &sources)
            .replace("batch_max_rows = 500", "batch_max_rows = 5000"),
    )
    .await;
    h.enqueue_onboard().await;

    let mut snap_victim = spawn_worker(&h, Some("after_chunk_delta:2"), &[]);
    let mut push_victim = spawn_worker(&h, Some("after_push_2xx:3"), &[]);
    let survivor = spawn_worker(&h, None, &[]);
    wait_all_done(&h, 4, Duration::from_secs(600)).await;
    killed_by_sigkill(&mut snap_victim, "mid-snapshot worker");
    killed_by_sigkill(&mut push_victim, "mid-push worker");
    h.assert_in_sync().await;
    assert_eq!(h.stats().changes, 4 * ROWS, "every row pushed once");

    for t in TABLES {
        pg.exec(&format!(
            "UPDATE {{s}}.{t} SET name = name || '*' WHERE id % 100 = 0; DELETE FROM {{s}}.{t} WHERE id % 199 = 0;
             INSERT INTO {{s}}.{t} SELECT i, 'new', 1, now(), true FROM generate_series({ROWS} + 1, {ROWS} + 500) AS i;"
        ))
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The interval sync starts on the two victims alone, so each surely reaches its crash point
    // (the snapshot victim at its first chunk, then the push victim at its first push); a fresh
    // worker joins once both are dead and finishes the runs after their leases expire.
    terminate(survivor);
    let mut snap_victim = spawn_worker(&h, Some("after_chunk_delta:1"), &[]);
    let mut push_victim = spawn_worker(&h, Some("after_push_2xx:1"), &[]);
    h.store.enqueue(&[Job::new(Task::Tick)], Duration::ZERO).await.unwrap();
    let started = Instant::now();
    while snap_victim.try_wait().unwrap().is_none() || push_victim.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the victims never reached their crash points"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    killed_by_sigkill(&mut snap_victim, "mid-snapshot worker (interval)");
    killed_by_sigkill(&mut push_victim, "mid-push worker (interval)");
    let survivor = spawn_worker(&h, None, &[]);
    wait_all_done(&h, 8, Duration::from_secs(600)).await;
    let interval: Vec<_> = h.runs().await.into_iter().take(4).collect();
    for r in &interval {
        assert_eq!(
            (r.inserts, r.updates, r.deletes),
            (500, 995, 502),
            "{} changes",
            r.source
        );
    }
    h.assert_in_sync().await;
    assert!(h.store.dead_letters(true).await.unwrap().is_empty());
    terminate(survivor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_job_is_dead_lettered_without_holding_up_other_sources() {
    let h = Harness::on(StoreKind::Postgres).await;
    create_items(&h.src(), 2_000);
    let (sources, missing) = items_and_a_poison_source(&h);
    cli_onboard(BIN, &h, &h.config(&sources));
    let retry = [
        "--max-attempts",
        "3",
        "--backoff-base-ms",
        "50",
        "--backoff-cap-ms",
        "200",
    ];
    let worker = spawn_worker(&h, None, &retry);

    let started = Instant::now();
    loop {
        let dead = h.store.dead_letters(true).await.unwrap();
        let items_done = h
            .runs()
            .await
            .iter()
            .any(|r| r.source == "items" && r.display_state() == "done");
        if items_done && !dead.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no dead letter / items not done"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    h.assert_in_sync_for("items").await;
    let (_, list) = run_cli(BIN, &h, &["dlq", "list"], &[]);
    assert!(
        list.contains("poison") && list.contains("cannot connect to source `later`"),
        "{list}"
    );
    let (_, show) = run_cli(BIN, &h, &["dlq", "show", "1"], &[]);
    assert!(
        show.contains("\"attempts\": 3") && show.contains("no database file at"),
        "{show}"
    );

    create_items(&rusqlite::Connection::open(&missing).unwrap(), 300);
    let (status, out) = run_cli(BIN, &h, &["dlq", "retry", "--all"], &[]);
    assert!(status.success(), "{out}");
    let started = Instant::now();
    while !h.runs().await.iter().all(|r| r.display_state() == "done") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "poison source did not finish after retry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(h.stats().changes, 2_300);
    terminate(worker);
}

/// Every line of a Prometheus text exposition is a comment or `name{labels} value`.
fn assert_prometheus_text(text: &str) {
    for line in text.lines() {
        if line.starts_with("# TYPE ") || line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in {line:?}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "bad metric name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(
                    labels.starts_with('{') && labels.ends_with('}'),
                    "bad labels in {line:?}"
                );
                for pair in labels[1..labels.len() - 1].split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line:?}");
                    assert!(!v.trim_end_matches('"').contains('"') || v.contains("\\\""), "{line:?}");
                }
            }
        }
    }
}

/// The value of the sample `name` whose labels include `labels` (summed over the others).
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a single value"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_probes_and_metrics_that_match_the_run_history() {
    let h = Harness::on(StoreKind::Sqlite).await;
    create_items(&h.src(), 1_500);
    let (sources, _) = items_and_a_poison_source(&h);
    h.apply(&h.config(&sources)).await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(BIN);
    cmd.args([
        "--store",
        &h.store_spec,
        "worker",
        "--concurrency",
        "2",
        "--lease-secs",
        "2",
    ])
    .args([
        "--max-attempts",
        "2",
        "--backoff-base-ms",
        "50",
        "--backoff-cap-ms",
        "100",
    ])
    .args(["--listen", &addr])
    .env("SIGNALS_METRICS_LABELS", "source")
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let worker = cmd.spawn().expect("spawn worker");
    let onboard = Job::new(Task::Onboard {
        tenant: "t".into(),
        reports: vec![],
    });
    h.store.enqueue(&[onboard], Duration::ZERO).await.unwrap();
    let wait_items_done = |n: usize| {
        let h = &h;
        async move {
            let started = Instant::now();
            loop {
                let runs = h.runs().await;
                let done = runs
                    .iter()
                    .filter(|r| r.source == "items" && r.display_state() == "done");
                let blocked = runs
                    .iter()
                    .any(|r| r.source == "poison" && r.display_state() == "blocked");
                if done.count() == n && blocked && h.store.depth(&[]).await.unwrap().0 == 0 {
                    return runs;
                }
                assert!(started.elapsed() < Duration::from_secs(60), "not settled: {runs:#?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_items_done(1).await;
    mutate_items(&h.src(), 1_500);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    h.store.enqueue(&[Job::new(Task::Tick)], Duration::ZERO).await.unwrap();
    let runs = wait_items_done(2).await;

    assert!(http_get(&addr, "/healthz").await.starts_with("HTTP/1.0 200"));
    assert!(http_get(&addr, "/readyz").await.starts_with("HTTP/1.0 200"));
    let response = http_get(&addr, "/metrics").await;
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    let text = response.split_once("\r\n\r\n").unwrap().1;
    assert_prometheus_text(text);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let m = |name: &str, labels: &[(&str, &str)]| sample(&scrape, name, labels);

    // Counters against the run history in the store.
    let sum = |f: fn(&signals_shared::ports::Run) -> i64| runs.iter().map(f).sum::<i64>() as f64;
    assert_eq!(m("signals_rows_read_total", &[]), sum(|r| r.rows_read), "{text}");
    assert_eq!(m("signals_changes_total", &[("op", "insert")]), sum(|r| r.inserts));
    assert_eq!(m("signals_changes_total", &[("op", "update")]), sum(|r| r.updates));
    assert_eq!(m("signals_changes_total", &[("op", "delete")]), sum(|r| r.deletes));
    assert_eq!(m("signals_batches_pushed_total", &[]), sum(|r| r.batches_delivered));
    assert_eq!(m("signals_bytes_pushed_total", &[]), sum(|r| r.bytes));
    assert_eq!(
        m("signals_push_total", &[("class", "2xx")]),
        sum(|r| r.batches_delivered)
    );
    assert_eq!(m("signals_push_seconds_count", &[]), sum(|r| r.batches_delivered));
    let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    let timings = h.store.stage_timings(&ids).await.unwrap();
    for stage in ["snapshot", "merge", "batch", "push"] {
        let of_stage = timings.iter().filter(|t| t.stage == stage);
        let (jobs, failures) = of_stage.fold((0, 0), |(j, f), t| (j + t.jobs, f + t.failures));
        assert_eq!(
            m("signals_jobs_total", &[("stage", stage)]),
            jobs as f64,
            "{stage}: {text}"
        );
        assert_eq!(
            m(
                "signals_jobs_total",
                &[("stage", stage), ("outcome", "failed_retryable")]
            ) + m("signals_jobs_total", &[("stage", stage), ("outcome", "failed_fatal")]),
            failures as f64,
            "{stage} failures"
        );
        assert_eq!(
            m("signals_job_duration_seconds_count", &[("stage", stage)]),
            jobs as f64
        );
    }
    // The poison source: two failed attempts, one dead letter, one blocked run.
    assert_eq!(m("signals_dead_letters_total", &[("stage", "snapshot")]), 1.0);
    assert_eq!(m("signals_open_dead_letters", &[]), 1.0);
    assert_eq!(m("signals_blocked_runs", &[]), 1.0);
    assert_eq!(m("signals_queue_depth", &[]), 0.0);
    assert_eq!(
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == "signals_queue_depth")
            .count(),
        5,
        "one depth per stage"
    );
    // Lag per data source (the operator enabled source labels): items synced moments ago; poison
    // never succeeded, so its lag runs from its first run.
    let items_lag = m("signals_source_lag_seconds", &[("tenant", "t"), ("source", "items")]);
    let poison_lag = m("signals_source_lag_seconds", &[("tenant", "t"), ("source", "poison")]);
    assert!(items_lag < 10.0 && poison_lag > items_lag, "{items_lag} {poison_lag}");
    terminate(worker);
}

/// Kubernetes stops a pod with SIGTERM and waits its grace period: a worker caught mid-push
/// stops claiming, gives its in-flight jobs the grace period, releases what is still running to
/// its lease and exits 0 in time; a second worker completes the run, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_mid_job_releases_its_work_within_the_grace_period() {
    // Every push takes 3 s at the destination: a 1 s grace period cannot see them through.
    let h = Harness::answering_after(StoreKind::Postgres, 3_000).await;
    create_items(&h.src(), 2_000);
    cli_onboard(BIN, &h, &h.config(&items_source(1_000)));
    let mut first = spawn_worker(&h, None, &["--grace-secs", "1"]);
    let started = Instant::now();
    loop {
        let runs = h.runs().await;
        if runs.first().is_some_and(|r| r.batches_total > 0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never reached the push stage: {runs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // pushes are in flight now
    let stopping = Instant::now();
    // SAFETY: kill(2) on a child pid we own.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = first.wait().unwrap();
    let took = stopping.elapsed();
    assert!(status.success(), "exit 0 after draining: {status}");
    assert!(
        took < Duration::from_millis(2_500),
        "exited {took:?} after SIGTERM with a 1 s grace period"
    );
    let run = h.runs().await.remove(0);
    assert!(
        run.batches_delivered < run.batches_total,
        "the stopped worker left pushes unfinished: {run:?}"
    );

    // Another worker picks the released jobs up when their leases run out and finishes the run.
    let second = spawn_worker(&h, None, &[]);
    wait_all_done(&h, 1, Duration::from_secs(60)).await;
    h.assert_in_sync().await;
    assert_eq!(
        h.stats().applied_twice,
        0,
        "a batch the first worker sent is not applied twice"
    );
    terminate(second);
}

/// Pushes mostly wait on the destination, so a worker runs them in slots of their own beside its
/// `--concurrency` (which bounds the jobs that read, hash and merge rows): with two slots — one of
/// them kept for interval work — and two push-only slots, a destination answering each batch
/// after 300 ms sees three requests at once, never more; without the push-only slots, one; and
/// `signals run --push-slots 3` with the same two slots, four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_run_in_slots_of_their_own_beside_the_workers_concurrency() {
    use signals_shared::hosts::runner::RunnerOptions;
    for (push_only_slots, expected) in [(Some(2), 3), (Some(0), 1)] {
        let h = twelve_batches_for_a_slow_destination().await;
        h.run_until_idle_with(RunnerOptions {
            concurrency: 2,
            push_only_slots,
            ..RunnerOptions::default()
        })
        .await;
        assert_all_sent(&h).await;
        assert_eq!(
            h.receiver.most_in_flight(),
            expected,
            "requests at once with {push_only_slots:?} push-only slots"
        );
    }
    let h = twelve_batches_for_a_slow_destination().await;
    let args = ["run", "--until-idle", "--concurrency", "2", "--push-slots", "3"];
    let (status, out) = run_cli(BIN, &h, &args, &[]);
    assert!(status.success(), "{out}");
    assert_all_sent(&h).await;
    assert_eq!(h.receiver.most_in_flight(), 4, "requests at once with --push-slots 3");
}

/// Twelve batches of 500 queued for onboarding, to a destination that answers each after 300 ms.
async fn twelve_batches_for_a_slow_destination() -> Harness {
    let h = Harness::answering_after(StoreKind::Sqlite, 300).await;
    create_items(&h.src(), 6_000);
    h.apply(&h.config(&items_source(3_000))).await;
    h.enqueue_onboard().await;
    h
}

async fn assert_all_sent(h: &Harness) {
    assert_eq!(h.runs().await[0].display_state(), "done");
    h.assert_in_sync().await;
}
