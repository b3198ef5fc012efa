//! The fixtures in `events/` are the shapes the clouds deliver; each replays through the handlers.

use signals_shared::domain::job::{Job, Stage};
use signals_shared::hosts::events::parse_event;
use signals_tests::{create_items, run_cli, write_config, Harness};
use std::path::PathBuf;

const BIN: &str = env!("CARGO_BIN_EXE_signals-under-test");

fn event(path: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(path)
        .display()
        .to_string()
}

#[test]
fn every_fixture_parses_as_an_event() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events");
    let mut seen = 0;
    for sub in ["scheduled", "sqs"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(!parse_event(&text).unwrap().is_empty(), "{}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 9, "fixtures found: {seen}");
}

#[test]
fn each_stage_has_an_sqs_event_of_its_own_jobs() {
    for stage in Stage::ALL {
        let text = std::fs::read_to_string(event(&format!("sqs/{stage}.json"))).unwrap();
        let messages = parse_event(&text).unwrap();
        assert!(!messages.is_empty(), "{stage}");
        for m in messages {
            assert_eq!(Job::decode(m.body.as_bytes()).unwrap().stage(), stage, "{}", m.origin);
        }
    }
    // The partial-failure batch: several records, exactly one of them malformed.
    let text = std::fs::read_to_string(event("sqs/partial-failure.json")).unwrap();
    let bodies: Vec<_> = parse_event(&text)
        .unwrap()
        .into_iter()
        .map(|m| Job::decode(m.body.as_bytes()).is_ok())
        .collect();
    assert_eq!(bodies, [true, true, false, true, true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_an_onboard_event_with_follow_syncs_the_tenant() {
    let h = Harness::new().await;
    create_items(&h.src(), 1_200);
    let config = format!(
        "[destinations.platform]\nurl = \"{}\"\n\n[tenants.demo]\ndestination = \"platform\"\nreports = {{ sales = [\"items\"] }}\n\n\
         [tenants.demo.connections.db]\nsqlite_path = \"{}\"\n\n[tenants.demo.sources.items]\nconnection = \"db\"\ntable = \"items\"\nkey = [\"id\"]\n",
        h.url,
        h.source.display()
    );
    let path = write_config(&h, &config);
    assert!(run_cli(BIN, &h, &["config", "apply", &path], &[]).0.success());
    let (status, out) = run_cli(BIN, &h, &["replay", &event("sqs/onboard.json"), "--follow"], &[]);
    assert!(status.success(), "{out}");
    assert!(out.contains("scheduler job done, 1 next"), "{out}");
    let (status, out) = run_cli(BIN, &h, &["status"], &[]);
    assert!(
        status.success() && out.contains("demo") && out.contains("done"),
        "{out}"
    );
    assert_eq!(h.stats().changes, 1_200);

    let (status, out) = run_cli(BIN, &h, &["replay", &event("scheduled/tick.json")], &[]);
    assert!(status.success(), "{out}");
    assert!(out.contains("scheduler job done"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_is_an_error_and_a_dead_letter() {
    let h = Harness::new().await;
    let (status, out) = run_cli(BIN, &h, &["replay", &event("sqs/malformed-body.json")], &[]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("job message is not valid JSON"), "{out}");
    let (_, out) = run_cli(BIN, &h, &["dlq", "list"], &[]);
    assert!(out.contains("unknown") && out.contains("not valid JSON"), "{out}");
    let (status, out) = run_cli(BIN, &h, &["replay", "/nonexistent/event.json"], &[]);
    assert!(
        !status.success() && out.contains("cannot read /nonexistent/event.json"),
        "{out}"
    );
}
