//! PostgreSQL as a source: every mapped type round-trips to the receiver, text keys follow binary
//! order, and the same logical row read from SQLite and PostgreSQL hashes the same.

use signals_shared::domain::encoding::row_hash;
use signals_shared::ports::{KeyRange, SnapshotSource, SourceSpec};
use signals_shared::postgres::source::PgSource as PgReader;
use signals_shared::sqlite::source::SqliteSource;
use signals_tests::{assert_chunked_from_a_sample, pg_url, Harness, PgSource, StoreKind, SAMPLED_ROWS};
use std::time::Duration;

const TYPES_TABLE: &str = r#"
CREATE TABLE {s}.all_types (
    id BIGINT PRIMARY KEY, i2 SMALLINT, i4 INTEGER, amount NUMERIC(14, 4), big NUMERIC, r REAL, d DOUBLE PRECISION,
    t TEXT, vc VARCHAR(20), ch CHAR(3), b BYTEA, flag BOOLEAN, day DATE, tod TIME, ts TIMESTAMP, tstz TIMESTAMPTZ,
    span INTERVAL, u UUID, j JSON, jb JSONB, ints INTEGER[], texts TEXT[]);
INSERT INTO {s}.all_types VALUES
 (1, 1, 2, 12.3, 123456789012345678901234567890.123456789, 0.1, 0.1, 'plain', 'v', 'abc', '\x00ff', true, '2024-02-29',
  '23:59:59.999999', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05+02', '1 year 2 mons 3 days 04:05:06',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"b": 1, "a": [1, 2]}', '{"b": 1, "a": 2}', '{1,NULL,3}', '{"x","y,z"}'),
 (2, -32768, -2147483648, -0.0001, -1, 'NaN', 'Infinity', 'ünïcödé ✓ "quoted"', NULL, NULL, '', false, '0001-01-01',
  '00:00:00', '1970-01-01 00:00:00', '1970-01-01 00:00:00+00', '-1 days', NULL, 'null', '[]', '{}', '{}'),
 (3, NULL, NULL, NULL, NULL, NULL, '-Infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL),
 (9007199254740993, 0, 0, 0, 0, -0.0, 1e300, '', '', '', '\x', true, '9999-12-31', '12:00', '2262-04-11 23:47:16',
  '2262-04-11 23:47:16+00', '00:00:00', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '1.5e300', '1.5e300', '{{1,2},{3,4}}', '{NULL}');
CREATE TABLE {s}.words (w TEXT PRIMARY KEY, n INTEGER);
INSERT INTO {s}.words SELECT w, row_number() OVER () FROM unnest(ARRAY['a', 'B', 'b', 'A', 'é', 'e', 'Z', 'z', '_', '0', ' ', 'ab', 'a b']) AS w;
"#;

async fn every_type_reaches_the_receiver_exactly(h: Harness) {
    let pg = PgSource::new(&h).await;
    pg.exec(TYPES_TABLE).await;
    let sources = "[tenants.t.sources.all_types]\nconnection = \"db\"\ntable = \"{s}.all_types\"\nkey = [\"id\"]\ninterval_secs = 1\n\n\
                   [tenants.t.sources.words]\nconnection = \"db\"\ntable = \"{s}.words\"\nkey = [\"w\"]\ninterval_secs = 1\nchunk_rows = 1000\n";
    h.apply(&pg.config(&h, sources)).await;
    h.onboard().await;
    let runs = h.runs().await;
    assert!(runs.iter().all(|r| r.display_state() == "done"), "{runs:#?}");
    h.assert_in_sync().await;

    pg.exec("UPDATE {s}.all_types SET span = span + interval '1 second' WHERE id = 1; DELETE FROM {s}.all_types WHERE id = 3;
             INSERT INTO {s}.words VALUES ('Ω', 99); UPDATE {s}.words SET n = -n WHERE w = 'B'; DELETE FROM {s}.words WHERE w = 'é';")
        .await;
    h.interval().await;
    let runs = h.runs().await;
    let changes: i64 = runs.iter().take(2).map(|r| r.changes()).sum();
    assert_eq!(changes, 5, "{runs:#?}");
    h.assert_in_sync().await;
}

/// A chunk job delivered twice at once (a lease that ran out while its worker still read): the
/// earlier delivery, superseded while its read waited, ends without an error and without
/// writing, and the later one's delta is the chunk's — every row sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_attempt_superseded_while_it_reads_ends_quietly_and_loses_nothing() {
    let h = Harness::on(StoreKind::Postgres).await;
    let pg = PgSource::new(&h).await;
    pg.exec(
        "CREATE TABLE {s}.items AS SELECT g AS id, 'item ' || g AS name FROM generate_series(1, 2200) g;
             ALTER TABLE {s}.items ADD PRIMARY KEY (id);",
    )
    .await;
    h.apply(&pg.config(
        &h,
        "[tenants.t.sources.items]\nconnection = \"db\"\ntable = \"{s}.items\"\nkey = [\"id\"]\nchunk_rows = 1000\n",
    ))
    .await;
    let mut chunk_jobs = h.plan_by_hand().await;
    let first = chunk_jobs.remove(0);
    h.store.enqueue(&chunk_jobs, Duration::ZERO).await.unwrap();

    // The table is locked, so the first delivery's read waits once it has reset the chunk.
    pg.exec("BEGIN; LOCK TABLE {s}.items IN ACCESS EXCLUSIVE MODE;").await;
    let ctx = h.ctx.clone();
    let job = first.clone();
    let earlier = tokio::spawn(async move { signals_shared::stages::handle(&ctx, &job).await });
    let (watcher, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%{}%'",
        pg.schema
    );
    for _ in 0..500 {
        if watcher.query_one(&waiting, &[]).await.unwrap().get::<_, i64>(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        watcher.query_one(&waiting, &[]).await.unwrap().get::<_, i64>(0),
        1,
        "the read waits on the lock"
    );

    // The later delivery resets the chunk; then the earlier one reads on.
    let run = h.runs().await.remove(0);
    let chunk = h.store.chunks(&run.id).await.unwrap().remove(0);
    h.store
        .reset_chunk(&run.id, &chunk)
        .await
        .unwrap()
        .expect("an open chunk");
    pg.exec("COMMIT").await;
    let next = earlier.await.unwrap().expect("a superseded attempt is not an error");
    assert!(next.is_empty(), "and asks for nothing: {next:?}");
    assert!(!h.store.chunks(&run.id).await.unwrap()[0].done);

    h.store.enqueue(&[first], Duration::ZERO).await.unwrap();
    h.run_until_idle().await;
    h.assert_in_sync().await;
    let run = h.runs().await.remove(0);
    assert_eq!((run.state.as_str(), run.rows_read, run.inserts), ("done", 2_200, 2_200));
    let stats = h.stats();
    assert_eq!((stats.changes, stats.applied_twice), (2_200, 0));
}

async fn rows_of(source: &dyn SnapshotSource, spec: &SourceSpec) -> Vec<String> {
    let schema = source.describe(spec).await.unwrap();
    let mut rx = source.read(spec, &schema, &KeyRange::default());
    let mut out = Vec::new();
    while let Some(batch) = rx.recv().await {
        for row in batch.unwrap() {
            out.push(hex(&row_hash(&row, &mut Vec::new())));
        }
    }
    out
}

/// Every item of a source stream.
async fn collect<T>(mut rx: signals_shared::ports::Batches<T, signals_shared::errors::SourceError>) -> Vec<T> {
    let mut out = Vec::new();
    while let Some(batch) = rx.recv().await {
        out.extend(batch.unwrap());
    }
    out
}

/// Push-down hashing reads an initial run's rows with their hashes in one query: each must be
/// the hash `read_hashes` gives the same row (the next interval sync compares the two), and
/// the rows the ones `read` gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_read_with_their_hashes_carry_the_hashes_read_alone() {
    let h = Harness::new().await;
    let pg = PgSource::new(&h).await;
    pg.exec(TYPES_TABLE).await;
    let reader = PgReader::new(signals_shared::postgres::pool::pool(&pg_url(), 2).unwrap(), "pg");
    assert!(reader.reads_with_hashes());
    for (table, key) in [("all_types", "id"), ("words", "w")] {
        let spec = SourceSpec {
            table: Some(format!("{}.{table}", pg.schema)),
            query: None,
            key: vec![key.into()],
            ..Default::default()
        };
        let schema = reader.describe(&spec).await.unwrap();
        let (range, keys) = (KeyRange::default(), schema.key_indexes());
        let alone: Vec<(String, _)> = collect(reader.read_hashes(&spec, &schema, &range))
            .await
            .into_iter()
            .map(|(k, hash)| (format!("{k:?}"), hash))
            .collect();
        let with_rows = collect(reader.read_with_hashes(&spec, &schema, &range)).await;
        let keyed: Vec<(String, _)> = with_rows
            .iter()
            .map(|(row, hash)| {
                (
                    format!("{:?}", keys.iter().map(|&i| &row[i]).collect::<Vec<_>>()),
                    *hash,
                )
            })
            .collect();
        assert!(alone.len() >= 4, "{table}: {alone:?}");
        assert_eq!(keyed, alone, "{table}: keys or hashes differ");
        let rows: Vec<String> = collect(reader.read(&spec, &schema, &range))
            .await
            .iter()
            .map(|row| hex(&row_hash(row, &mut Vec::new())))
            .collect();
        let read_with: Vec<String> = with_rows
            .iter()
            .map(|(row, _)| hex(&row_hash(row, &mut Vec::new())))
            .collect();
        assert_eq!(read_with, rows, "{table}: rows differ from `read`'s");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_logical_row_hashes_the_same_from_sqlite_and_postgresql() {
    let h = Harness::new().await;
    let pg = PgSource::new(&h).await;
    pg.exec(
        "CREATE TABLE {s}.same (id BIGINT PRIMARY KEY, name TEXT, price NUMERIC(10,2), at TIMESTAMPTZ, flag BOOLEAN,
           data BYTEA, day DATE, f DOUBLE PRECISION, u UUID, j JSON, ts TIMESTAMP, tod TIME);
         INSERT INTO {s}.same VALUES
           (1, 'Zoë', 12.3, '2025-03-01 10:00:00.5+00', true, '\\x00ff10', '2024-02-29', 0.1,
            'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": 1}', '2025-01-01 00:00:00.25', '12:34:56.5'),
           (2, '', -0.5, NULL, false, '\\x', NULL, 'NaN', NULL, '[]', NULL, NULL),
           (3, NULL, NULL, '1999-12-31 23:59:59+00', NULL, NULL, '1970-01-01', -1e300, NULL, NULL, '1999-12-31 23:59:59', '00:00:00');",
    )
    .await;
    h.src()
        .execute_batch(
            "CREATE TABLE same (id INTEGER PRIMARY KEY, name TEXT, price DECIMAL(10,2), at TIMESTAMPTZ, flag BOOLEAN,
               data BLOB, day DATE, f DOUBLE, u UUID, j JSON, ts DATETIME, tod TIME);
             INSERT INTO same VALUES
               (1, 'Zoë', '12.30', '2025-03-01T10:00:00.5+00:00', 1, X'00ff10', '2024-02-29', 0.1,
                'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": 1}', '2025-01-01 00:00:00.25', '12:34:56.5'),
               (2, '', '-0.50', NULL, 0, X'', NULL, 'NaN', NULL, '[]', NULL, NULL),
               (3, NULL, NULL, '1999-12-31 23:59:59+00:00', NULL, NULL, '1970-01-01', -1e300, NULL, NULL, '1999-12-31 23:59:59', '00:00:00');",
        )
        .unwrap();
    let spec = |table: String| SourceSpec {
        table: Some(table),
        query: None,
        key: vec!["id".into()],
        ..Default::default()
    };
    let pool = signals_shared::postgres::pool::pool(&pg_url(), 2).unwrap();
    let from_pg = rows_of(&PgReader::new(pool, "pg"), &spec(format!("{}.same", pg.schema))).await;
    let from_sqlite = rows_of(&SqliteSource::new(h.source.clone(), "sqlite"), &spec("same".into())).await;
    assert_eq!(from_pg.len(), 3);
    assert_eq!(from_pg, from_sqlite, "row hashes differ between PostgreSQL and SQLite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_reaches_the_receiver_exactly_on_the_postgres_store() {
    every_type_reaches_the_receiver_exactly(Harness::on(StoreKind::Postgres).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_reaches_the_receiver_exactly_on_the_sqlite_store() {
    every_type_reaches_the_receiver_exactly(Harness::on(StoreKind::Sqlite).await).await;
}

/// Text keys that differ only by case, accents or trailing spaces are distinct keys, in binary
/// order, on both sources: none is merged with another or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_differing_only_by_case_accents_or_trailing_spaces_stay_distinct() {
    let h = Harness::on(StoreKind::Postgres).await;
    let pg = PgSource::new(&h).await;
    let keys = ["a", "A", "á", "a ", "a  ", "Á", "b", "ß", "ss", "é", "e\u{301}"];
    let values = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("('{k}', {i})"))
        .collect::<Vec<_>>()
        .join(", ");
    pg.exec(&format!(
        "CREATE TABLE {{s}}.words (w VARCHAR(10) PRIMARY KEY, n INTEGER); INSERT INTO {{s}}.words VALUES {values};"
    ))
    .await;
    h.src()
        .execute_batch(&format!(
            "CREATE TABLE words (w TEXT PRIMARY KEY, n INTEGER); INSERT INTO words VALUES {values};"
        ))
        .unwrap();
    let sources = format!(
        "[tenants.t.sources.pg_words]\nconnection = \"db\"\ntable = \"{{s}}.words\"\nkey = [\"w\"]\ninterval_secs = 1\n\n\
         [tenants.t.connections.lite]\nsqlite_path = \"{}\"\n\n\
         [tenants.t.sources.lite_words]\nconnection = \"lite\"\ntable = \"words\"\nkey = [\"w\"]\ninterval_secs = 1\n",
        h.source.display()
    );
    h.apply(&pg.config(&h, &sources)).await;
    h.onboard().await;
    for r in h.runs().await {
        assert_eq!(
            (r.display_state(), r.inserts),
            ("done", keys.len() as i64),
            "{}",
            r.source
        );
    }
    h.assert_in_sync().await;
    // Change exactly the variants, on both sides: only they travel.
    pg.exec("UPDATE {s}.words SET n = -1 WHERE w IN ('a ', 'Á'); DELETE FROM {s}.words WHERE w = 'ss';")
        .await;
    h.src()
        .execute_batch("UPDATE words SET n = -1 WHERE w IN ('a ', 'Á'); DELETE FROM words WHERE w = 'ss';")
        .unwrap();
    h.interval().await;
    for r in h.runs().await.iter().take(2) {
        assert_eq!((r.updates, r.deletes, r.inserts), (2, 1, 0), "{}", r.source);
    }
    h.assert_in_sync().await;
}

/// A large analysed table is cut from a page sample: chunks of about `chunk_rows`, ascending
/// boundaries, and together the chunks hold every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tables_are_chunked_from_a_sample_and_lose_no_row() {
    chunked_from_a_sample("ANALYZE {s}.big;").await;
}

/// The same for a table never analysed (loaded just before its onboarding, autovacuum not yet
/// round): no row estimate, so a pilot sample of its pages gives one — instead of reading every
/// key of every such table before the first chunk can start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tables_never_analysed_are_chunked_from_a_sample_too() {
    chunked_from_a_sample("").await;
}

