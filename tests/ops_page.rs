//! The operations page in a real browser (Debian's Chromium driven by playwright-core): it lists
//! the tenant and data sources of a test sync with their recent runs, shows a dead letter (its
//! error escaped, not interpreted), and its retry button re-queues the job only with the operator
//! token; a page started without a token is read-only.

use signals_shared::receiver::faults::Fault;
use signals_tests::{create_items, free_port, http, items_source, Harness, KillOnDrop, StoreKind};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_signals-under-test");
const TOKEN: &str = "op-token-7f3a";

async fn start_ui(h: &Harness, token: bool) -> (KillOnDrop, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(BIN);
    cmd.args(["--store", &h.store_spec, "ui", "--listen", &addr])
        .env("OPS_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if token {
        cmd.args(["--operator-token", "env:OPS_TOKEN"]);
    }
    let ui = KillOnDrop(cmd.spawn().expect("spawn signals ui"));
    assert!(http(&addr, "GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .starts_with("HTTP/1.0 200"));
    (ui, addr)
}

fn post_retry(id: i64, token: &str) -> String {
    let body = format!("token={token}");
    format!(
        "POST /dead-letters/{id}/retry HTTP/1.0\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operations_page_shows_the_sync_and_retries_only_with_the_token() {
    let h = Harness::on(StoreKind::Sqlite).await;
    create_items(&h.src(), 1_500);
    h.src()
        .execute_batch(
            "CREATE TABLE tags (sku TEXT PRIMARY KEY, label TEXT); INSERT INTO tags VALUES ('a', 'x'), ('b', NULL);",
        )
        .unwrap();
    let sources = format!(
        "{}\n[tenants.t.sources.tags]\nconnection = \"db\"\ntable = \"tags\"\nkey = [\"sku\"]\n",
        items_source(1_000)
    );
    h.apply(&h.config(&sources)).await;
    // One batch of items is refused with markup in the response: it must show as text.
    h.receiver.faults.push(Fault {
        dataset: Some("items".into()),
        ..Fault::once(400, Some("<b id=injected>price</b> failed validation"))
    });
    h.onboard().await;
    let dead = h.store.dead_letters(true).await.unwrap();
    assert_eq!(dead.len(), 1);
    let id = dead[0].id;

    // Read-only page: no retry, whatever token is sent.
    let (_readonly, addr) = start_ui(&h, false).await;
    let page = http(&addr, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(page.contains("Read-only") && page.contains("disabled"), "{page}");
    let refused = http(&addr, &post_retry(id, TOKEN)).await;
    assert!(refused.starts_with("HTTP/1.0 403"), "{refused}");
    assert_eq!(h.store.dead_letter_by_id(id).await.unwrap().unwrap().state, "open");

    // The page with an operator token, in Chromium.
    let (_ui, addr) = start_ui(&h, true).await;
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui");
    std::fs::create_dir_all(&shots).unwrap();
    let shot = shots.join("ops-page.png");
    let _ = std::fs::remove_file(&shot);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/ops_page.mjs");
    let out = Command::new("node")
        .arg(&script)
        .arg(format!("http://{addr}/"))
        .arg(&shot)
        .env("OPS_TOKEN", TOKEN)
        .output()
        .expect("run node (scripts/test-deps.sh installs the browser test's packages)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser run failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON line");

    assert_eq!(seen["status"], 200);
    assert!(
        seen["summary"].as_str().unwrap().contains("1 tenants · 2 data sources"),
        "{seen}"
    );
    let sources = seen["sources"].as_array().unwrap();
    let row = |s: &str| {
        sources
            .iter()
            .find(|r| r["source"] == s)
            .unwrap_or_else(|| panic!("{s}: {seen}"))
    };
    assert_eq!(
        (&row("items")["tenant"], &row("items")["state"]),
        (&"t".into(), &"blocked".into())
    );
    assert_eq!(row("tags")["state"], "done");
    assert!(
        row("items")["bars"].as_u64().unwrap() >= 1,
        "a bar for the initial run: {seen}"
    );
    let shown = &seen["deadLetters"][0];
    assert_eq!(shown["id"], id);
    assert!(
        shown["error"]
            .as_str()
            .unwrap()
            .contains("<b id=injected>price</b> failed validation"),
        "the error shows as text, markup and all: {seen}"
    );
    assert_eq!(seen["wrongToken"]["status"], 403, "{seen}");
    assert!(seen["wrongToken"]["text"]
        .as_str()
        .unwrap()
        .contains("wrong operator token"));
    assert!(seen["rightToken"]["notice"]
        .as_str()
        .unwrap()
        .contains(&format!("dead letter {id}: push job re-queued")));
    assert_eq!(seen["rightToken"]["remaining"], 0, "{seen}");
    assert!(
        std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false),
        "screenshot at {}",
        shot.display()
    );

    // Exactly one retry was recorded, by the page, and it completes the run.
    let d = h.store.dead_letter_by_id(id).await.unwrap().unwrap();
    assert_eq!((d.state.as_str(), d.resolved_by.as_deref()), ("retried", Some("ui")));
    assert_eq!(h.store.depth(&[]).await.unwrap().0, 1, "one job re-queued");
    h.run_until_idle().await;
    assert!(h.runs().await.iter().all(|r| r.display_state() == "done"));
    h.assert_in_sync().await;
}
