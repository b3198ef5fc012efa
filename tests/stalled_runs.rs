//! Stalled runs, on every store: a run whose jobs were lost is given its next job again once it
//! has been quiet for `stalled_after_secs`; a run whose job only waits (a `Retry-After`) is not
//! (decision 0023).

use signals_shared::domain::job::{Job, Stage};
use signals_shared::hosts::{self, Outcome};
use signals_shared::receiver::faults::Fault;
use signals_shared::stages;
use signals_tests::Harness;
use std::time::Duration;

/// The jobs `revive_stalled` queues as of `secs` from now.
async fn revived_after(h: &Harness, secs: i64) -> Vec<Job> {
    let at = chrono::Utc::now() + chrono::Duration::seconds(secs);
    stages::revive_stalled(&h.ctx, at).await.unwrap()
}

/// Claims every queued job of `stage` and deletes it unrun: a queue that expired or dropped
/// the messages.
async fn lose_jobs(h: &Harness, stage: Stage, max: usize) -> usize {
    let lost = h.store.claim(max, Duration::from_secs(30), &[stage]).await.unwrap();
    for c in &lost {
        h.store.ack(c).await.unwrap();
    }
    lost.len()
}

/// A run whose jobs were lost is not held forever: once it has been quiet for
/// `stalled_after_secs` (default 1,800) with no job of it queued, the scheduler queues the job
/// that moves it on — the plan stage's for a planned run, the batch stage's for a merged one —
/// and the run finishes with every change sent once. A run with a job queued, a paused one, or
/// one not quiet for long enough is left alone.
async fn a_run_whose_jobs_were_lost_is_revived_once_quiet(h: Harness) {
    let h = h.merging_initial_runs();
    h.snapshotted_items().await;
    assert!(revived_after(&h, 3_600).await.is_empty(), "its merge job is queued");
    assert_eq!(lose_jobs(&h, Stage::Merge, 10).await, 1);
    assert!(revived_after(&h, 60).await.is_empty(), "not quiet for long enough");
    h.store.set_paused("t", Some("items"), true, "test").await.unwrap();
    assert!(revived_after(&h, 3_600).await.is_empty(), "paused: its jobs park");
    h.store.set_paused("t", Some("items"), false, "test").await.unwrap();
    let revived = revived_after(&h, 1_801).await;
    assert_eq!(revived.iter().map(Job::task_name).collect::<Vec<_>>(), ["plan"]);
    h.store.enqueue(&revived, Duration::ZERO).await.unwrap();
    assert!(revived_after(&h, 3_600).await.is_empty(), "its revived job is queued");
    let run = h.runs().await.remove(0);
    assert!(
        run.last_error.as_deref().unwrap_or("").starts_with("stalled:"),
        "{:?}",
        run.last_error
    );

    // The plan job asks for the merge, which cuts five batches; two push jobs are lost.
    h.run_stages_until_idle(vec![Stage::Snapshot, Stage::Merge]).await;
    assert_eq!(lose_jobs(&h, Stage::Push, 2).await, 2);
    h.run_stages_until_idle(vec![Stage::Push]).await;
    let run = h.runs().await.remove(0);
    assert_eq!((run.state.as_str(), run.batches_delivered), ("batched", 3));
    let revived = revived_after(&h, 1_801).await;
    assert_eq!(revived.iter().map(Job::task_name).collect::<Vec<_>>(), ["batch"]);
    h.store.enqueue(&revived, Duration::ZERO).await.unwrap();
    h.run_until_idle().await;
    h.assert_in_sync().await;
    let run = h.runs().await.remove(0);
    assert_eq!((run.state.as_str(), run.batches_delivered), ("done", 5));
    let stats = h.stats();
    assert_eq!((stats.changes, stats.applied_twice), (2_200, 0));
    assert!(revived_after(&h, 3_600).await.is_empty(), "a done run is not revived");
}

/// A push waiting out a long `Retry-After` is not taken for stalled, even where the queue cannot
/// be searched for the run's jobs (SQS, Azure: here the deferred message is taken out of the
/// table queue, as such a queue holds it out of sight). The run counts as worked on until the
/// retry is due — a shorter retry of another of its jobs meanwhile does not cut that short — and
/// only a run still quiet a whole period after that is revived (decision 0023).
/// The last push is the one throttled: this process's pushes to the destination then pause
/// for the `Retry-After`, so the revived job is not run here (the test above runs one).
async fn a_run_waiting_out_a_long_retry_after_is_not_revived(h: Harness) {
    let h = h.merging_initial_runs();
    h.snapshotted_items().await;
    h.run_stages_until_idle(vec![Stage::Merge]).await;
    let pushes = h
        .store
        .claim(10, Duration::from_secs(30), &[Stage::Push])
        .await
        .unwrap();
    assert_eq!(pushes.len(), 5);
    let mut deferred = 0;
    for (i, claimed) in pushes.iter().enumerate() {
        if i == pushes.len() - 1 {
            h.receiver.faults.push(Fault {
                status: 429,
                times: 1,
                dataset: None,
                retry_after_secs: Some(2_700),
                body: None,
            });
        }
        let mut job = Job::decode(claimed.body.as_bytes()).unwrap();
        job.attempt = claimed.attempts;
        match hosts::execute(&h.ctx, &job).await {
            Outcome::Retry { delay, .. } => {
                assert!(delay >= Duration::from_secs(2_700), "Retry-After honoured: {delay:?}");
                deferred += 1;
                h.store.ack(claimed).await.unwrap();
            }
            outcome => assert!(hosts::settle(&h.ctx, h.store.as_ref(), claimed, &job, outcome).await),
        }
    }
    assert_eq!(deferred, 1);
    let run = h.runs().await.remove(0);
    assert_eq!(run.batches_delivered, 4);
    // Another job of the run retried soon after does not cut the push's wait short.
    h.store
        .defer_run(&run.id, "503: retry in a moment", chrono::Utc::now())
        .await
        .unwrap();
    assert!(
        revived_after(&h, 1_801).await.is_empty(),
        "quiet for a period, but its push is not due yet"
    );
    assert!(
        revived_after(&h, 2_700 + 1_700).await.is_empty(),
        "due, but not quiet for a period since"
    );
    let revived = revived_after(&h, 2_700 + 1_801).await;
    assert_eq!(revived.iter().map(Job::task_name).collect::<Vec<_>>(), ["batch"]);
    let waiting: i64 = h
        .store
        .pending_batches(&run.id)
        .await
        .unwrap()
        .iter()
        .map(|(_, first, last)| last - first + 1)
        .sum();
    let stats = h.stats();
    assert_eq!(
        (stats.changes + waiting, stats.applied_twice),
        (2_200, 0),
        "every change delivered once or waiting"
    );
}

signals_tests::on_every_store!(
    a_run_whose_jobs_were_lost_is_revived_once_quiet,
    a_run_waiting_out_a_long_retry_after_is_not_revived,
);
