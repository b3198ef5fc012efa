//! Every hop between stages through Amazon SQS (moto's server, started here): a full initial and
//! interval sync, with the scheduler and snapshot stages in one worker process and merge, batch
//! and push in another, ends with the receiver equal to the source; the store's table queue is
//! never used; a duplicate delivery changes nothing.

use signals_shared::domain::job::{Job, Task};
use signals_shared::ports::JobQueue;
use signals_shared::sqs::SqsQueue;
use signals_tests::{
    create_items, items_source, mutate_items, run_cli, terminate, write_config, Harness, Moto, StoreKind,
};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_signals-under-test");
const QUEUE: &str = "sqs://signals-e2e";

fn spawn_worker(h: &Harness, moto: &Moto, stages: &str) -> Child {
    Command::new(BIN)
        .args(["--store", &h.store_spec, "--queue", QUEUE, "worker", "--stages", stages])
        .args(["--concurrency", "4", "--lease-secs", "10"])
        .envs(moto.env())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn worker")
}

/// Waits until `n` runs are done and every SQS queue is empty.
async fn settle(h: &Harness, queue: &SqsQueue, n: usize) {
    let started = Instant::now();
    loop {
        let runs = h.runs().await;
        let done = runs.len() == n && runs.iter().all(|r| r.display_state() == "done");
        if done && queue.depth(&[]).await.unwrap().0 == 0 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "not settled: {runs:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_and_interval_sync_with_every_hop_through_sqs() {
    let moto = Moto::start();
    for (k, v) in moto.env() {
        // SAFETY: set before this test's own SQS client reads them; no other test runs in this binary.
        unsafe { std::env::set_var(k, v) };
    }
    let queue = SqsQueue::create(QUEUE, 5)
        .await
        .expect("create the stage queues in moto");
    let h = Harness::on(StoreKind::Sqlite).await;
    create_items(&h.src(), 3_000);
    let path = write_config(&h, &h.config(&items_source(1_000)));
    let env: Vec<(&str, String)> = moto.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (ok, out) = run_cli(BIN, &h, &["config", "apply", &path], &env);
    assert!(ok.success(), "{out}");
    let (ok, out) = run_cli(BIN, &h, &["--queue", QUEUE, "onboard", "--tenant", "t"], &env);
    assert!(ok.success(), "{out}");
    assert_eq!(queue.depth(&[]).await.unwrap().0, 1, "the onboarding job waits in SQS");

    let front = spawn_worker(&h, &moto, "scheduler,snapshot");
    let back = spawn_worker(&h, &moto, "merge,batch,push");
    settle(&h, &queue, 1).await;
    let initial = h.runs().await.remove(0);
    assert_eq!((initial.inserts, initial.chunks_total), (3_000, 3));
    h.assert_in_sync().await;

    mutate_items(&h.src(), 3_000);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    queue.enqueue(&[Job::new(Task::Tick)], Duration::ZERO).await.unwrap();
    settle(&h, &queue, 2).await;
    let interval = h.runs().await.remove(0);
    assert_eq!(interval.kind.as_str(), "interval");
    assert!(interval.changes() > 0);
    h.assert_in_sync().await;

    // SQS delivers at least once: replaying the interval run's batch and merge jobs is harmless.
    let before = h.stats();
    let again = [
        Job::new(Task::Merge {
            tenant: "t".into(),
            source: "items".into(),
            run_id: interval.id.clone(),
        }),
        Job::new(Task::Batch {
            tenant: "t".into(),
            source: "items".into(),
            run_id: interval.id.clone(),
        }),
    ];
    queue.enqueue(&again, Duration::ZERO).await.unwrap();
    settle(&h, &queue, 2).await;
    let after = h.stats();
    assert_eq!((after.changes, after.applied_twice), (before.changes, 0));
    h.assert_in_sync().await;

    assert_eq!(h.store.depth(&[]).await.unwrap().0, 0, "the table queue was never used");

    // A message no function could decode ends in the redrive DLQ; `dlq import` moves it into the
    // store's dead letters, where the operator sees it with every other.
    moto.boto3(
        "sqs",
        "c.send_message(QueueUrl=c.get_queue_url(QueueName='signals-e2e-dlq')['QueueUrl'], MessageBody='{\"v\":1,\"task\":')",
    );
    let (ok, out) = run_cli(BIN, &h, &["dlq", "import", "--sqs", "signals-e2e-dlq"], &env);
    assert!(ok.success() && out.contains("1 messages imported"), "{out}");
    let (_, list) = run_cli(BIN, &h, &["dlq", "list"], &env);
    assert!(
        list.contains("SQS dead-letter queue") && list.contains("unknown"),
        "{list}"
    );
    let (ok, out) = run_cli(BIN, &h, &["dlq", "import", "--sqs", "signals-e2e-dlq"], &env);
    assert!(
        ok.success() && out.contains("0 messages imported"),
        "the DLQ is empty now: {out}"
    );
    terminate(front);
    terminate(back);
}
