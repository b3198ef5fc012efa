//! The pipeline end to end on embedded defaults: initial sync, interval sync with inserts, updates
//! and deletes, and an interval sync with no changes.

use signals_tests::{create_items, items_source, mutate_items, Harness};

async fn initial_then_interval_sync_keeps_the_receiver_equal_to_the_source(h: Harness) {
    create_items(&h.src(), 5_000);
    h.apply(&h.config(&items_source(1_000))).await;
    h.onboard().await;
    let runs = h.runs().await;
    assert_eq!(runs.len(), 1);
    let initial = &runs[0];
    assert_eq!(
        (initial.display_state(), initial.inserts, initial.chunks_total),
        ("done", 5_000, 5)
    );
    h.assert_in_sync().await;
    // Run history: every stage that worked on the run left its time and job count.
    let timings = h.store.stage_timings(std::slice::from_ref(&initial.id)).await.unwrap();
    let jobs = |stage: &str| timings.iter().find(|t| t.stage == stage).map(|t| (t.jobs, t.failures));
    assert_eq!(
        jobs("snapshot"),
        Some((6, 0)),
        "one plan and five chunk jobs: {timings:?}"
    );
    // The chunks numbered and cut their own batches (decision 0025): no merge or batch job.
    assert_eq!((jobs("merge"), jobs("batch")), (None, None));
    assert_eq!(jobs("push").map(|j| j.0), Some(initial.batches_total));
    for t in &timings {
        assert!(t.first_started_at <= t.last_finished_at && t.first_started_at >= initial.created_at);
    }

    mutate_items(&h.src(), 5_000);
    h.interval().await;
    let run = &h.runs().await[0];
    assert_eq!(run.display_state(), "done");
    // 51 ids are multiples of 97, but the 5 that are multiples of 970 have a NULL name that the
    // edit leaves NULL: 46 real updates. 56 multiples of 89 deleted; 25 new rows.
    assert_eq!((run.inserts, run.updates, run.deletes), (25, 46, 56));
    h.assert_in_sync().await;

    // Nothing changed: nothing is pushed and the store sees only run bookkeeping, not rows.
    let batches_before = h.stats().batches;
    let written_before = h.store.rows_written();
    h.interval().await;
    let run = &h.runs().await[0];
    assert_eq!((run.display_state(), run.changes(), run.batches_total), ("done", 0, 0));
    assert_eq!(
        h.stats().batches,
        batches_before,
        "no batch is pushed when nothing changed"
    );
    let written = h.store.rows_written() - written_before;
    // About a dozen rows per job (queue, run counters, stage timing); none per source row.
    assert!(
        written < 75,
        "a no-change sync of 5,000 rows wrote {written} store rows"
    );
    h.assert_in_sync().await;
}

async fn reports_share_data_sources_and_each_syncs_once(h: Harness) {
    create_items(&h.src(), 300);
    h.src()
        .execute_batch(
            "CREATE TABLE tags (sku TEXT, site INTEGER, label TEXT, PRIMARY KEY (sku, site)); \
        INSERT INTO tags VALUES ('a', 1, 'x'), ('a', 2, 'y'), ('ab', 1, 'z'), ('b', 0, NULL);",
        )
        .unwrap();
    let sources = format!(
        "{}\n[tenants.t.sources.tags]\nconnection = \"db\"\ntable = \"tags\"\nkey = [\"sku\", \"site\"]\n\n\
         [tenants.t.reports]\nsales = [\"items\"]\nstock = [\"items\", \"tags\"]\n",
        items_source(1_000)
    );
    h.apply(&h.config(&sources)).await;
    let onboard = |reports: Vec<&str>| {
        signals_shared::domain::job::Job::new(signals_shared::domain::job::Task::Onboard {
            tenant: "t".into(),
            reports: reports.into_iter().map(String::from).collect(),
        })
    };
    h.run_job(onboard(vec!["sales"])).await;
    assert_eq!(h.runs().await.len(), 1);
    h.run_job(onboard(vec!["sales", "stock"])).await;
    let runs = h.runs().await;
    assert_eq!(runs.len(), 2, "items is onboarded once; only tags is new");
    assert_eq!(runs[0].source, "tags");
    h.assert_in_sync().await;
}

/// Text of `n` characters that compresses poorly, so packed segments and batch bodies stay large.
fn noise(seed: u64, n: usize) -> String {
    let mut x = seed.wrapping_mul(6_364_136_223_846_793_005) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect()
}

/// Values far past 64 KiB (segments, batch bodies) and keys of 700 bytes go through every write
/// path of the store — on SQL Server that is the path around bulk loads of large values
/// (tiberius#322) and the longest keys its clustered staging index holds.
async fn large_values_and_long_keys_cross_every_write_path(h: Harness) {
    let src = h.src();
    src.execute_batch("CREATE TABLE docs (id TEXT PRIMARY KEY, body TEXT)")
        .unwrap();
    let key = |i: u64| format!("{i:03}-{}", "k".repeat(700));
    for i in 0..30u64 {
        src.execute(
            "INSERT INTO docs VALUES (?1, ?2)",
            rusqlite::params![key(i), noise(i, 150_000)],
        )
        .unwrap();
    }
    let source = "[tenants.t.sources.docs]\nconnection = \"db\"\ntable = \"docs\"\nkey = [\"id\"]\ninterval_secs = 1\n";
    h.apply(&h.config(source)).await;
    h.onboard().await;
    let run = &h.runs().await[0];
    assert_eq!((run.display_state(), run.inserts), ("done", 30));
    h.assert_in_sync().await;

    src.execute("UPDATE docs SET body = ?1 WHERE id < '005'", [noise(99, 200_000)])
        .unwrap();
    src.execute("DELETE FROM docs WHERE id >= '028'", []).unwrap();
    h.interval().await;
    let run = &h.runs().await[0];
    assert_eq!((run.display_state(), run.updates, run.deletes), ("done", 5, 2));
    h.assert_in_sync().await;
}

signals_tests::on_every_store!(
    initial_then_interval_sync_keeps_the_receiver_equal_to_the_source,
    reports_share_data_sources_and_each_syncs_once,
    large_values_and_long_keys_cross_every_write_path,
);
