//! A batch refused with a 400 is dead-lettered with the response body, blocks its data source,
//! and completes after `signals dlq retry`.

use signals_shared::domain::job::{Job, Task};
use signals_shared::receiver::faults::Fault;
use signals_tests::{create_items, items_source, mutate_items, Harness};
use std::time::Duration;

async fn a_rejected_batch_blocks_the_source_until_retried(h: Harness) {
    create_items(&h.src(), 2_000);
    h.apply(&h.config(&items_source(1_000))).await;
    h.receiver
        .faults
        .push(Fault::once(400, Some("column `price` failed validation")));
    h.onboard().await;

    let dead = h.store.dead_letters(true).await.unwrap();
    assert_eq!(dead.len(), 1, "exactly the refused batch is dead-lettered");
    assert_eq!(dead[0].stage, "push");
    assert_eq!(dead[0].attempts, 1, "a 400 is not retried");
    assert!(
        dead[0].error.contains("rejected batch") && dead[0].error.contains("400"),
        "{}",
        dead[0].error
    );
    assert!(
        dead[0].error.contains("column `price` failed validation"),
        "response body kept: {}",
        dead[0].error
    );
    let run = h.runs().await.remove(0);
    assert_eq!(run.display_state(), "blocked");
    assert_eq!(
        run.batches_delivered,
        run.batches_total - 1,
        "the other batches were delivered"
    );

    // The next interval run of this data source waits while the dead letter holds it.
    mutate_items(&h.src(), 2_000);
    h.interval().await;
    let runs = h.runs().await;
    assert_eq!(runs.len(), 1, "no new run opens while the source is blocked");
    assert_eq!(runs[0].display_state(), "blocked");

    // The receiver is fixed (the fault was one-shot); the operator retries.
    let d = &dead[0];
    let job = Job::decode(d.message.as_bytes()).unwrap();
    assert!(matches!(job.task, Task::Push { .. }));
    h.store
        .enqueue(&[job.next(job.task.clone())], Duration::ZERO)
        .await
        .unwrap();
    assert!(h.store.resolve_dead_letter(d.id, "retried", "test").await.unwrap());
    h.run_until_idle().await;
    assert_eq!(h.runs().await[0].display_state(), "done");

    // Now the waiting interval run goes ahead and the destination catches up, exactly once.
    h.interval().await;
    let runs = h.runs().await;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].display_state(), "done");
    assert!(runs[0].changes() > 0);
    h.assert_in_sync().await;
}

async fn throttling_is_retried_honouring_retry_after_and_never_applies_twice(h: Harness) {
    create_items(&h.src(), 1_500);
    h.apply(&h.config(&items_source(1_000))).await;
    h.receiver.faults.push(Fault {
        status: 429,
        times: 1,
        dataset: None,
        retry_after_secs: Some(1),
        body: None,
    });
    h.receiver.faults.push(Fault::once(503, None));
    let started = std::time::Instant::now();
    h.onboard().await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was honoured"
    );
    assert!(h.store.dead_letters(true).await.unwrap().is_empty());
    assert_eq!(h.runs().await[0].display_state(), "done");
    h.assert_in_sync().await;
}

signals_tests::on_every_store!(
    a_rejected_batch_blocks_the_source_until_retried,
    throttling_is_retried_honouring_retry_after_and_never_applies_twice,
);
