//! Many worker processes sharing one PostgreSQL store and queue: they sync a tenant of four
//! 100,000-row data sources, survive two of them being killed with SIGKILL mid-snapshot and
//! mid-push, dead-letter a poison job without holding up the others, and drain on SIGTERM.

use signals_shared::domain::job::{Job, Task};
use signals_tests::{cli_onboard, create_items, items_source, run_cli, Harness, PgSource, StoreKind};
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

fn terminate(mut w: Child) {
    // SAFETY: kill(2) on a child pid we own.
    unsafe { libc::kill(w.id() as i32, libc::SIGTERM) };
    let status = w.wait().unwrap();
    assert!(
        status.success(),
        "a worker must exit 0 after draining on SIGTERM: {status}"
    );
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
    h.store
        .enqueue(
            &[Job::new(Task::Onboard {
                tenant: "t".into(),
                reports: vec![],
            })],
            Duration::ZERO,
        )
        .await
        .unwrap();

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
    let missing = h.dir.path().join("later.db");
    let sources = format!(
        "{}\n[tenants.t.connections.later]\nsqlite_path = \"{}\"\n\n\
         [tenants.t.sources.poison]\nconnection = \"later\"\ntable = \"items\"\nkey = [\"id\"]\n",
        items_source(1_000),
        missing.display()
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_serves_probes_and_metrics() {
    let h = Harness::on(StoreKind::Sqlite).await;
    create_items(&h.src(), 1_500);
    h.apply(&h.config(&items_source(1_000))).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let worker = spawn_worker(&h, None, &["--listen", &addr]);
    h.store
        .enqueue(
            &[Job::new(Task::Onboard {
                tenant: "t".into(),
                reports: vec![],
            })],
            Duration::ZERO,
        )
        .await
        .unwrap();
    wait_all_done(&h, 1, Duration::from_secs(60)).await;
    let get = |path: &str| {
        let path = path.to_owned();
        let addr = addr.clone();
        async move {
            for _ in 0..50 {
                if let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
                        .await
                        .unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).await.unwrap();
                    return out;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("worker never listened on {addr}");
        }
    };
    assert!(get("/healthz").await.starts_with("HTTP/1.0 200"));
    assert!(get("/readyz").await.starts_with("HTTP/1.0 200"));
    let metrics = get("/metrics").await;
    assert!(
        metrics.contains("signals_jobs_total{stage=\"push\",outcome=\"done\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("signals_job_duration_seconds_count{stage=\"snapshot\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("signals_queue_depth 0"), "{metrics}");
    assert!(
        metrics.contains("signals_rows_read_total 1500")
            && metrics.contains("signals_changes_total{op=\"insert\"} 1500"),
        "{metrics}"
    );
    assert!(
        metrics.contains("signals_blocked_runs 0") && metrics.contains("signals_open_dead_letters 0"),
        "{metrics}"
    );
    terminate(worker);
}
