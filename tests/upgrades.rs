//! Rolling upgrades: a worker leaves a job envelope from a newer version untouched for a newer
//! worker, and dead-letters one older than it supports, saying why.

use signals_tests::Harness;
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
