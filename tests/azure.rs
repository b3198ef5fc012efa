//! Every hop through Azure Storage queues (Azurite, started here): an initial and an interval
//! sync with the stages split over two worker processes end with the receiver equal to the
//! source; a job that keeps failing becomes a store dead letter after the configured attempts
//! (Azure's `dequeueCount`); an undecodable message lands in the poison queue.

use signals_shared::azure_queue::AzureQueue;
use signals_shared::domain::job::{Job, Stage, Task};
use signals_shared::ports::JobQueue;
use signals_tests::{
    create_items, free_port, items_and_a_poison_source, mutate_items, wait_for_port, Harness, KillOnDrop, StoreKind,
};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_signals-under-test");
const QUEUE: &str = "azure://devstoreaccount1/signals";
/// Azurite's well-known development account key (public, documented by Microsoft).
const DEV_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's queue service (npm `azurite`, installed by scripts/test-deps.sh) on a free port.
fn start_azurite() -> (KillOnDrop, String) {
    let port = free_port();
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("azurite/node_modules/.bin/azurite-queue");
    let child = KillOnDrop(
        Command::new(&bin)
            .args(["--queueHost", "127.0.0.1", "--queuePort", &port.to_string()])
            .args([
                "--skipApiVersionCheck",
                "--inMemoryPersistence",
                "--disableTelemetry",
                "--silent",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{} ({e}): run scripts/test-deps.sh", bin.display())),
    );
    wait_for_port(port, "azurite-queue");
    let conn = format!(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={DEV_KEY};\
         QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    );
    (child, conn)
}

fn spawn_worker(h: &Harness, conn: &str, stages: &str) -> KillOnDrop {
    KillOnDrop(
        Command::new(BIN)
            .args(["--store", &h.store_spec, "--queue", QUEUE, "worker", "--stages", stages])
            .args(["--concurrency", "4", "--lease-secs", "10"])
            .args([
                "--max-attempts",
                "3",
                "--backoff-base-ms",
                "50",
                "--backoff-cap-ms",
                "200",
            ])
            .env("SIGNALS_AZURE_CONNECTION", conn)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn worker"),
    )
}

async fn wait_until<F, Fut>(what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !ok().await {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_through_azure_queues_with_dead_letters_and_a_poison_queue() {
    let (_azurite, conn) = start_azurite();
    // SAFETY: set before this test's own queue client reads it; no other test runs in this binary.
    unsafe { std::env::set_var("SIGNALS_AZURE_CONNECTION", &conn) };
    let queue = AzureQueue::create(QUEUE)
        .await
        .expect("create the stage queues in Azurite");

    // A lease renewed twice (each renewal changes the pop receipt) still acknowledges the message.
    queue.enqueue(&[Job::new(Task::Prune)], Duration::ZERO).await.unwrap();
    let claimed = queue
        .claim(5, Duration::from_secs(30), &[Stage::Scheduler])
        .await
        .unwrap();
    assert_eq!((claimed.len(), claimed[0].attempts), (1, 1));
    assert!(
        matches!(Job::decode(claimed[0].body.as_bytes()).unwrap().task, Task::Prune),
        "base64 round trip"
    );
    queue.extend(&claimed[0], Duration::from_secs(30)).await.unwrap();
    queue.extend(&claimed[0], Duration::from_secs(30)).await.unwrap();
    queue.ack(&claimed[0]).await.unwrap();
    assert_eq!(queue.depth(&[]).await.unwrap().0, 0);

    let h = Harness::on(StoreKind::Sqlite).await;
    create_items(&h.src(), 3_000);
    let (sources, _) = items_and_a_poison_source(&h);
    let path = signals_tests::write_config(&h, &h.config(&sources));
    let env = [("SIGNALS_AZURE_CONNECTION", conn.as_str())];
    let (ok, out) = signals_tests::run_cli(BIN, &h, &["config", "apply", &path], &env);
    assert!(ok.success(), "{out}");
    let (ok, out) = signals_tests::run_cli(BIN, &h, &["--queue", QUEUE, "onboard", "--tenant", "t"], &env);
    assert!(ok.success(), "{out}");
    assert_eq!(
        queue.depth(&[]).await.unwrap().0,
        1,
        "the onboarding job waits in Azure"
    );

    let _front = spawn_worker(&h, &conn, "scheduler,snapshot");
    let _back = spawn_worker(&h, &conn, "merge,batch,push");
    let settled = |items_runs: usize| {
        let (h, queue) = (&h, &queue);
        move || async move {
            let runs = h.runs().await;
            let items = runs
                .iter()
                .filter(|r| r.source == "items" && r.display_state() == "done")
                .count();
            let blocked = runs
                .iter()
                .any(|r| r.source == "poison" && r.display_state() == "blocked");
            items == items_runs && blocked && queue.depth(&[]).await.unwrap().0 == 0
        }
    };
    wait_until("the initial sync and the poison source's dead letter", settled(1)).await;
    h.assert_in_sync_for("items").await;

    // The failing source: three deliveries (Azure's dequeueCount), then a dead letter in the store.
    let dead = h.store.dead_letters(true).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert_eq!(
        (dead[0].stage.as_str(), dead[0].attempts, dead[0].source.as_deref()),
        ("snapshot", 3, Some("poison"))
    );

    mutate_items(&h.src(), 3_000);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    queue.enqueue(&[Job::new(Task::Tick)], Duration::ZERO).await.unwrap();
    wait_until("the interval sync", settled(2)).await;
    h.assert_in_sync_for("items").await;

    // Another producer's garbage: not a job, so not a store dead letter — the poison queue.
    queue.send_raw(Stage::Snapshot, "this is not a job").await.unwrap();
    let poison = queue.poison_name();
    wait_until("the undecodable message in the poison queue", || {
        let (queue, poison) = (&queue, &poison);
        async move { queue.count(poison).await.unwrap() == 1 && queue.depth(&[]).await.unwrap().0 == 0 }
    })
    .await;
    assert_eq!(
        h.store.dead_letters(true).await.unwrap().len(),
        1,
        "no dead letter for it in the store"
    );
    assert_eq!(h.store.depth(&[]).await.unwrap().0, 0, "the table queue was never used");
}
