//! The operator's path through the CLI: config errors, a refused batch, `dlq show`, `dlq retry`,
//! `verify`, and the JSONL dry run.

use signals_shared::domain::job::Stage;
use signals_shared::receiver::faults::Fault;
use signals_tests::{cli_onboard, create_items, items_source, run_cli, write_config, Harness};

const BIN: &str = env!("CARGO_BIN_EXE_signals-under-test");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_the_file_tenant_source_and_field() {
    let h = Harness::new().await;
    let bad = h
        .config(&items_source(1_000))
        .replace("key = [\"id\"]", "key = []")
        .replace("interval_secs = 1", "interval_secs = 0");
    let path = write_config(&h, &bad);
    let (status, out) = run_cli(BIN, &h, &["config", "apply", &path], &[]);
    assert_eq!(status.code(), Some(1));
    assert!(out.contains(&format!("{path}: invalid configuration")), "{out}");
    assert!(
        out.contains("tenant `t`, data source `items`, field `key`: name at least one key column"),
        "{out}"
    );
    assert!(
        out.contains("tenant `t`, data source `items`, field `interval_secs`"),
        "{out}"
    );
    let (status, out) = run_cli(BIN, &h, &["onboard", "--tenant", "t"], &[]);
    assert!(!status.success() && out.contains("no configuration applied"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_shown_blocked_and_recovers_with_dlq_retry() {
    let h = Harness::new().await;
    create_items(&h.src(), 1_000);
    cli_onboard(BIN, &h, &h.config(&items_source(1_000)));
    h.receiver.faults.push(Fault::once(400, Some("price must be positive")));
    assert!(run_cli(BIN, &h, &["run", "--until-idle"], &[]).0.success());

    let (_, status) = run_cli(BIN, &h, &["status"], &[]);
    assert!(status.contains("blocked"), "{status}");
    let (_, list) = run_cli(BIN, &h, &["dlq", "list"], &[]);
    assert!(
        printed_rows(&list).any(|l| l.contains("push") && l.contains("400")),
        "{list}"
    );
    let (_, show) = run_cli(BIN, &h, &["dlq", "show", "1"], &[]);
    assert!(
        show.contains("price must be positive"),
        "the response body is in dlq show: {show}"
    );
    let (status, out) = run_cli(
        BIN,
        &h,
        &[
            "verify",
            "--receiver-db",
            &h.dir.path().join("receiver.db").display().to_string(),
        ],
        &[],
    );
    assert_eq!(status.code(), Some(2), "verify fails while a batch is missing: {out}");
    assert!(out.contains("DIFFERENT"), "{out}");

    let (status, out) = run_cli(BIN, &h, &["dlq", "retry", "1"], &[]);
    assert!(status.success() && out.contains("push job re-queued"), "{out}");
    let (status, out) = run_cli(BIN, &h, &["dlq", "retry", "1"], &[]);
    assert!(
        !status.success() && out.contains("dead letter 1 is retried, not open"),
        "{out}"
    );
    assert!(run_cli(BIN, &h, &["run", "--until-idle"], &[]).0.success());
    let (status, out) = run_cli(
        BIN,
        &h,
        &[
            "verify",
            "--receiver-db",
            &h.dir.path().join("receiver.db").display().to_string(),
        ],
        &[],
    );
    assert!(status.success() && out.contains("t/items: EQUAL"), "{out}");
    h.assert_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jsonl_sink_writes_batches_instead_of_pushing() {
    let h = Harness::new().await;
    create_items(&h.src(), 1_100);
    let path = write_config(&h, &h.config(&items_source(1_000)));
    let out_file = h.dir.path().join("batches.jsonl");
    let sink = format!("jsonl:{}", out_file.display());
    assert!(run_cli(BIN, &h, &["run", "--config", &path, "--until-idle"], &[])
        .0
        .success());
    assert!(run_cli(BIN, &h, &["onboard", "--tenant", "t"], &[]).0.success());
    let (status, out) = run_cli(BIN, &h, &["run", "--until-idle", "--sink", &sink], &[]);
    assert!(status.success(), "{out}");
    let text = std::fs::read_to_string(&out_file).unwrap();
    let changes: usize = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["changes"]
                .as_array()
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!((text.lines().count(), changes), (3, 1_100));
    assert_eq!(h.stats().batches, 0, "nothing reached the receiver");
}

/// A command's printed lines without its (JSON) log lines: a log line's timestamp can hold any
/// number — "…06.197422Z" once passed for a 422 dead letter in a list that had none.
fn printed_rows(out: &str) -> impl Iterator<Item = &str> {
    out.lines().filter(|l| !l.starts_with('{'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_dead_letter_is_confirmed_recorded_and_repairs_exactly_its_keys() {
    let h = Harness::on(signals_tests::StoreKind::Postgres).await;
    create_items(&h.src(), 1_200);
    cli_onboard(BIN, &h, &h.config(&items_source(1_000)));
    h.receiver.faults.push(Fault::once(422, Some("nope")));
    let (status, ran) = run_cli(BIN, &h, &["run", "--until-idle"], &[]);
    assert!(status.success(), "{ran}");
    let (_, list) = run_cli(
        BIN,
        &h,
        &["dlq", "list", "--class", "4xx", "--tenant", "t", "--source", "items"],
        &[],
    );
    // The run's own log beside the list, should it ever come up empty: a CI run reported so once,
    // though both failures reproduced since were the timestamp `printed_rows` now leaves out.
    assert!(
        printed_rows(&list).any(|l| l.contains("422")),
        "{list}\n--- the run's output ---\n{ran}"
    );
    let (_, none) = run_cli(BIN, &h, &["dlq", "list", "--class", "5xx"], &[]);
    assert!(!printed_rows(&none).any(|l| l.contains("422")), "{none}");

    let (status, out) = run_cli(BIN, &h, &["dlq", "drop", "1"], &[]);
    assert!(
        !status.success() && out.contains("refusing to drop without confirmation"),
        "{out}"
    );
    let (status, out) = run_cli(
        BIN,
        &h,
        &["dlq", "drop", "1", "--yes", "--by", "alice", "--repair"],
        &[],
    );
    assert!(status.success(), "{out}");
    assert!(
        out.contains("dropped by alice") && out.contains("the run is done"),
        "{out}"
    );
    // Batches are pushed concurrently, so the refused one is any of the three (500, 500 or 200 keys).
    let keys: i64 = out
        .split("re-sends ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no repair in: {out}"));
    assert!(keys == 500 || keys == 200, "exactly the dropped batch's keys: {out}");
    let (_, shown) = run_cli(BIN, &h, &["dlq", "show", "1"], &[]);
    assert!(
        shown.contains("\"state\": \"dropped\"") && shown.contains("\"resolved_by\": \"alice\""),
        "{shown}"
    );
    assert_eq!(
        h.stats().changes,
        1_200 - keys,
        "the destination is behind by the dropped batch"
    );

    // The next run re-sends exactly those keys, and the destination catches up.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(run_cli(BIN, &h, &["run", "--until-idle", "--tick"], &[]).0.success());
    let run = &h.runs().await[0];
    assert_eq!(
        (run.display_state(), run.updates, run.inserts, run.deletes),
        ("done", keys, 0, 0)
    );
    h.assert_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_failed_snapshot_abandons_its_run_and_frees_the_source() {
    let h = Harness::new().await;
    create_items(&h.src(), 300);
    let bad = write_config(
        &h,
        &h.config(&items_source(1_000))
            .replace("key = [\"id\"]", "key = [\"nope\"]"),
    );
    assert!(run_cli(BIN, &h, &["config", "apply", &bad], &[]).0.success());
    assert!(run_cli(BIN, &h, &["onboard", "--tenant", "t"], &[]).0.success());
    assert!(run_cli(BIN, &h, &["run", "--until-idle"], &[]).0.success());
    let (status, out) = run_cli(BIN, &h, &["dlq", "drop", "1", "--yes", "--no-repair"], &[]);
    assert!(status.success() && out.contains("abandoned"), "{out}");
    assert_eq!(h.runs().await[0].display_state(), "abandoned");
    let good = write_config(&h, &h.config(&items_source(1_000)));
    assert!(run_cli(BIN, &h, &["config", "apply", &good], &[]).0.success());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(run_cli(BIN, &h, &["run", "--until-idle", "--tick"], &[]).0.success());
    assert_eq!(h.runs().await[0].display_state(), "done");
    h.assert_in_sync().await;
}

/// A chunk of an initial run numbered at commit (decision 0025) fails for good after its first
/// step committed: 2,000 rows saved as batches and staged (the source reads 2,000 rows at a
/// time; the bad one is in the third). The step's pushes were queued as it committed, but no
/// push has run yet (only the snapshot stage has). Dropping the chunk's dead letter abandons the
/// run and repairs exactly the keys of its undelivered batches, so the next run sends every row;
/// the abandoned run's queued pushes send nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_chunk_that_failed_after_a_step_re_sends_what_it_did_not_deliver() {
    let h = Harness::new().await;
    let run = failed_after_a_step(&h, &[Stage::Scheduler, Stage::Snapshot]).await;
    assert_eq!(
        (
            run.display_state(),
            run.inserts,
            run.batches_total,
            run.batches_delivered
        ),
        ("blocked", 2_000, 4, 0),
        "{run:?}"
    );
    drop_the_chunk_then_sync(&h, Some(2_000), 5_000).await;
}

/// The same failure with every stage running: the step's batches went out while the chunk read
/// on, so dropping the chunk leaves nothing to repair and the next run sends only the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_fails_after_a_step_has_already_pushed_it() {
    let h = Harness::new().await;
    let run = failed_after_a_step(&h, &[]).await;
    assert_eq!(
        (
            run.display_state(),
            run.inserts,
            run.batches_total,
            run.batches_delivered
        ),
        ("blocked", 2_000, 4, 4),
        "{run:?}"
    );
    assert_eq!(h.stats().changes, 2_000, "the destination has the step's rows");
    drop_the_chunk_then_sync(&h, None, 3_000).await;
}

/// 5,000 items with a bad price at 4,500, onboarded and run (only `stages`, all if empty) until
/// idle: the run's one chunk fails after its first step. Returns the run.
async fn failed_after_a_step(h: &Harness, stages: &[Stage]) -> signals_shared::ports::Run {
    create_items(&h.src(), 5_000);
    let bad = "UPDATE items SET price = 'not a number' WHERE id = 4500";
    h.src().execute(bad, []).unwrap();
    cli_onboard(BIN, h, &h.config(&items_source(10_000)));
    h.run_stages_until_idle(stages.to_vec()).await;
    h.runs().await.remove(0)
}

/// Drops the chunk's dead letter with `--repair` (which re-sends `repaired` keys, if any),
/// mends the bad row and runs the next sync to its end: it sends `sent` rows, and the
/// destination then equals the source, nothing applied twice.
async fn drop_the_chunk_then_sync(h: &Harness, repaired: Option<u64>, sent: i64) {
    let (status, out) = run_cli(BIN, h, &["dlq", "drop", "1", "--yes", "--repair"], &[]);
    let told = match repaired {
        Some(n) => out.contains(&format!("re-sends {n} keys")),
        None => !out.contains("re-sends"),
    };
    assert!(status.success() && out.contains("abandoned") && told, "{out}");
    h.src()
        .execute("UPDATE items SET price = '1.50' WHERE id = 4500", [])
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(run_cli(BIN, h, &["run", "--until-idle", "--tick"], &[]).0.success());
    h.assert_in_sync().await;
    let run = h.runs().await.remove(0);
    assert_eq!((run.display_state(), run.inserts + run.updates), ("done", sent));
    assert_eq!(h.stats().applied_twice, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_destination_changed_behind_our_back_and_repair_fixes_it() {
    let h = Harness::new().await;
    create_items(&h.src(), 2_000);
    cli_onboard(BIN, &h, &h.config(&items_source(1_000)));
    assert!(run_cli(BIN, &h, &["run", "--until-idle"], &[]).0.success());
    let (status, out) = run_cli(BIN, &h, &["verify", "--tenant", "t"], &[]);
    assert!(status.success() && out.contains("t/items: IN SYNC"), "{out}");

    // Drift at the destination: a row changed, a row deleted, a row that should not exist.
    let db = &h.receiver.db;
    db.tamper("t", "items", "[7]", Some(r#"{"id":7,"name":"tampered"}"#))
        .unwrap();
    db.tamper("t", "items", "[8]", None).unwrap();
    db.tamper("t", "items", "[99999]", Some(r#"{"id":99999,"name":"ghost"}"#))
        .unwrap();
    // And a pending source change, which is not drift (the next run sends it).
    h.src()
        .execute("UPDATE items SET name = 'pending' WHERE id = 1500", [])
        .unwrap();

    let (status, out) = run_cli(BIN, &h, &["verify", "--tenant", "t", "--source", "items"], &[]);
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(
        out.contains("DRIFT") && out.contains("missing 1, extra 1, different 2"),
        "{out}"
    );
    assert!(out.contains("1 changes pending in staging"), "{out}");
    assert!(
        out.contains("missing [8]") && out.contains("extra [99999]") && out.contains("different [7]"),
        "{out}"
    );

    let (status, out) = run_cli(BIN, &h, &["verify", "--tenant", "t", "--repair"], &[]);
    assert!(
        status.success() && out.contains("repair: 4 keys re-sent by run"),
        "{out}"
    );
    assert!(run_cli(BIN, &h, &["run", "--until-idle"], &[]).0.success());
    let run = &h.runs().await[0];
    assert_eq!(
        (run.display_state(), run.inserts, run.updates, run.deletes),
        ("done", 0, 3, 1),
        "{run:#?}"
    );
    let (status, out) = run_cli(BIN, &h, &["verify", "--tenant", "t"], &[]);
    assert!(
        status.success() && out.contains("IN SYNC") && out.contains("0 changes pending"),
        "{out}"
    );
    h.assert_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_verification_repairs_drift_by_itself() {
    let h = Harness::new().await;
    create_items(&h.src(), 500);
    let source = items_source(1_000) + "verify_interval_secs = 1\nverify_repair = true\n";
    let path = write_config(
        &h,
        &h.config(&source)
            .replace("interval_secs = 1\n", "interval_secs = 3600\n"),
    );
    assert!(run_cli(BIN, &h, &["config", "apply", &path], &[]).0.success());
    assert!(run_cli(BIN, &h, &["onboard", "--tenant", "t"], &[]).0.success());
    assert!(run_cli(BIN, &h, &["run", "--until-idle"], &[]).0.success());
    h.receiver.db.tamper("t", "items", "[3]", None).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // One tick: the interval (an hour) is not due, the verification (a second) is.
    assert!(run_cli(BIN, &h, &["run", "--until-idle", "--tick"], &[]).0.success());
    let runs = h.runs().await;
    assert_eq!(runs.len(), 2, "the verification opened a repair run: {runs:#?}");
    assert_eq!((runs[0].updates, runs[0].display_state()), (1, "done"));
    h.assert_in_sync().await;
}
