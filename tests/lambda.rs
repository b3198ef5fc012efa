//! Every function binary under cargo-lambda's local Lambda runtime (`cargo lambda watch
//! --only-lambda-apis`), invoked with `cargo lambda invoke --data-file events/…`: an SQS batch with
//! one malformed and one failing record answers exactly those two in `batchItemFailures`; the
//! others are done — including a job past its attempts, which becomes a dead letter in the store.
//! (The function binaries are the workspace's own build: `make test` builds them first.)
//! Follow-up jobs go to the SQS queues (moto's server); a scheduled event runs the timer tick.

use signals_shared::ports::JobQueue;
use signals_shared::sqs::SqsQueue;
use signals_tests::{create_items, free_port, wait_for_port, Harness, KillOnDrop, Moto, StoreKind};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_signals-under-test");
const STAGES: [&str; 5] = ["scheduler", "snapshot", "merge", "batch", "push"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `cargo lambda invoke NAME --data-file FILE`; returns the function's JSON response.
fn invoke(port: u16, name: &str, file: &str) -> serde_json::Value {
    let out = Command::new("cargo")
        .current_dir(workspace())
        .args(["lambda", "invoke", name, "-A", "127.0.0.1", "-P", &port.to_string()])
        .args([
            "--data-file",
            &workspace().join("events").join(file).display().to_string(),
        ])
        .args(["--output-format", "json"])
        .output()
        .expect("cargo lambda (scripts/test-deps.sh installs it from PyPI)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "invoke {name} with {file}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{name}: not JSON ({e}): {stdout}"))
}

fn record_id(n: u32) -> String {
    format!("059f36b4-87a3-44ab-83d2-{n:012}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_function_answers_sqs_batches_with_exactly_the_failed_records() {
    let moto = Moto::start();
    for (k, v) in moto.env() {
        // SAFETY: set before this test's own SQS client reads them; no other test runs in this binary.
        unsafe { std::env::set_var(k, v) };
    }
    // The fixtures' event source ARNs name `signals-<stage>` queues.
    let queues = SqsQueue::create("sqs://signals", 10).await.unwrap();
    let h = Harness::on(StoreKind::Sqlite).await;
    create_items(&h.src(), 1_200);
    let missing = h.dir.path().join("not-there.db");
    h.apply(&format!(
        "[destinations.platform]\nurl = \"{}\"\n\n[tenants.demo]\ndestination = \"platform\"\nreports = {{ sales = [\"items\"] }}\n\n\
         [tenants.demo.connections.db]\nsqlite_path = \"{}\"\n\n[tenants.demo.connections.later]\nsqlite_path = \"{}\"\n\n\
         [tenants.demo.sources.items]\nconnection = \"db\"\ntable = \"items\"\nkey = [\"id\"]\n\n\
         [tenants.demo.sources.orders]\nconnection = \"later\"\ntable = \"orders\"\nkey = [\"id\"]\n",
        h.url,
        h.source.display(),
        missing.display()
    ))
    .await;

    let port = free_port();
    let _emulator = KillOnDrop(
        Command::new("cargo")
            .current_dir(workspace())
            .args([
                "lambda",
                "watch",
                "--only-lambda-apis",
                "-A",
                "127.0.0.1",
                "-P",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cargo lambda (scripts/test-deps.sh installs it from PyPI)"),
    );
    wait_for_port(port, "cargo lambda watch");

    for stage in STAGES {
        let name = format!("signals-{stage}");
        let bin = Path::new(BIN).with_file_name(&name);
        let log = h.dir.path().join(format!("{name}.log"));
        let metrics = h.dir.path().join(format!("{name}.metrics"));
        assert!(
            bin.exists(),
            "{} missing: `cargo build --workspace --bins` first (make test does)",
            bin.display()
        );
        let _function = KillOnDrop(
            Command::new(&bin)
                .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt/{name}"))
                .env("AWS_LAMBDA_FUNCTION_NAME", &name)
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
                .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                .env("SIGNALS_STORE", &h.store_spec)
                .env("SIGNALS_QUEUE", "sqs://signals")
                .envs(moto.env())
                .stdout(std::fs::File::create(&metrics).unwrap())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        let response = invoke(port, &name, "sqs/partial-failure.json");
        let failed: BTreeSet<String> = response["batchItemFailures"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {response}"))
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            failed,
            BTreeSet::from([record_id(63), record_id(64)]),
            "{name}: the malformed body and the failing verify, nothing else; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // The invocation's metrics: one CloudWatch Embedded Metric Format line on stdout.
        let emf: serde_json::Value = std::fs::read_to_string(&metrics)
            .unwrap()
            .lines()
            .find_map(|l| {
                serde_json::from_str(l)
                    .ok()
                    .filter(|v: &serde_json::Value| v.get("_aws").is_some())
            })
            .unwrap_or_else(|| panic!("{name}: no EMF metrics line"));
        assert_eq!(
            (
                &emf["stage"],
                &emf["jobs_done"],
                &emf["jobs_dead_lettered"],
                &emf["messages_undecodable"]
            ),
            (
                &serde_json::json!(stage),
                &serde_json::json!(2),
                &serde_json::json!(1),
                &serde_json::json!(1)
            ),
            "{name}: {emf}"
        );
        assert_eq!(emf["_aws"]["CloudWatchMetrics"][0]["Namespace"], "SignalsETL");
        if stage == "scheduler" {
            assert_eq!(invoke(port, &name, "scheduled/tick.json"), serde_json::Value::Null);
        }
    }

    // Done means done: the onboarding opened the run and queued its plan job in SQS; the job past
    // its attempts is a dead letter in the store — once, though five functions saw that message.
    let runs = h.store.runs(Some("demo"), 10).await.unwrap();
    assert_eq!(
        runs.iter()
            .map(|r| (r.tenant.as_str(), r.source.as_str()))
            .collect::<Vec<_>>(),
        [("demo", "items")]
    );
    assert_eq!(
        queues
            .depth(&[signals_shared::domain::job::Stage::Snapshot])
            .await
            .unwrap()
            .0,
        1
    );
    let dead = h.store.dead_letters(true).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    for d in &dead {
        assert_eq!(
            (d.stage.as_str(), d.attempts, d.source.as_deref()),
            ("snapshot", 5, Some("orders"))
        );
        assert!(
            d.error.contains("later") || d.error.contains("not-there.db"),
            "{}",
            d.error
        );
    }
    assert_eq!(
        h.store.depth(&[]).await.unwrap().0,
        0,
        "nothing went to the table queue"
    );
}
