//! The PostgreSQL store's layout changes: each leaves what an earlier build's workers read and
//! write by name working, and loses nothing staged or in flight.

use signals_tests::{assert_the_latest_run_sent_its_changes_once, postgres_with_items, store_client};
use std::time::Duration;

/// Staging as the PostgreSQL store kept it before source ids (one table keyed by tenant and data
/// source names), re-keyed when a store of this build opens it: nothing staged is lost — the next
/// interval sync sends exactly the changes — and a worker of the older build still reads, copies
/// into and deletes from staging by name, while its upsert fails (its job is retried by a newer
/// worker) instead of writing beside the new table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_staging_rekeyed_by_source_id_keeps_every_staged_row() {
    // Staged per key, as an initial run before packs (decision 0029) staged its keys.
    let h = postgres_with_items().await.merging_initial_runs();
    h.onboard().await;
    let c = store_client(&h).await;
    let s = &h.store_schema;
    let count = |table: &'static str| {
        let c = &c;
        async move {
            let n: i64 = c
                .query_one(&format!("SELECT COUNT(*) FROM {s}.{table}"), &[])
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    // Back to the layout before the re-key (migration 10), staged rows and all; the migrations
    // after it run again too.
    c.batch_execute(&format!(
        "CREATE TABLE {s}.staging_old (tenant TEXT NOT NULL, source TEXT NOT NULL, key BYTEA NOT NULL,
             hash BYTEA NOT NULL, PRIMARY KEY (tenant, source, key));
         INSERT INTO {s}.staging_old SELECT tenant, source, key, hash FROM {s}.staging;
         DROP VIEW {s}.staging; DROP FUNCTION {s}.staging_write(); DROP TABLE {s}.staging_keys, {s}.sources;
         ALTER TABLE {s}.staging_old RENAME TO staging;
         UPDATE {s}.meta SET value = 9 WHERE key = 'schema_version';"
    ))
    .await
    .unwrap();
    assert_eq!(count("staging").await, 3_000);

    signals_shared::backends::open(&h.store_spec, s).await.unwrap();
    assert_eq!(count("staging_keys").await, 3_000, "every staged row re-keyed");
    assert_eq!(count("sources").await, 1);

    // What a worker of the older build still does by name.
    let old_select =
        format!("SELECT key, hash FROM {s}.staging WHERE tenant = $1 AND source = $2 ORDER BY key LIMIT 1");
    let first = c.query_one(&old_select, &[&"t", &"items"]).await.unwrap();
    let (key, hash): (Vec<u8>, Vec<u8>) = (first.get(0), first.get(1));
    let deleted = c
        .execute(
            &format!("DELETE FROM {s}.staging WHERE tenant = $1 AND source = $2 AND key = ANY($3::BYTEA[])"),
            &[&"t", &"items", &vec![key.clone()]],
        )
        .await
        .unwrap();
    assert_eq!((deleted, count("staging_keys").await), (1, 2_999));
    let sink = c
        .copy_in(&format!(
            "COPY {s}.staging (tenant, source, key, hash) FROM STDIN BINARY"
        ))
        .await
        .unwrap();
    use tokio_postgres::types::{ToSql, Type};
    let mut writer = std::pin::pin!(tokio_postgres::binary_copy::BinaryCopyInWriter::new(
        sink,
        &[Type::TEXT, Type::TEXT, Type::BYTEA, Type::BYTEA]
    ));
    let row: [&(dyn ToSql + Sync); 4] = [&"t", &"items", &key, &hash];
    writer.as_mut().write(&row).await.unwrap();
    writer.as_mut().finish().await.unwrap();
    assert_eq!(
        count("staging_keys").await,
        3_000,
        "the old build's COPY lands in the new table"
    );
    let upsert = c
        .execute(
            &format!(
                "INSERT INTO {s}.staging (tenant, source, key, hash) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tenant, source, key) DO UPDATE SET hash = EXCLUDED.hash"
            ),
            &[&"t", &"items", &key, &hash],
        )
        .await;
    assert!(upsert.is_err(), "an old upsert fails rather than writing elsewhere");

    signals_tests::mutate_items(&h.src(), 3_000);
    h.interval().await;
    assert_the_latest_run_sent_its_changes_once(&h).await;
    // Later merges of the source reuse its id and take no sequence number each (an int4 id
    // would otherwise run out after enough interval syncs).
    let last: i64 = c
        .query_one(&format!("SELECT last_value FROM {s}.sources_sid_seq"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, 1);
}

