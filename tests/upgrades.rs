//! Rolling upgrades: a worker leaves a job envelope from a newer version untouched for a newer
//! worker, and dead-letters one older than it supports, saying why; a run in flight across the
//! change to delta segments finishes with nothing lost. The PostgreSQL store's layout changes are
//! in `postgres_layout.rs`.

use signals_tests::{assert_the_latest_run_sent_its_changes_once, store_client, Harness};
use std::time::Duration;

fn raw_enqueue(h: &Harness, body: &str) {
    let db = rusqlite::Connection::open(&h.store_spec).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    db.execute(
        "INSERT INTO jobs (stage, body, enqueued_at, visible_at) VALUES ('snapshot', ?1, ?2, ?2)",
        rusqlite::params![body, now],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_envelopes_are_left_for_newer_workers_and_older_ones_dead_lettered() {
    let h = Harness::new().await;
    let newer = r#"{"v":2,"id":"from-the-future","task":"teleport","tenant":"t","created_at":"2027-01-01T00:00:00Z"}"#;
    let older = r#"{"v":0,"id":"from-the-past","task":"chunk"}"#;
    raw_enqueue(&h, newer);
    raw_enqueue(&h, older);
    h.run_for(Duration::from_millis(800)).await;

    let dead = h.store.dead_letters(true).await.unwrap();
    assert_eq!(dead.len(), 1, "only the older envelope is dead-lettered: {dead:#?}");
    assert_eq!(
        dead[0].error,
        "job envelope version 0 is not supported (this build reads version 1)"
    );
    assert_eq!(
        h.store.depth(&[]).await.unwrap().0,
        1,
        "the newer envelope is still queued"
    );

    // A newer worker sees it unchanged once this worker's hold-off has passed.
    let db = rusqlite::Connection::open(&h.store_spec).unwrap();
    db.execute("UPDATE jobs SET visible_at = 0", []).unwrap();
    let claimed = h.store.claim(10, Duration::from_secs(30), &[]).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].body, newer, "left untouched");
}

/// A run snapshotted by a build that wrote one delta row per change (chunk 0 here), its other
/// chunks by this build in segments: merge and batch take both, every change is sent once.
async fn a_run_in_flight_across_the_segment_upgrade_loses_nothing(h: Harness) {
    use signals_shared::domain::job::{Job, Stage, Task};
    signals_tests::create_items(&h.src(), 3_000);
    h.apply(&h.config(&signals_tests::items_source(1_000))).await;
    h.onboard().await;
    signals_tests::mutate_items(&h.src(), 3_000);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    h.store.enqueue(&[Job::new(Task::Tick)], Duration::ZERO).await.unwrap();
    h.run_stages_until_idle(vec![Stage::Scheduler, Stage::Snapshot]).await;
    let run = h.runs().await.remove(0);
    assert_eq!(run.state.as_str(), "snapshotted");
    let legacy = to_legacy_rows(&h, &run.id).await;
    assert!(legacy > 0, "chunk 0 had changes");
    h.run_until_idle().await;
    assert_the_latest_run_sent_its_changes_once(&h).await;
}

/// Rewrites chunk 0's segments as the old build's delta rows; returns how many.
async fn to_legacy_rows(h: &Harness, run_id: &str) -> usize {
    use signals_shared::domain::segment;
    if h.store_spec.starts_with("postgres") {
        let c = store_client(h).await;
        let s = &h.store_schema;
        let mut n = 0;
        for seg in c
            .query(
                &format!("SELECT body FROM {s}.delta_segments WHERE run_id = $1 AND chunk_no = 0"),
                &[&run_id],
            )
            .await
            .unwrap()
        {
            for r in segment::decode(seg.get(0), segment::Part::All).unwrap() {
                c.execute(
                    &format!("INSERT INTO {s}.deltas (run_id, key, chunk_no, op, hash, payload) VALUES ($1, $2, 0, $3, $4, $5)"),
                    &[&run_id, &r.key, &(r.op.code() as i16), &r.hash.map(|h| h.to_vec()), &r.payload],
                )
                .await
                .unwrap();
                n += 1;
            }
        }
        c.execute(
            &format!("DELETE FROM {s}.delta_segments WHERE run_id = $1 AND chunk_no = 0"),
            &[&run_id],
        )
        .await
        .unwrap();
        n
    } else {
        let db = rusqlite::Connection::open(&h.store_spec).unwrap();
        let bodies: Vec<Vec<u8>> = db
            .prepare("SELECT body FROM delta_segments WHERE run_id = ?1 AND chunk_no = 0")
            .unwrap()
            .query_map([run_id], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let mut n = 0;
        for body in bodies {
            for r in segment::decode(&body, segment::Part::All).unwrap() {
                db.execute(
                    "INSERT INTO deltas (run_id, key, chunk_no, op, hash, payload) VALUES (?1, ?2, 0, ?3, ?4, ?5)",
                    rusqlite::params![run_id, r.key, r.op.code(), r.hash.map(|h| h.to_vec()), r.payload],
                )
                .unwrap();
                n += 1;
            }
        }
        db.execute(
            "DELETE FROM delta_segments WHERE run_id = ?1 AND chunk_no = 0",
            [run_id],
        )
        .unwrap();
        n
    }
}

// The SQL Server store began with segments: it has no older layout to upgrade from.
signals_tests::on_every_store!(sqlite_and_postgres: a_run_in_flight_across_the_segment_upgrade_loses_nothing);
