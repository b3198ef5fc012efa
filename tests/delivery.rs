//! The push client's manners: too-large batches are split rather than failed, large bodies are
//! compressed, and a destination that stays down longer than the retry budget loses nothing.

use signals_tests::{create_items, items_source, mutate_items, run_cli, write_config, Harness, StoreKind};
use std::sync::atomic::Ordering;

const BIN: &str = env!("CARGO_BIN_EXE_signals-under-test");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_too_large_for_the_destination_are_split_not_failed() {
    let h = Harness::with_max_body(StoreKind::Sqlite, 16 * 1024).await;
    create_items(&h.src(), 3_000);
    h.apply(&h.config(&items_source(10_000))).await;
    h.onboard().await;
    let run = &h.runs().await[0];
    assert_eq!(run.display_state(), "done");
    assert!(
        run.batches_total > 6,
        "the 6 batches of 500 were split: {} batches",
        run.batches_total
    );
    assert!(h.store.dead_letters(true).await.unwrap().is_empty());
    h.assert_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_are_sent_gzip_compressed() {
    let h = Harness::new().await;
    create_items(&h.src(), 1_000);
    h.apply(&h.config_with(&h.url, "gzip_min_bytes = 1024\n", &items_source(10_000)))
        .await;
    h.onboard().await;
    assert_eq!(h.receiver.gzip_bodies.load(Ordering::Relaxed), 2);
    h.assert_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_down_past_the_retry_budget_loses_nothing() {
    let h = Harness::on(StoreKind::Postgres).await;
    create_items(&h.src(), 1_500);
    let down = write_config(&h, &h.config_with("http://127.0.0.1:9", "", &items_source(10_000)));
    assert!(run_cli(BIN, &h, &["config", "apply", &down], &[]).0.success());
    assert!(run_cli(BIN, &h, &["onboard", "--tenant", "t"], &[]).0.success());
    assert!(run_cli(BIN, &h, &["run", "--until-idle"], &[]).0.success());
    let dead = h.store.dead_letters(true).await.unwrap();
    assert_eq!(dead.len(), 3, "every batch exhausted its retries: {dead:#?}");

    // Changes keep arriving while the destination is down: the next run waits, nothing is lost.
    mutate_items(&h.src(), 1_500);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(run_cli(BIN, &h, &["run", "--until-idle", "--tick"], &[]).0.success());
    assert_eq!(h.runs().await.len(), 1, "the interval run waits behind the blocked one");

    let up = write_config(&h, &h.config(&items_source(10_000)));
    assert!(run_cli(BIN, &h, &["config", "apply", &up], &[]).0.success());
    let (status, out) = run_cli(BIN, &h, &["dlq", "retry", "--all"], &[]);
    assert!(status.success(), "{out}");
    assert!(run_cli(BIN, &h, &["run", "--until-idle"], &[]).0.success());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert!(run_cli(BIN, &h, &["run", "--until-idle", "--tick"], &[]).0.success());
    let runs = h.runs().await;
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.display_state() == "done"), "{runs:#?}");
    h.assert_in_sync().await;
}