/// PostgreSQL staging pages keep room for interval merges: a store of an earlier build (pages
/// filled to the brim) gets the fill factor when this build opens it, and an interval sync's new
/// hashes are then written on the page of the row they replace (heap-only updates, which add no
/// primary-key entry and log no index page), where a full page would move every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_staging_pages_keep_room_for_interval_updates() {
    // Staged per key by a merging initial run: a packed initial run's keys get per-key rows only
    // as interval syncs change them, and those rows are what later updates rewrite in place.
    let h = postgres_with_items().await.merging_initial_runs();
    let c = store_client(&h).await;
    let s = &h.store_schema;
    let partitions =
        format!("SELECT inhrelid::REGCLASS::TEXT FROM pg_inherits WHERE inhparent = '{s}.staging_keys'::REGCLASS");
    for r in c.query(&partitions, &[]).await.unwrap() {
        let part: String = r.get(0);
        c.batch_execute(&format!("ALTER TABLE {part} RESET (fillfactor)"))
            .await
            .unwrap();
    }
    c.batch_execute(&format!("UPDATE {s}.meta SET value = 11 WHERE key = 'schema_version'"))
        .await
        .unwrap();
    signals_shared::backends::open(&h.store_spec, s).await.unwrap();
    let options = format!(
        "SELECT COUNT(*) FILTER (WHERE 'fillfactor=90' = ANY(reloptions)), COUNT(*) FROM pg_class \
         WHERE oid::REGCLASS::TEXT IN ({partitions})"
    );
    let (with, all): (i64, i64) = c.query_one(&options, &[]).await.map(|r| (r.get(0), r.get(1))).unwrap();
    assert_eq!((with, all), (16, 16), "every staging partition migrated");

    h.onboard().await;
    // Each staged key's hash and the heap page its row is on.
    let staged = || async {
        c.query(
            &format!(
                "SELECT key, hash, (ctid::TEXT::POINT)[0]::BIGINT FROM {s}.staging_keys \
                 WHERE sid = (SELECT sid FROM {s}.sources WHERE tenant = 't' AND source = 'items')"
            ),
            &[],
        )
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get::<_, Vec<u8>>(0), (r.get::<_, Vec<u8>>(1), r.get::<_, i64>(2))))
        .collect::<std::collections::HashMap<_, _>>()
    };
    let before = staged().await;
    signals_tests::mutate_items(&h.src(), 3_000);
    h.interval().await;
    assert_the_latest_run_sent_its_changes_once(&h).await;
    let after = staged().await;
    let updated: Vec<_> = before
        .iter()
        .filter_map(|(key, (hash, page))| after.get(key).filter(|(h, _)| h != hash).map(|(_, p)| (*page, *p)))
        .collect();
    assert_eq!(updated.len(), 27, "the items edited (id % 97 = 0, a name to edit)");
    let moved = updated.iter().filter(|(was, now)| was != now).count();
    assert_eq!(moved, 0, "updated rows stay on their pages: {updated:?}");
}

