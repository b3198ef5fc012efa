//! An initial run's delta segments are kept out of PostgreSQL's WAL (decision 0018) — a run
//! planned by a build before decision 0025, whose chunks did not number their own batches
//! (`Harness::merging_initial_runs`). A server
//! crash or failover leaves such a table empty — the state these tests put it in with `TRUNCATE`,
//! which is what crash recovery does to an unlogged table — and the run must notice, read its
//! chunks again and still send every change exactly once.

use signals_shared::domain::job::Stage;
use signals_shared::ports::Run;
use signals_tests::{postgres_with_items, store_client, Harness};

/// What a test needs of the store beside the ports.
struct Store {
    c: tokio_postgres::Client,
    s: String,
}

impl Store {
    async fn of(h: &Harness) -> Store {
        Store {
            c: store_client(h).await,
            s: h.store_schema.clone(),
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        self.c.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// `p` (logged) or `u` (unlogged) for the run's own table of this kind.
    async fn persistence(&self, kind: &str, run: &Run) -> String {
        let table = format!("{}.\"{kind}_{}\"", self.s, run.id);
        let p: i8 = self
            .c
            .query_one(
                "SELECT relpersistence FROM pg_class WHERE oid = $1::TEXT::REGCLASS",
                &[&table],
            )
            .await
            .unwrap()
            .get(0);
        (p as u8 as char).to_string()
    }

    /// What crash recovery does to an unlogged table: resets it to empty.
    async fn lose_segments(&self, run: &Run) {
        self.c
            .batch_execute(&format!("TRUNCATE {}.\"delta_segments_{}\"", self.s, run.id))
            .await
            .unwrap();
    }

    async fn staged(&self) -> i64 {
        self.count(&format!("SELECT COUNT(*) FROM {}.staging_keys", self.s))
            .await
    }
}

/// An onboarding of 3,000 items stopped once every chunk is read: the harness, the store beside
/// it, and the run.
async fn snapshotted() -> (Harness, Store, Run) {
    let h = postgres_with_items().await.merging_initial_runs();
    let store = Store::of(&h).await;
    h.enqueue_onboard().await;
    h.run_stages_until_idle(vec![Stage::Scheduler, Stage::Snapshot]).await;
    let run = h.runs().await.remove(0);
    (h, store, run)
}

/// The run finished, having read the source a second time, and the destination got every row once.
async fn assert_sent_once_after_reading_again(h: &Harness, store: &Store) {
    h.run_until_idle().await;
    let runs = h.runs().await;
    assert_eq!(runs.len(), 1, "the same run, rewound: {runs:?}");
    let run = &runs[0];
    assert_eq!(run.display_state(), "done");
    assert_eq!(
        (run.inserts, run.rows_read),
        (3_000, 3_000),
        "counted once, from the second read"
    );
    let note = run.last_error.clone().unwrap_or_default();
    assert!(note.contains("read again"), "the run says what happened: {note}");
    let stats = h.stats();
    assert_eq!(
        (stats.changes, stats.applied_twice),
        (3_000, 0),
        "every change sent once"
    );
    h.assert_in_sync().await;
    assert_eq!(store.staged().await, 3_000);
}

/// Lost after every chunk was read, before the merge: the chunks are read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_segments_lost_before_the_merge_are_read_again() {
    let (h, store, run) = snapshotted().await;
    assert_eq!(run.state.as_str(), "snapshotted");
    assert_eq!(
        store.persistence("delta_segments", &run).await,
        "u",
        "segments kept out of the WAL"
    );
    assert_eq!(store.persistence("batches", &run).await, "p", "bodies logged");
    store.lose_segments(&run).await;
    assert_sent_once_after_reading_again(&h, &store).await;

    // A second whole-table run of a data source with staged rows keeps its segments logged:
    // staging could not be put back as that run found it.
    let version = h.store.latest_config_version().await.unwrap().unwrap();
    let again = h
        .store
        .open_run("t", "items", signals_shared::ports::RunKind::Initial, version)
        .await
        .unwrap()
        .unwrap();
    let plan = signals_shared::domain::job::Task::Plan {
        tenant: "t".into(),
        source: "items".into(),
        run_id: again.id.clone(),
    };
    h.store
        .enqueue(
            &[signals_shared::domain::job::Job::new(plan)],
            std::time::Duration::ZERO,
        )
        .await
        .unwrap();
    h.run_stages_until_idle(vec![Stage::Snapshot]).await;
    assert_eq!(store.persistence("delta_segments", &again).await, "p");
}

/// Lost after the merge, and after a cut that saved every body but stopped before it was done:
/// staging is emptied as the plan found it, the saved bodies go (none was sent), and the chunks
/// are read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_segments_lost_after_the_merge_are_read_again_into_empty_staging() {
    let h = postgres_with_items().await.merging_initial_runs();
    let store = Store::of(&h).await;
    h.enqueue_onboard().await;
    h.run_stages_until_idle(vec![Stage::Scheduler, Stage::Snapshot, Stage::Merge, Stage::Batch])
        .await;
    let run = h.runs().await.remove(0);
    assert_eq!(run.state.as_str(), "batched");
    assert_eq!(store.staged().await, 3_000);
    // The cut's last step undone: bodies saved, the run still merged, no push job queued.
    store
        .c
        .batch_execute(&format!(
            "UPDATE {s}.runs SET state = 'merged', batches_total = 0 WHERE id = '{id}';
             DELETE FROM {s}.jobs WHERE stage = 'push'",
            s = store.s,
            id = run.id
        ))
        .await
        .unwrap();
    let bodies = format!("SELECT COUNT(*) FROM {}.\"batches_{}\"", store.s, run.id);
    assert!(store.count(&bodies).await >= 2);
    store.lose_segments(&run).await;
    // A batch job, as the retry of the interrupted cut.
    h.run_job(signals_shared::domain::job::Job::new(
        signals_shared::domain::job::Task::Batch {
            tenant: "t".into(),
            source: "items".into(),
            run_id: run.id.clone(),
        },
    ))
    .await;
    assert_sent_once_after_reading_again(&h, &store).await;
}

