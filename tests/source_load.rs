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
