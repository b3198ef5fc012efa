//! Bad input gets a clear error naming the cause, and nothing already staged is lost.

use signals_shared::domain::job::{Job, Stage, Task};
use signals_shared::hosts::replay::{replay, ReplayError};
use signals_shared::ports::{DeadLetter, RunKind};
use signals_tests::{create_items, items_source, Harness};
use std::time::Duration;

async fn only_dead_letter(h: &Harness) -> DeadLetter {
    let mut dead = h.store.dead_letters(true).await.unwrap();
    assert_eq!(dead.len(), 1, "expected one dead letter, got {dead:#?}");
    dead.remove(0)
}

async fn retry_all(h: &Harness) {
    for d in h.store.dead_letters(true).await.unwrap() {
        let job = Job::decode(d.message.as_bytes()).unwrap();
        h.store
            .enqueue(&[job.next(job.task.clone())], Duration::ZERO)
            .await
            .unwrap();
        h.store.resolve_dead_letter(d.id, "retried", "test").await.unwrap();
    }
    h.run_until_idle().await;
}

fn sqs_event(body: &str) -> String {
    serde_json::json!({"Records": [{
        "messageId": "m-1", "receiptHandle": "rh", "body": body,
        "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {}, "md5OfBody": "",
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:eu-west-1:000000000000:snapshot", "awsRegion": "eu-west-1"
    }]})
    .to_string()
}

async fn malformed_events_and_messages_are_refused_clearly(h: Harness) {
    let err = replay(
        h.ctx.clone(),
        h.store.clone(),
        h.store.clone(),
        "{\"Records\": [",
        false,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ReplayError::Event(_)));
    assert!(err.to_string().starts_with("event is not valid JSON"), "{err}");

    let failed = replay(
        h.ctx.clone(),
        h.store.clone(),
        h.store.clone(),
        &sqs_event("{oops"),
        false,
    )
    .await
    .unwrap();
    assert_eq!(failed, 1);
    let d = only_dead_letter(&h).await;
    assert!(d.error.contains("job message is not valid JSON"), "{}", d.error);
    assert_eq!(d.message, "{oops", "the raw message is kept for inspection");

    let v2 = r#"{"v":2,"id":"x","task":"tick","created_at":"2026-01-01T00:00:00Z"}"#;
    replay(h.ctx.clone(), h.store.clone(), h.store.clone(), &sqs_event(v2), false)
        .await
        .unwrap();
    let all = h.store.dead_letters(true).await.unwrap();
    assert!(
        all[0]
            .error
            .contains("job envelope version 2 is not supported (this build reads version 1)"),
        "{}",
        all[0].error
    );
}

async fn unknown_tenants_sources_and_key_columns_are_named(h: Harness) {
    create_items(&h.src(), 10);
    let bad_key = items_source(1_000).replace("key = [\"id\"]", "key = [\"item_id\"]");
    h.apply(&h.config(&bad_key)).await;

    h.run_job(Job::new(Task::Onboard {
        tenant: "nobody".into(),
        reports: vec![],
    }))
    .await;
    let d = only_dead_letter(&h).await;
    assert!(d.error.contains("unknown tenant `nobody`"), "{}", d.error);
    h.store.resolve_dead_letter(d.id, "dropped", "test").await.unwrap();

    h.onboard().await;
    let d = only_dead_letter(&h).await;
    assert_eq!(d.stage, "snapshot");
    assert!(
        d.error.contains("source `items` has no column `item_id` (configured as a key column); it has: id, name, price, at, flag, data"),
        "{}",
        d.error
    );
    assert_eq!(h.runs().await[0].display_state(), "blocked");
    h.store.resolve_dead_letter(d.id, "dropped", "test").await.unwrap();

    let run = h
        .store
        .open_run("t", "ghost", RunKind::Initial, 1)
        .await
        .unwrap()
        .unwrap();
    h.run_job(Job::new(Task::Plan {
        tenant: "t".into(),
        source: "ghost".into(),
        run_id: run.id.clone(),
    }))
    .await;
    let d = only_dead_letter(&h).await;
    assert!(d.error.contains("tenant `t` has no data source `ghost`"), "{}", d.error);
    h.store.resolve_dead_letter(d.id, "dropped", "test").await.unwrap();

    // A job naming another tenant's run finds nothing: tenants never see each other's runs.
    h.run_job(Job::new(Task::Merge {
        tenant: "other".into(),
        source: "ghost".into(),
        run_id: run.id,
    }))
    .await;
    let d = only_dead_letter(&h).await;
    assert!(d.error.contains("tenant `other` has no run"), "{}", d.error);
}