async fn chunked_from_a_sample(analyse: &str) {
    let h = Harness::new().await;
    let pg = PgSource::new(&h).await;
    pg.exec(&format!(
        "CREATE TABLE {{s}}.big (id BIGINT PRIMARY KEY, pad TEXT) WITH (autovacuum_enabled = false);
         INSERT INTO {{s}}.big SELECT i * 3, repeat('x', 40) FROM generate_series(1, {SAMPLED_ROWS}) AS i;
         {analyse}"
    ))
    .await;
    let reader = PgReader::new(signals_shared::postgres::pool::pool(&pg_url(), 2).unwrap(), "pg");
    assert_chunked_from_a_sample(&reader, format!("{}.big", pg.schema)).await;
}

/// `diff = "change_tracking"` is SQL Server's: on a PostgreSQL source the run stops at once with
/// a dead letter that says so, instead of retrying or silently diffing another way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_tracking_on_postgresql_is_refused_by_name() {
    let h = Harness::new().await;
    let pg = PgSource::new(&h).await;
    pg.exec("CREATE TABLE {s}.items (id BIGINT PRIMARY KEY, n INTEGER); INSERT INTO {s}.items VALUES (1, 1);")
        .await;
    let source = "[tenants.t.sources.items]\nconnection = \"db\"\ntable = \"{s}.items\"\nkey = [\"id\"]\n\
                  interval_secs = 1\ndiff = \"change_tracking\"\n";
    h.apply(&pg.config(&h, source)).await;
    h.onboard().await;
    let dead = h.store.dead_letters(true).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert!(
        dead[0].error.contains("does not support change tracking") && dead[0].error.contains("SQL Server only"),
        "{}",
        dead[0].error
    );
    assert_eq!(h.runs().await[0].display_state(), "blocked");
}

/// Every session our pools open (store and PostgreSQL sources share `pool`) runs without the
/// JIT — a staging read planned against the whole partitioned table compiled for ~220 ms —,
/// leaves the plan cache to the server (custom plans forced on every run of the store's
/// prepared statements cost 3% of an onboarding's CPU; decision 0028) and is sent no notices (a
/// migration's "already exists, skipping" was logged by every CLI command).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_run_without_the_jit_with_the_servers_plan_cache_and_without_notices() {
    let pool = signals_shared::postgres::pool::pool(&pg_url(), 2).expect("pool");
    let (a, b) = (
        pool.get().await.expect("a session"),
        pool.get().await.expect("a second session"),
    );
    for client in [&a, &b] {
        for (setting, expected) in [
            ("jit", "off"),
            ("plan_cache_mode", "auto"),
            ("client_min_messages", "warning"),
        ] {
            let row = client.query_one(&format!("SHOW {setting}"), &[]).await;
            let value: String = row.expect("show a setting").get(0);
            assert_eq!(value, expected, "{setting}");
        }
    }
}
