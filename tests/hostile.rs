//! Delivery against a hostile Data Push API: faults by rate from a seed — 500s, 429s with
//! `Retry-After`, responses slower than the client's timeout, and connections dropped after the
//! batch was applied. The destination must end exactly equal to the source, every change applied
//! once, nothing dead-lettered.

use signals_shared::receiver::faults::{FaultRates, RateFaults};
use signals_tests::{create_items, items_source, mutate_items, Harness, StoreKind};

async fn survives(kind: StoreKind) {
    let rates = FaultRates {
        error_500: 0.20,
        throttle_429: 0.10,
        slow: 0.05,
        drop_after: 0.05,
        retry_after_secs: 1,
        slow_ms: 900,
        ..Default::default()
    };
    let h = Harness::with_faults(kind, RateFaults::new(rates, 42)).await;
    create_items(&h.src(), 100_000);
    let destination = "timeout_ms = 400\n";
    let toml = h
        .config_with(&h.url, destination, &items_source(25_000))
        .replace("batch_max_rows = 500", "batch_max_rows = 2000")
        .replace("max_attempts = 3", "max_attempts = 30");
    h.apply(&toml).await;
    h.onboard().await;
    let run = &h.runs().await[0];
    assert_eq!((run.display_state(), run.inserts), ("done", 100_000));
    h.assert_in_sync().await;

    mutate_items(&h.src(), 100_000);
    h.interval().await;
    assert_eq!(h.runs().await[0].display_state(), "done");
    h.assert_in_sync().await;
    assert!(
        h.store.dead_letters(true).await.unwrap().is_empty(),
        "no batch is dead-lettered"
    );
    assert_eq!(h.stats().applied_twice, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_destination_ends_exact_on_sqlite() {
    survives(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_destination_ends_exact_on_postgres() {
    survives(StoreKind::Postgres).await;
}