/// On PostgreSQL an initial run that merges (one planned before decision 0025) writes its delta
/// segments and batches into tables of its own that inherit the shared ones, dropped when the
/// run is done (decision 0016): a worker of an earlier build still reads them through the
/// shared tables by name, rows such a worker wrote into the
/// shared tables are merged and sent too, the batches' record outlives the tables, and tables an
/// earlier build left behind are pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_initial_runs_keep_their_scratch_in_tables_of_their_own() {
    use signals_shared::domain::job::Stage;
    use signals_shared::domain::segment;
    let h = postgres_with_items().await.merging_initial_runs();
    h.enqueue_onboard().await;
    h.run_stages_until_idle(vec![Stage::Scheduler, Stage::Snapshot]).await;
    let run = h.runs().await.remove(0);
    assert_eq!(run.state.as_str(), "snapshotted");
    let c = store_client(&h).await;
    let s = &h.store_schema;
    let own = format!("{s}.\"delta_segments_{}\"", run.id);
    let exists = |table: String| {
        let c = &c;
        async move {
            let found: Option<String> = c
                .query_one("SELECT to_regclass($1)::TEXT", &[&table])
                .await
                .unwrap()
                .get(0);
            found.is_some()
        }
    };
    let count = |sql: String| {
        let c = &c;
        async move {
            let n: i64 = c.query_one(&sql, &[]).await.unwrap().get(0);
            n
        }
    };
    // Moves rows of a run's own table into the shared one, as an earlier build's worker would
    // have written them; returns how many.
    let to_shared = |own: String, shared: &'static str, cond: &'static str| {
        let c = &c;
        async move {
            let sql = format!(
                "WITH gone AS (DELETE FROM {own} WHERE {cond} RETURNING *) INSERT INTO {s}.{shared} SELECT * FROM gone"
            );
            c.execute(&sql, &[]).await.unwrap()
        }
    };
    assert!(exists(own.clone()).await, "the run has its own table");
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM pg_class WHERE oid IN ('{own}'::REGCLASS, \
             (SELECT reltoastrelid FROM pg_class WHERE oid = '{own}'::REGCLASS)) \
             AND 'autovacuum_enabled=false' = ANY(reloptions)"
        ))
        .await,
        2,
        "autovacuum leaves a table that is only filled, then dropped, alone (and its TOAST table)"
    );
    assert_eq!(
        count(format!("SELECT COUNT(*) FROM ONLY {s}.delta_segments")).await,
        0,
        "nothing in the shared table itself"
    );

    // An earlier build reads a run's segments through the shared table by name.
    let by_name = c
        .query(
            &format!("SELECT body FROM {s}.delta_segments WHERE run_id = $1 ORDER BY chunk_no, seg_no"),
            &[&run.id],
        )
        .await
        .unwrap();
    let rows: usize = by_name
        .iter()
        .map(|r| segment::decode(r.get(0), segment::Part::Keys).unwrap().len())
        .sum();
    assert_eq!(rows, 3_000, "every change visible through the shared table");

    // Chunk 0 as an earlier build's worker would have written it: into the shared table.
    assert!(to_shared(own.clone(), "delta_segments", "chunk_no = 0").await > 0);

    // Batches likewise, one of them where an earlier build's cut would have put it.
    h.run_stages_until_idle(vec![Stage::Merge, Stage::Batch]).await;
    let own_batches = format!("{s}.\"batches_{}\"", run.id);
    let cut = count(format!("SELECT COUNT(*) FROM {own_batches} WHERE body IS NOT NULL")).await;
    assert!(cut >= 2, "bodies in the run's own table: {cut}");
    assert_eq!(count(format!("SELECT COUNT(*) FROM ONLY {s}.batches")).await, 0);
    assert_eq!(
        count(format!("SELECT COUNT(*) FROM {s}.batches WHERE body IS NOT NULL")).await,
        cut,
        "visible through the shared table"
    );
    assert_eq!(to_shared(own_batches.clone(), "batches", "seq_first = 1").await, 1);

    h.run_until_idle().await;
    let run = h.runs().await.remove(0);
    assert_eq!(run.display_state(), "done");
    assert_eq!(h.stats().changes, 3_000, "every change sent once");
    assert_eq!(h.stats().applied_twice, 0);
    h.assert_in_sync().await;
    assert!(!exists(own).await, "dropped when the run is done");
    assert!(!exists(own_batches).await);
    assert_eq!(
        count(format!("SELECT COUNT(*) FROM {s}.delta_segments")).await,
        0,
        "the shared table's segments of the run deleted too"
    );
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM ONLY {s}.batches WHERE delivered_at IS NOT NULL AND body IS NULL"
        ))
        .await,
        cut,
        "the record of every batch kept, without its body"
    );

    // Interval runs stay in the shared table: a table per run every few minutes would churn
    // the catalog for a few changes.
    signals_tests::mutate_items(&h.src(), 3_000);
    h.interval().await;
    assert_the_latest_run_sent_its_changes_once(&h).await;
    let tables: i64 = c
        .query_one(
            &format!("SELECT COUNT(*) FROM pg_inherits WHERE inhparent = '{s}.delta_segments'::regclass"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);

    // Tables whose run an earlier build finished (emptying them, keeping the tables).
    let orphan = format!("{s}.\"delta_segments_0123abcd\"");
    let orphan_batches = format!("{s}.\"batches_0123abcd\"");
    c.batch_execute(&format!(
        "CREATE TABLE {orphan} () INHERITS ({s}.delta_segments);
         CREATE TABLE {orphan_batches} () INHERITS ({s}.batches);
         INSERT INTO {orphan_batches} (id, run_id, seq_first, seq_last, rows, delivered_at)
             VALUES ('0123abcd.1-9', '0123abcd', 1, 9, 9, 1)"
    ))
    .await
    .unwrap();
    let long_ago = chrono::Utc::now() - chrono::Duration::days(3650);
    let cutoffs = signals_shared::ports::PruneCutoffs {
        runs: long_ago,
        ledger: long_ago,
        bodies: long_ago,
        dead_letters: long_ago,
    };
    h.store.prune(&cutoffs).await.unwrap();
    assert!(!exists(orphan).await, "pruned");
    assert!(!exists(orphan_batches).await, "pruned");
    assert_eq!(
        count(format!(
            "SELECT COUNT(*) FROM ONLY {s}.batches WHERE run_id = '0123abcd'"
        ))
        .await,
        1,
        "its batches' record kept"
    );
}

