//! Crash safety: the single-process runner is killed with SIGKILL at each point that matters and
//! restarted; every run ends with receiver == source and no change applied twice.

use signals_tests::{create_items, items_source, mutate_items, run_cli, write_config, Harness};
use std::os::unix::process::ExitStatusExt;

const BIN: &str = env!("CARGO_BIN_EXE_signals-under-test");
const RUN: &[&str] = &["run", "--until-idle", "--lease-secs", "1", "--concurrency", "3"];

/// Runs with a crash point and expects death by SIGKILL, then restarts and expects success.
fn crash_then_recover(h: &Harness, point: &str, extra: &[&str]) {
    let args: Vec<&str> = RUN.iter().chain(extra).copied().collect();
    let (status, out) = run_cli(BIN, h, &args, &[("SIGNALS_CRASH_AT", point)]);
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "expected a SIGKILL at `{point}`; got {status}:\n{out}"
    );
    let (status, out) = run_cli(BIN, h, RUN, &[]);
    assert!(status.success(), "restart after `{point}` failed:\n{out}");
}

/// Which runs of a scenario pass its crash point: an initial run's chunks number their own
/// batches (decision 0025), so only the interval run merges and cuts.
#[derive(PartialEq)]
enum Passes {
    Both,
    Initial,
    Interval,
}

async fn scenario(point: &str) {
    scenario_with(point, Passes::Both, 1_000).await
}

async fn scenario_with(point: &str, passes: Passes, chunk_rows: u64) {
    let h = Harness::new().await;
    create_items(&h.src(), 3_000);
    let config = write_config(&h, &h.config(&items_source(chunk_rows)));
    assert!(run_cli(BIN, &h, &["config", "apply", &config], &[]).0.success());
    assert!(run_cli(BIN, &h, &["onboard", "--tenant", "t"], &[]).0.success());

    if passes == Passes::Interval {
        assert!(run_cli(BIN, &h, RUN, &[]).0.success());
    } else {
        crash_then_recover(&h, point, &[]);
    }
    assert!(
        h.runs().await.iter().all(|r| r.display_state() == "done"),
        "initial run finished after `{point}`"
    );
    h.assert_in_sync().await;

    mutate_items(&h.src(), 3_000);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    if passes == Passes::Initial {
        assert!(run_cli(BIN, &h, &[RUN, &["--tick"]].concat(), &[]).0.success());
    } else {
        crash_then_recover(&h, point, &["--tick"]);
    }
    let runs = h.runs().await;
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter().all(|r| r.display_state() == "done"),
        "interval run finished after `{point}`: {runs:#?}"
    );
    assert!(runs[0].changes() > 0);
    h.assert_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_a_chunk_delta_is_written_before_its_job_is_acknowledged() {
    scenario("after_chunk_delta").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_last_chunk_delta() {
    scenario("after_chunk_delta:3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_merge_commits() {
    scenario_with("after_merge_commit", Passes::Interval, 1_000).await;
}

/// The merge job that cut the batches beside the merge (decision 0019) dies before its push jobs
/// are queued: its redelivery must queue them, or the run waits forever with nothing to push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_merge_job_records_its_cut() {
    scenario_with("after_cut_recorded", Passes::Interval, 1_000).await;
}

/// A chunk of an initial run dies after committing the first of its steps (decision 0025): the
/// batches it saved are pushed and the next attempt reads on from the chunk's resume key, so
/// no change is sent twice or lost. One chunk of 3,000 rows in batches of 500: three steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_a_chunk_commits_its_first_step() {
    scenario_with("after_step_commit", Passes::Initial, 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_a_2xx_and_the_ledger_update() {
    scenario("after_push_2xx").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_next_jobs_are_enqueued_before_the_ack() {
    scenario("after_enqueue_before_ack:4").await;
}
