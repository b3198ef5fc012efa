//! Gentle on the customer's database: a query limit per source server, push-down hashing, the
//! watermark mode, and the bytes each run reads from the source.

use signals_tests::{Harness, PgSource, StoreKind};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_sources_on_one_server_never_run_more_than_its_limit_of_queries() {
    let h = Harness::on(StoreKind::Postgres).await;
    let pg = PgSource::new(&h).await;
    let mut sources = String::new();
    for i in 0..6 {
        pg.exec(&format!(
            "CREATE TABLE {{s}}.t{i} (id BIGINT PRIMARY KEY, v TEXT);
             INSERT INTO {{s}}.t{i} SELECT g, repeat('x', 50) FROM generate_series(1, 400) g;"
        ))
        .await;
        sources.push_str(&format!(
            // A slow query (a short sleep per row) so that reads overlap if nothing holds them back.
            "[tenants.t.sources.s{i}]\nconnection = \"db\"\nquery = \"SELECT id, v FROM {{s}}.t{i} WHERE pg_sleep(0.001) IS NOT NULL\"\n\
             key = [\"id\"]\nchunk_rows = 1000\n\n"
        ));
    }
    let config = pg.config(&h, &sources).replace(
        "[tenants.t.connections.db]\n",
        "[tenants.t.connections.db]\nmax_concurrent_queries = 2\n",
    );
    h.apply(&config).await;

    // Watch the server itself: active queries that touch the source schema.
    let (peak, stop) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicBool::new(false)));
    let watcher = {
        let (peak, stop, schema) = (peak.clone(), stop.clone(), pg.schema.clone());
        let (client, conn) = tokio_postgres::connect(&signals_tests::pg_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        tokio::spawn(async move {
            let sql = format!(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE '%{schema}%'"
            );
            while !stop.load(Ordering::Relaxed) {
                let n: i64 = client.query_one(&sql, &[]).await.unwrap().get(0);
                peak.fetch_max(n, Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        })
    };
    h.onboard().await;
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let runs = h.runs().await;
    assert_eq!(runs.len(), 6);
    assert!(runs.iter().all(|r| r.display_state() == "done"), "{runs:#?}");
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak <= 2, "{peak} queries ran at once on the source server");
    assert!(peak >= 1, "the watcher saw the source queries");
    h.assert_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_hash_reads_keys_and_hashes_plus_only_the_changed_rows() {
    const ROWS: i64 = 200_000;
    let h = Harness::on(StoreKind::Postgres).await;
    let pg = PgSource::new(&h).await;
    pg.exec(&format!(
        "CREATE TABLE {{s}}.big (id BIGINT PRIMARY KEY, name TEXT, amount NUMERIC(12,2), flag BOOLEAN, at TIMESTAMPTZ);
         INSERT INTO {{s}}.big SELECT g, 'name ' || g, g / 100.0, g % 2 = 0, TIMESTAMPTZ '2025-01-01' + g * INTERVAL '1 minute'
         FROM generate_series(1, {ROWS}) g;"
    ))
    .await;
    let sources =
        "[tenants.t.sources.big]\nconnection = \"db\"\ntable = \"{s}.big\"\nkey = [\"id\"]\ninterval_secs = 1\n\
                   chunk_rows = 50000\ndiff = \"remote_hash\"\n";
    h.apply(
        &pg.config(&h, sources)
            .replace("batch_max_rows = 500", "batch_max_rows = 5000"),
    )
    .await;
    h.onboard().await;
    let initial = h.runs().await.remove(0);
    assert_eq!((initial.display_state(), initial.inserts), ("done", ROWS));

    // 1% changes: 1,000 updates, 500 inserts, 500 deletes.
    pg.exec(&format!(
        "UPDATE {{s}}.big SET name = name || '*' WHERE id % 200 = 0;
         DELETE FROM {{s}}.big WHERE id % 400 = 1;
         INSERT INTO {{s}}.big SELECT g, 'new', 1, true, now() FROM generate_series({ROWS} + 1, {ROWS} + 500) g;"
    ))
    .await;
    h.interval().await;
    let run = h.runs().await.remove(0);
    assert_eq!(
        (run.display_state(), run.inserts, run.updates, run.deletes),
        ("done", 500, 1_000, 500)
    );
    // Every row crosses as (key, hash): 9 key bytes + 16; the 1,500 changed rows cross whole.
    let keys_and_hashes = run.rows_read * (9 + 16);
    assert!(
        run.bytes_read >= keys_and_hashes,
        "{} < {keys_and_hashes}",
        run.bytes_read
    );
    assert!(
        run.bytes_read <= keys_and_hashes + 1_500 * 120,
        "read {} bytes",
        run.bytes_read
    );
    assert!(
        run.bytes_read * 2 < initial.bytes_read,
        "interval {} vs initial {}",
        run.bytes_read,
        initial.bytes_read
    );
    h.assert_in_sync().await;
}

/// Push-down hashing with a masked column: the initial run reads rows and hashes at once,
/// masks the rows and keeps the server's hash of the raw values, so a change to the masked
/// column alone is still found — and nothing else is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_hash_masks_what_it_reads_and_still_sees_a_masked_column_change() {
    let h = Harness::on(StoreKind::Postgres).await;
    let pg = PgSource::new(&h).await;
    pg.exec(
        "CREATE TABLE {s}.people (id BIGINT PRIMARY KEY, name TEXT, email TEXT);
         INSERT INTO {s}.people SELECT g, 'name ' || g, 'secret' || g || '@example.com' FROM generate_series(1, 3000) g;",
    )
    .await;
    let sources = "[tenants.t.sources.people]\nconnection = \"db\"\ntable = \"{s}.people\"\nkey = [\"id\"]\n\
                   interval_secs = 1\nchunk_rows = 1000\ndiff = \"remote_hash\"\nmask_columns = [\"email\"]\n";
    h.apply(&pg.config(&h, sources)).await;
    h.onboard().await;
    h.assert_in_sync().await;
    let rows = h.receiver.db.rows("t", "people").unwrap();
    assert_eq!(rows.len(), 3000);
    assert!(
        rows.iter()
            .all(|(_, r)| r.contains("\"email\":\"sha256:") && !r.contains("secret")),
        "{:?}",
        rows.first()
    );

    pg.exec("UPDATE {s}.people SET email = 'changed@example.com' WHERE id = 7")
        .await;
    h.interval().await;
    let run = h.runs().await.remove(0);
    assert_eq!(
        (run.display_state(), run.inserts, run.updates, run.deletes),
        ("done", 0, 1, 0)
    );
    h.assert_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_reads_what_moved_and_the_periodic_full_diff_finds_the_rest() {
    let h = Harness::on(StoreKind::Postgres).await;
    let pg = PgSource::new(&h).await;
    pg.exec(
        "CREATE TABLE {s}.items (id BIGINT PRIMARY KEY, name TEXT, updated_at TIMESTAMPTZ NOT NULL);
                  INSERT INTO {s}.items SELECT g, 'item ' || g, TIMESTAMPTZ '2025-01-01 00:00:00+00' + g * INTERVAL '1 minute'
         FROM generate_series(1, 2000) g;",
    )
    .await;
    let sources = "[tenants.t.sources.items]\nconnection = \"db\"\ntable = \"{s}.items\"\nkey = [\"id\"]\ninterval_secs = 1\n\
                   diff = \"watermark\"\nwatermark_column = \"updated_at\"\nwatermark_overlap = 1\nfull_diff_interval_secs = 4\n";
    h.apply(&pg.config(&h, sources)).await;
    h.onboard().await;
    h.assert_in_sync().await;

    pg.exec(
        "UPDATE {s}.items SET name = 'moved', updated_at = '2025-06-01 00:00:00+00' WHERE id = 10;
         INSERT INTO {s}.items VALUES (5000, 'new', '2025-06-01 00:00:00+00');
         UPDATE {s}.items SET name = 'sneaky' WHERE id = 20;
         DELETE FROM {s}.items WHERE id = 30;",
    )
    .await;
    h.interval().await;
    let run = h.runs().await.remove(0);
    assert_eq!(
        (run.display_state(), run.inserts, run.updates, run.deletes),
        ("done", 1, 1, 0),
        "{run:#?}"
    );
    // Only rows at or past the cursor minus the 1 s overlap: the two moved ones, and row 2000,
    // whose timestamp is the cursor itself (re-read, unchanged, not sent).
    assert_eq!(run.rows_read, 3, "only the rows past the cursor were read");
    let report = &h.verify().await[0].2;
    assert_eq!(
        (report.different, report.extra),
        (1, 1),
        "the cursor cannot see id 20's edit nor id 30's delete yet"
    );

    // The periodic full diff is due: it finds the edit that did not move the cursor and the delete.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    h.interval().await;
    let run = h.runs().await.remove(0);
    assert_eq!(
        (run.display_state(), run.inserts, run.updates, run.deletes),
        ("done", 0, 1, 1),
        "{run:#?}"
    );
    assert!(run.mode.as_ref().is_some_and(|m| m.full));
    h.assert_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_work_waits_for_the_sync_window() {
    use chrono::Timelike;
    use signals_shared::domain::job::{Job, Task};
    use signals_shared::hosts::{execute, Outcome};
    let h = Harness::new().await;
    signals_tests::create_items(&h.src(), 10);
    // A two-hour window that starts an hour from now: the current hour is outside it.
    let start = (chrono::Utc::now().hour() + 1) % 24;
    let window = format!("heavy_hours = \"{start}-{}\"\n", (start + 2) % 24);
    let config = h.config(&signals_tests::items_source(1_000)).replace(
        "[tenants.t.connections.db]\n",
        &format!("[tenants.t.connections.db]\n{window}"),
    );
    h.apply(&config).await;
    let Outcome::Done(plans) = execute(
        &h.ctx,
        &Job::new(Task::Onboard {
            tenant: "t".into(),
            reports: vec![],
        }),
    )
    .await
    else {
        panic!("onboarding failed")
    };
    let Outcome::Done(next) = execute(&h.ctx, &plans[0]).await else {
        panic!("planning failed")
    };
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].task, plans[0].task, "the plan job itself comes back later");
    let at = next[0].not_before.expect("deferred");
    assert_eq!((at.hour(), at.minute()), (start, 0));
    let run = h.runs().await.remove(0);
    assert_eq!(run.display_state(), "planning");
    assert!(
        run.last_error
            .as_deref()
            .is_some_and(|e| e.contains("waiting for the sync window")),
        "{run:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sources_take_an_integer_version_as_their_watermark() {
    let h = Harness::new().await;
    h.src()
        .execute_batch(
            "CREATE TABLE docs (id INTEGER PRIMARY KEY, body TEXT, version INTEGER NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
             INSERT INTO docs SELECT i, 'doc ' || i, i FROM n;",
        )
        .unwrap();
    let sources =
        "[tenants.t.sources.docs]\nconnection = \"db\"\ntable = \"docs\"\nkey = [\"id\"]\ninterval_secs = 1\n\
                   diff = \"watermark\"\nwatermark_column = \"version\"\nwatermark_overlap = 0\n";
    h.apply(&h.config(sources)).await;
    h.onboard().await;
    h.src()
        .execute_batch(
            "UPDATE docs SET body = 'edited', version = 501 WHERE id = 7; INSERT INTO docs VALUES (900, 'new', 502);",
        )
        .unwrap();
    h.interval().await;
    let run = h.runs().await.remove(0);
    assert_eq!(
        (run.display_state(), run.inserts, run.updates, run.rows_read),
        ("done", 1, 1, 3),
        "{run:#?}"
    );
    h.assert_in_sync().await;
}