/// An abandoned run's own tables go with it, and offboarding a tenant drops those of its runs in
/// flight, keeping their batches' record when history is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_abandoned_and_offboarded_runs_drop_their_own_tables() {
    use signals_shared::domain::job::{Job, Stage, Task};
    use signals_shared::ports::RunKind;
    let h = postgres_with_items().await.merging_initial_runs();
    let c = store_client(&h).await;
    let s = h.store_schema.clone();
    let own_tables = || {
        let (c, s) = (&c, &s);
        async move {
            let n: i64 = c
                .query_one(
                    &format!(
                        "SELECT COUNT(*) FROM pg_inherits WHERE inhparent IN \
                         ('{s}.delta_segments'::regclass, '{s}.batches'::regclass)"
                    ),
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            n
        }
    };
    h.enqueue_onboard().await;
    h.run_stages_until_idle(vec![Stage::Scheduler, Stage::Snapshot]).await;
    let run = h.runs().await.remove(0);
    assert_eq!(own_tables().await, 2);
    h.store.abandon_run(&run.id, "given up in a test").await.unwrap();
    assert_eq!(own_tables().await, 0, "dropped with the abandoned run");

    // The data source is onboarded already: a new initial run is opened by hand.
    let version = h.store.latest_config_version().await.unwrap().unwrap();
    let run = h
        .store
        .open_run("t", "items", RunKind::Initial, version)
        .await
        .unwrap()
        .unwrap();
    let plan = Task::Plan {
        tenant: "t".into(),
        source: "items".into(),
        run_id: run.id.clone(),
    };
    h.store.enqueue(&[Job::new(plan)], Duration::ZERO).await.unwrap();
    h.run_stages_until_idle(vec![Stage::Snapshot, Stage::Merge, Stage::Batch])
        .await;
    let run = h.runs().await.remove(0);
    assert_eq!((run.state.as_str(), own_tables().await), ("batched", 2));
    h.store.purge_tenant("t", true).await.unwrap();
    assert_eq!(own_tables().await, 0, "dropped with the tenant");
    let kept: i64 = c
        .query_one(
            &format!("SELECT COUNT(*) FROM ONLY {s}.batches WHERE run_id = $1 AND body IS NULL"),
            &[&run.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, run.batches_total, "the batches' record kept as history");
}

/// A merge of 100,000 keys or more — here a merging initial run's, which stages a row per key
/// (a numbered one packs its keys, decision 0029, and leaves nothing to analyse) — analyses its
/// source's staging partition
/// before the next run plans against it: with statistics saying "empty", the next run's delete
/// join would probe every staged key of the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_large_merge_analyses_its_staging_partition() {
    use signals_tests::{create_items, items_source, Harness, StoreKind};
    let h = Harness::on(StoreKind::Postgres).await.merging_initial_runs();
    create_items(&h.src(), 100_000);
    h.apply(&h.config(&items_source(25_000))).await;
    h.onboard().await;
    assert_eq!(h.runs().await.remove(0).display_state(), "done");
    assert_eq!((h.stats().changes, h.stats().applied_twice), (100_000, 0));
    h.assert_in_sync().await;
    let c = store_client(&h).await;
    let s = &h.store_schema;
    let part: String = c
        .query_one(
            &format!(
                "SELECT tableoid::REGCLASS::TEXT FROM {s}.staging_keys \
                 WHERE sid = (SELECT sid FROM {s}.sources WHERE tenant = 't' AND source = 'items') LIMIT 1"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The statistics system takes up to a second to publish a backend's counts.
    let analysed = |part: String| {
        let c = &c;
        async move {
            let r = c
                .query_one(
                    "SELECT analyze_count, (SELECT reltuples FROM pg_class WHERE oid = $1::TEXT::REGCLASS)::BIGINT \
                     FROM pg_stat_user_tables WHERE relid = $1::TEXT::REGCLASS",
                    &[&part],
                )
                .await
                .unwrap();
            (r.get::<_, i64>(0), r.get::<_, i64>(1))
        }
    };
    let mut seen = analysed(part.clone()).await;
    for _ in 0..50 {
        if seen.0 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.batch_execute("SELECT pg_stat_clear_snapshot()").await.unwrap();
        seen = analysed(part.clone()).await;
    }
    let (count, tuples) = seen;
    assert_eq!(count, 1, "{part} analysed once, by the merge");
    assert!((90_000..=110_000).contains(&tuples), "{part}: {tuples} rows estimated");
}