/// A cut whose delta is shorter than the chunks counted — lost under its read, after the check
/// that would have rewound the run — marks nothing cut and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_cut_that_reads_less_than_was_counted_is_not_done() {
    let h = postgres_with_items().await.cutting_after_the_merge();
    let store = Store::of(&h).await;
    h.enqueue_onboard().await;
    h.run_stages_until_idle(vec![Stage::Scheduler, Stage::Snapshot, Stage::Merge])
        .await;
    let run = h.runs().await.remove(0);
    assert_eq!(run.state.as_str(), "merged");
    // Logged now, so no rewind: the cut itself must refuse.
    store
        .c
        .batch_execute(&format!(
            "ALTER TABLE {s}.\"delta_segments_{id}\" SET LOGGED;
             DELETE FROM {s}.\"delta_segments_{id}\" WHERE chunk_no = 1",
            s = store.s,
            id = run.id
        ))
        .await
        .unwrap();
    h.run_for(std::time::Duration::from_secs(2)).await;
    let run = h.runs().await.remove(0);
    assert_eq!(run.state.as_str(), "merged", "not cut");
    let note = run.last_error.clone().unwrap_or_default();
    assert!(note.contains("2000 changes read, 3000 counted"), "{note}");
    assert_eq!(h.stats().changes, 0, "nothing sent");
}

/// A reader holding a run that was sent back to `snapshotting` (another job's rewind, while this
/// one still had the run as it was) reads no delta at all, not the part being written again: a
/// cut beside the merge cannot save batches from half of one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_no_delta_is_read_while_a_run_is_read_again() {
    let (h, store, run) = snapshotted().await;
    let changes = |h: &Harness| {
        let mut rx = h.store.changes(&run.id);
        async move {
            let mut n = 0;
            while let Some(batch) = rx.recv().await {
                n += batch.unwrap().iter().map(|r| r.iter().count()).sum::<usize>();
            }
            n
        }
    };
    assert_eq!(changes(&h).await, 3_000, "a snapshotted run's delta");
    store
        .c
        .batch_execute(&format!(
            "UPDATE {s}.runs SET state = 'snapshotting' WHERE id = '{id}'",
            s = store.s,
            id = run.id
        ))
        .await
        .unwrap();
    assert_eq!(changes(&h).await, 0, "nothing while its chunks are read again");
}