async fn duplicate_and_null_keys_fail_the_chunk_by_name(h: Harness) {
    h.src()
        .execute_batch(
            "CREATE TABLE dups (id INTEGER, v TEXT); INSERT INTO dups VALUES (1, 'a'), (2, 'b'), (2, 'c'), (3, 'd');
             CREATE TABLE nulls (id INTEGER, v TEXT); INSERT INTO nulls VALUES (1, 'a'), (NULL, 'b');",
        )
        .unwrap();
    let sources = "[tenants.t.sources.dups]\nconnection = \"db\"\ntable = \"dups\"\nkey = [\"id\"]\n\n\
                   [tenants.t.sources.nulls]\nconnection = \"db\"\nquery = \"SELECT id, v FROM nulls\"\nkey = [\"id\"]\n";
    h.apply(&h.config(sources)).await;
    h.onboard().await;
    let dead = h.store.dead_letters(true).await.unwrap();
    assert_eq!(dead.len(), 2);
    let by = |s: &str| {
        dead.iter()
            .find(|d| d.source.as_deref() == Some(s))
            .unwrap()
            .error
            .clone()
    };
    assert!(by("dups").contains("duplicate key [2] in the source"), "{}", by("dups"));
    assert!(by("nulls").contains("key column `id` is NULL"), "{}", by("nulls"));
    assert_eq!(h.stats().batches, 0, "nothing half-applied");
}

async fn schema_drift_fails_with_the_columns_named_unless_accepted(h: Harness) {
    create_items(&h.src(), 1_200);
    h.apply(&h.config(&items_source(1_000))).await;
    h.onboard().await;
    h.assert_in_sync().await;
    let before = h.stats();

    h.src()
        .execute_batch("ALTER TABLE items ADD COLUMN color TEXT DEFAULT 'red'; ALTER TABLE items DROP COLUMN flag;")
        .unwrap();
    h.interval().await;
    let d = only_dead_letter(&h).await;
    assert!(
        d.error.contains(
            "schema drift in tenant `t`, data source `items`: added: color; dropped: flag; nothing was applied"
        ),
        "{}",
        d.error
    );
    assert_eq!(h.stats().batches, before.batches, "nothing was pushed");
    assert_eq!(h.runs().await[0].display_state(), "blocked");

    // The operator accepts drift: the retried run re-sends every row in the new shape.
    h.apply(&h.config(&(items_source(1_000) + "accept_drift = true\n")))
        .await;
    retry_all(&h).await;
    let run = &h.runs().await[0];
    assert_eq!((run.display_state(), run.updates, run.force_all), ("done", 1_200, true));
    h.assert_in_sync().await;
}

async fn an_unreachable_push_url_dead_letters_and_loses_nothing(h: Harness) {
    create_items(&h.src(), 800);
    // Port 9 (discard) is closed on loopback here: connection refused.
    h.apply(&h.config_with("http://127.0.0.1:9", "", &items_source(1_000)))
        .await;
    h.onboard().await;
    let dead = h.store.dead_letters(true).await.unwrap();
    assert_eq!(dead.len(), 2, "both batches exhausted their retries");
    for d in &dead {
        assert_eq!(d.attempts, 3);
        assert!(
            d.error.contains("push to http://127.0.0.1:9/v1/batches failed"),
            "{}",
            d.error
        );
    }
    assert_eq!(h.runs().await[0].display_state(), "blocked");

    // The URL is fixed in config; the staged batches are delivered on retry.
    h.apply(&h.config(&items_source(1_000))).await;
    retry_all(&h).await;
    assert_eq!(h.runs().await[0].display_state(), "done");
    h.assert_in_sync().await;
}

