//! Operating for years: pause and resume, forced resync of a key range, offboarding.

use signals_shared::domain::job::{Job, Task};
use signals_shared::hosts::{execute, Outcome};
use signals_tests::{create_items, items_source, run_cli, write_config, Harness};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_signals-under-test");

fn two_sources(h: &Harness) -> String {
    h.src()
        .execute_batch("CREATE TABLE other AS SELECT id, name FROM items WHERE id <= 300")
        .unwrap();
    let other = items_source(1_000)
        .replace("sources.items", "sources.other")
        .replace("table = \"items\"", "table = \"other\"");
    h.config(&(items_source(1_000) + "\n" + &other))
}

async fn done(out: Outcome) -> Vec<Job> {
    match out {
        Outcome::Done(next) => next,
        other => panic!("job failed: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_mid_initial_sync_parks_the_source_and_resuming_finishes_it() {
    let h = Harness::new().await;
    create_items(&h.src(), 3_000);
    h.apply(&two_sources(&h)).await;
    let plans = done(
        execute(
            &h.ctx,
            &Job::new(Task::Onboard {
                tenant: "t".into(),
                reports: vec![],
            }),
        )
        .await,
    )
    .await;
    let items_plan = plans.iter().find(|j| j.scope().1 == Some("items")).unwrap();
    let chunks = done(execute(&h.ctx, items_plan).await).await;
    assert_eq!(chunks.len(), 3);
    // One chunk done: mid initial sync. Its batches' pushes (decision 0025) go with the rest.
    let pushes = done(execute(&h.ctx, &chunks[0]).await).await;
    let rest: Vec<Job> = chunks[1..]
        .iter()
        .cloned()
        .chain(pushes)
        .chain(plans.iter().filter(|j| j.scope().1 == Some("other")).cloned())
        .collect();
    h.store.enqueue(&rest, Duration::ZERO).await.unwrap();

    let (status, out) = run_cli(
        BIN,
        &h,
        &["pause", "--tenant", "t", "--source", "items", "--by", "ops"],
        &[],
    );
    assert!(status.success() && out.contains("t/items paused by ops"), "{out}");
    h.run_for(Duration::from_millis(1500)).await;
    let runs = h.runs().await;
    let state = |s: &str| runs.iter().find(|r| r.source == s).unwrap().display_state().to_owned();
    assert_eq!(state("other"), "done", "other data sources are unaffected");
    assert_eq!(state("items"), "snapshotting", "the paused source is parked mid-sync");
    assert_eq!(runs.iter().find(|r| r.source == "items").unwrap().chunks_done, 1);
    let (_, status) = run_cli(BIN, &h, &["status"], &[]);
    assert!(
        status.contains("paused: t/items") && status.contains(" paused "),
        "status shows the pause:\n{status}"
    );
    h.assert_in_sync_for("other").await;

    assert!(run_cli(BIN, &h, &["resume", "--tenant", "t", "--source", "items"], &[])
        .0
        .success());
    h.run_until_idle().await;
    assert!(h.runs().await.iter().all(|r| r.display_state() == "done"));
    h.assert_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_of_a_key_range_repairs_a_destination_changed_behind_our_back() {
    let h = Harness::new().await;
    create_items(&h.src(), 1_000);
    let path = write_config(&h, &h.config(&items_source(1_000)));
    assert!(run_cli(BIN, &h, &["config", "apply", &path], &[]).0.success());
    h.onboard().await;
    let db = &h.receiver.db;
    db.tamper("t", "items", "[50]", Some(r#"{"id":50,"name":"tampered"}"#))
        .unwrap();
    db.tamper("t", "items", "[60]", None).unwrap();
    db.tamper("t", "items", "[500]", Some(r#"{"id":500,"name":"outside the range"}"#))
        .unwrap();

    let (status, out) = run_cli(
        BIN,
        &h,
        &["resync", "--tenant", "t", "--source", "items", "--key-range", "40..70"],
        &[],
    );
    assert!(
        status.success() && out.contains("t/items: 31 keys (40..70) re-sent by run"),
        "{out}"
    );
    h.run_until_idle().await;
    let run = &h.runs().await[0];
    assert_eq!((run.display_state(), run.updates), ("done", 31));
    let report = &h.verify().await[0].2;
    assert_eq!(
        (report.missing, report.different, report.extra),
        (0, 1, 0),
        "only id 500, outside the range, still differs"
    );
    assert!(run_cli(BIN, &h, &["resync", "--tenant", "t"], &[]).0.success());
    h.run_until_idle().await;
    h.assert_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offboarding_removes_every_row_of_that_tenant_and_nothing_else() {
    let h = Harness::new().await;
    create_items(&h.src(), 1_200);
    let u_source = items_source(1_000).replace("tenants.t.", "tenants.u.");
    let config = h.config(&items_source(1_000))
        + &format!("\n[tenants.u]\ndestination = \"platform\"\n\n[tenants.u.connections.db]\nsqlite_path = \"{}\"\n\n{u_source}", h.source.display());
    h.apply(&config).await;
    for t in ["t", "u"] {
        h.run_job(Job::new(Task::Onboard {
            tenant: t.into(),
            reports: vec![],
        }))
        .await;
    }
    h.receiver
        .faults
        .push(signals_shared::receiver::faults::Fault::once(400, None));
    h.src()
        .execute("UPDATE items SET name = 'changed' WHERE id < 10", [])
        .unwrap();
    h.interval().await; // leaves a dead letter and a blocked run behind, to be removed too
    let t_runs: Vec<String> = h
        .store
        .runs(Some("t"), 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let u_runs = h.store.runs(Some("u"), 100).await.unwrap().len();

    let (status, out) = run_cli(BIN, &h, &["offboard", "--tenant", "t"], &[]);
    assert!(
        !status.success() && out.contains("refusing to offboard without confirmation"),
        "{out}"
    );
    let (status, out) = run_cli(
        BIN,
        &h,
        &["offboard", "--tenant", "t", "--yes", "--by", "ops", "--drop-datasets"],
        &[],
    );
    assert!(
        status.success() && out.contains("destination datasets dropped"),
        "{out}"
    );

    let db = rusqlite::Connection::open(&h.store_spec).unwrap();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let run_list = t_runs.iter().map(|r| format!("'{r}'")).collect::<Vec<_>>().join(",");
    for table in &tables {
        let cols: Vec<String> = db
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut conds = Vec::new();
        if cols.iter().any(|c| c == "tenant") {
            conds.push("tenant = 't'".to_owned());
        }
        if cols.iter().any(|c| c == "run_id") {
            conds.push(format!("run_id IN ({run_list})"));
        }
        if table == "runs" {
            conds.push(format!("id IN ({run_list})"));
        }
        if table == "jobs" {
            conds.push("body LIKE '%\"tenant\":\"t\"%'".to_owned());
        }
        if conds.is_empty() {
            continue;
        }
        let n: i64 = db
            .query_row(
                &format!("SELECT COUNT(*) FROM {table} WHERE {}", conds.join(" OR ")),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0, "table {table} still holds {n} rows of tenant t");
    }
    let u_staging: i64 = db
        .query_row("SELECT COUNT(*) FROM staging WHERE tenant = 'u'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(u_staging, 1_200, "tenant u is untouched");
    assert_eq!(h.store.runs(Some("u"), 100).await.unwrap().len(), u_runs);
    let audit: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM audit_log WHERE action = 'offboard' AND actor = 'ops'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audit, 1);
    assert!(h.receiver.db.rows("t", "items").unwrap().is_empty());
    assert_eq!(h.receiver.db.rows("u", "items").unwrap().len(), 1_200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_columns_never_leave_the_source_and_masked_ones_travel_masked() {
    let h = Harness::new().await;
    h.src()
        .execute_batch(
            "CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, email TEXT, ssn TEXT);
             INSERT INTO people VALUES (1, 'Ann', 'ann.secret@example.com', 'SSN-111-11-1111'),
                                       (2, 'Bob', 'bob.secret@example.com', 'SSN-222-22-2222'),
                                       (3, 'Cy', NULL, NULL);",
        )
        .unwrap();
    let source =
        "[tenants.t.sources.people]\nconnection = \"db\"\ntable = \"people\"\nkey = [\"id\"]\ninterval_secs = 1\n";
    let private = format!("{source}exclude_columns = [\"ssn\"]\nmask_columns = [\"email\"]\n");
    h.apply(&h.config(&private)).await;
    h.onboard().await;
    h.assert_in_sync().await;
    let rows = h.receiver.db.rows("t", "people").unwrap();
    let ann = &rows.iter().find(|(k, _)| k == "[1]").unwrap().1;
    assert!(ann.contains("\"email\":\"sha256:") && !ann.contains("ssn"), "{ann}");
    // No file of the store, the receiver or anything else we wrote holds the raw values.
    let leaks = ["SSN-111", "SSN-222", "ann.secret", "bob.secret"];
    for entry in std::fs::read_dir(h.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.ends_with("source.db") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for leak in leaks {
            assert!(
                !bytes.windows(leak.len()).any(|w| w == leak.as_bytes()),
                "{leak} found in {}",
                path.display()
            );
        }
    }

    // Un-masking is a controlled resync: every row re-sent once, in the new shape.
    h.apply(&h.config(&format!("{source}exclude_columns = [\"ssn\"]\n")))
        .await;
    h.interval().await;
    let run = h.runs().await.remove(0);
    assert_eq!((run.display_state(), run.updates), ("done", 3), "{run:#?}");
    assert!(run
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("every row is re-sent once")));
    h.assert_in_sync().await;
    let rows = h.receiver.db.rows("t", "people").unwrap();
    assert!(
        rows.iter().any(|(_, r)| r.contains("ann.secret@example.com")),
        "unmasked now"
    );
    assert!(rows.iter().all(|(_, r)| !r.contains("SSN-")), "still excluded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_pruning_runs_during_a_sync_without_failing_or_blocking_it() {
    use signals_shared::ports::PruneCutoffs;
    let h = Harness::new().await;
    create_items(&h.src(), 20_000);
    let config = h.config(&items_source(2_000))
        + "\n[retention]\nruns_days = 0\nledger_days = 0\nbatch_bodies_days = 0\ndead_letters_days = 0\n";
    h.apply(&config).await;
    h.onboard().await;
    signals_tests::mutate_items(&h.src(), 20_000);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    h.interval().await; // an earlier, finished run now exists beside the latest

    // A big interval sync with pruning hammering the store at the same time.
    h.src()
        .execute("UPDATE items SET name = name || '!' WHERE id % 3 = 0", [])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let pruner = {
        let store = h.store.clone();
        tokio::spawn(async move {
            let mut removed = 0;
            for _ in 0..40 {
                let now = chrono::Utc::now();
                let cut = PruneCutoffs {
                    runs: now,
                    ledger: now,
                    bodies: now,
                    dead_letters: now,
                };
                removed += store.prune(&cut).await.expect("pruning never fails a sync");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            removed
        })
    };
    h.interval().await;
    let mut removed = pruner.await.unwrap();
    let now = chrono::Utc::now();
    removed += h
        .store
        .prune(&PruneCutoffs {
            runs: now,
            ledger: now,
            bodies: now,
            dead_letters: now,
        })
        .await
        .unwrap();
    assert!(removed > 0, "pruning removed old history");
    let runs = h.runs().await;
    assert_eq!(runs[0].display_state(), "done");
    assert!(runs[0].updates > 5_000, "{runs:#?}");
    assert_eq!(runs.len(), 1, "only the data source's latest run is kept: {runs:#?}");
    h.assert_in_sync().await;

    // The scheduler queues pruning by itself (hourly by default), and it succeeds.
    h.run_job(Job::new(Task::Tick)).await;
    assert!(h.store.last_audit("pruned").await.unwrap().is_some());
}
