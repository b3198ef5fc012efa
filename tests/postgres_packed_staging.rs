//! PostgreSQL's packed staging (decision 0029) through whole syncs: what an initial run and the
//! interval syncs after it write to the store, and what they send.

use signals_tests::{assert_the_latest_run_sent_its_changes_once, postgres_with_items, store_client};

/// On PostgreSQL an initial run stages its keys as packs, a row per chunk step (decision
/// 0029), and an interval sync stages a row per change — an override, a new key or a
/// tombstone — so the store's staging writes follow the changes, not the table; later syncs
/// read the two merged and send exactly what changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_initial_runs_pack_their_staged_keys_and_interval_syncs_stage_their_changes() {
    let h = postgres_with_items().await;
    h.onboard().await;
    let c = store_client(&h).await;
    let s = &h.store_schema;
    let staged = || async {
        let r = c
            .query_one(
                &format!(
                    "SELECT (SELECT COUNT(*) FROM {s}.staging_packs), \
                     (SELECT COALESCE(SUM(n), 0) FROM {s}.staging_packs)::BIGINT, \
                     (SELECT COUNT(*) FROM {s}.staging_keys), \
                     (SELECT COUNT(*) FROM {s}.staging_keys WHERE hash IS NULL)"
                ),
                &[],
            )
            .await
            .unwrap();
        (
            r.get::<_, i64>(0),
            r.get::<_, i64>(1),
            r.get::<_, i64>(2),
            r.get::<_, i64>(3),
        )
    };
    let (packs, packed, per_key, _) = staged().await;
    assert!(packs >= 3, "a pack per chunk step at least: {packs}");
    assert_eq!((packed, per_key), (3_000, 0), "every key packed, none staged per key");

    signals_tests::mutate_items(&h.src(), 3_000);
    h.interval().await;
    assert_the_latest_run_sent_its_changes_once(&h).await;
    let run = h.runs().await.remove(0);
    assert_eq!(
        (run.inserts, run.updates, run.deletes),
        (25, 27, 33),
        "the edits of mutate_items"
    );
    let (packs_now, packed, per_key, tombstones) = staged().await;
    assert_eq!((packs_now, packed), (packs, 3_000), "packs are left as they are");
    assert_eq!(per_key, run.changes(), "a row per change");
    assert_eq!(tombstones, run.deletes);

    // Nothing changed since: the merged read finds every key as staged.
    let sent = h.stats().changes;
    h.interval().await;
    assert_eq!(h.runs().await.remove(0).changes(), 0);
    assert_eq!(h.stats().changes, sent);
    h.assert_in_sync().await;
}