async fn an_unreachable_source_is_retried_then_dead_lettered_by_name(h: Harness) {
    let toml = h
        .config(&items_source(1_000))
        .replace(&h.source.display().to_string(), "/nonexistent/erp.db");
    h.apply(&toml).await;
    h.onboard().await;
    let d = only_dead_letter(&h).await;
    assert_eq!(d.attempts, 3, "a connection failure is retried");
    assert!(
        d.error
            .contains("cannot connect to source `db`: no database file at /nonexistent/erp.db"),
        "{}",
        d.error
    );
}

/// A stored segment damaged (a payload that is no longer UTF-8) after its run merged, or before
/// the merge job that cuts beside the merge: the cut stops with an error naming it, the run stays
/// merged and unsent, and no body goes out. Either way the batch stage is where it is given up:
/// a merge job whose cut failed is retried, finds the run merged and asks for the batch stage.
async fn a_damaged_segment_stops_the_cut_by_name(h: Harness, stages_first: Vec<Stage>) {
    create_items(&h.src(), 2_000);
    h.apply(&h.config(&items_source(1_000))).await;
    h.enqueue_onboard().await;
    h.run_stages_until_idle(stages_first).await;
    let run = h.runs().await.remove(0);

    // The last segment, stored unpacked, its last payload byte made invalid.
    let db = rusqlite::Connection::open(&h.store_spec).unwrap();
    let (chunk, seg, body): (i64, i64, Vec<u8>) = db
        .query_row(
            "SELECT chunk_no, seg_no, body FROM delta_segments WHERE run_id = ?1 ORDER BY chunk_no DESC, seg_no DESC LIMIT 1",
            [&run.id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    let mut plain = signals_shared::domain::packing::unpack(&body).unwrap().into_owned();
    let last = plain.len() - 1;
    plain[last] = 0xff;
    db.execute(
        "UPDATE delta_segments SET body = ?1 WHERE run_id = ?2 AND chunk_no = ?3 AND seg_no = ?4",
        rusqlite::params![plain, run.id, chunk, seg],
    )
    .unwrap();

    h.run_until_idle().await;
    let d = only_dead_letter(&h).await;
    assert_eq!(d.stage, "batch");
    assert!(
        d.error.contains("corrupt delta segment") && d.error.contains("utf-8"),
        "{}",
        d.error
    );
    assert_eq!(h.runs().await[0].state.as_str(), "merged", "the cut did not finish");
    assert_eq!(h.stats().changes, 0, "no body went out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_segment_stops_the_batch_cut_by_name() {
    let h = Harness::new().await.cutting_after_the_merge();
    a_damaged_segment_stops_the_cut_by_name(h, vec![Stage::Scheduler, Stage::Snapshot, Stage::Merge]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_segment_stops_the_cut_beside_the_merge_by_name() {
    let h = Harness::new().await.merging_initial_runs();
    a_damaged_segment_stops_the_cut_by_name(h, vec![Stage::Scheduler, Stage::Snapshot]).await;
}

signals_tests::on_every_store!(
    malformed_events_and_messages_are_refused_clearly,
    unknown_tenants_sources_and_key_columns_are_named,
    duplicate_and_null_keys_fail_the_chunk_by_name,
    schema_drift_fails_with_the_columns_named_unless_accepted,
    an_unreachable_push_url_dead_letters_and_loses_nothing,
    an_unreachable_source_is_retried_then_dead_lettered_by_name,
);
