//! SQL Server as a source, on a real server: runs only when `SIGNALS_TEST_MSSQL` holds an ADO.NET
//! connection string (docs/sqlserver.md shows how to start one in Docker); otherwise each test
//! prints that it was skipped and why. Every type round-trips to the receiver, on both stores;
//! keys the server sorts differently from byte order are refused with the reason; bad
//! credentials and a missing database are told apart.

use signals_shared::domain::encoding::row_hash;
use signals_shared::mssql::conn_str::{Auth, ConnSpec};
use signals_shared::mssql::pool::{Pool, Pooled};
use signals_shared::mssql::source::MssqlSource;
use signals_shared::ports::{KeyRange, SnapshotSource, SourceSpec};
use signals_shared::sqlite::source::SqliteSource;
use signals_tests::{assert_chunked_from_a_sample, mssql_server, unique_schema, Harness, StoreKind};

/// A data source spec of `table` keyed on `key`.
fn spec_of(table: String, key: &str) -> SourceSpec {
    SourceSpec {
        table: Some(table),
        key: vec![key.into()],
        ..Default::default()
    }
}

/// How many items a read stream yields (failing the test on an error).
async fn count<T>(mut rx: signals_shared::ports::Batches<T, signals_shared::errors::SourceError>) -> usize {
    let mut n = 0;
    while let Some(b) = rx.recv().await {
        n += b.unwrap().len();
    }
    n
}

/// A config pushing to the harness's receiver with one data source, `table` keyed on `id`, on
/// connection `db` (the connection string in a `file:` secret reference, as in production).
fn config(h: &Harness, conn_str: &str, table: &str, extra: &str) -> String {
    let url_file = h.dir.path().join("mssql.url");
    std::fs::write(&url_file, conn_str).unwrap();
    format!(
        "[destinations.platform]\nurl = \"{}\"\nbatch_max_rows = 500\n\n[tenants.t]\ndestination = \"platform\"\n\n\
         [tenants.t.connections.db]\nurl = \"file:{}\"\n\n[tenants.t.sources.data]\nconnection = \"db\"\n\
         table = \"{table}\"\nkey = [\"id\"]\ninterval_secs = 1\n{extra}",
        h.url,
        url_file.display(),
    )
}

/// A schema of its own on the server, and a connection to fill it.
struct Db {
    pool: Pool,
    schema: String,
}

impl Db {
    async fn new(conn_str: &str) -> Db {
        let pool = Pool::new(ConnSpec::parse(conn_str).expect("SIGNALS_TEST_MSSQL parses"), 4);
        let schema = unique_schema("sigsrc");
        let db = Db { pool, schema };
        db.exec(&format!("CREATE SCHEMA [{}]", db.schema)).await;
        db
    }

    async fn conn(&self) -> Pooled {
        self.pool.get().await.unwrap_or_else(|e| panic!("SQL Server: {e}"))
    }

    /// Runs a batch with `{s}` replaced by the schema.
    async fn exec(&self, sql: &str) {
        let mut c = self.conn().await;
        c.conn()
            .simple_query(sql.replace("{s}", &self.schema))
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"))
            .into_results()
            .await
            .unwrap_or_else(|e| panic!("{e}: {sql}"));
        c.release();
    }
}

const TYPES_TABLE: &str = r#"
CREATE TABLE [{s}].[all_types] (
  id bigint PRIMARY KEY, b bit, ti tinyint, si smallint, i int, dec decimal(38, 10), big numeric(38, 0),
  m money, sm smallmoney, r real, f float, c char(3), vc varchar(20), nc nchar(3), nvc nvarchar(max),
  t text, nt ntext, bin binary(4), vb varbinary(max), img image, u uniqueidentifier, d date, tm time(7),
  dt datetime, sdt smalldatetime, dt2 datetime2(7), dto datetimeoffset(7), x xml, rv rowversion,
  h hierarchyid, g geography);
INSERT INTO [{s}].[all_types] (id, b, ti, si, i, dec, big, m, sm, r, f, c, vc, nc, nvc, t, nt, bin, vb, img, u, d, tm,
  dt, sdt, dt2, dto, x, h, g) VALUES
 (1, 1, 255, -32768, -2147483648, 1234567890123456789012345678.0123456789, 99999999999999999999999999999999999999,
  922337203685477.5807, -214748.3648, 0.1, 0.1, 'ab ', 'plain', N'äö ', N'Zoë 😀 ' + REPLICATE(CAST(N'x' AS nvarchar(max)), 10000),
  'text', N'ntext ✓', 0x00FF0102, 0x00, 0xDEADBEEF, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2024-02-29',
  '23:59:59.9999999', '2024-02-29 12:00:00.003', '1999-12-31 23:59', '2024-01-02 03:04:05.1234567',
  '2024-01-02 03:04:05.1234567 +05:30', '<a b="1">x</a>', hierarchyid::Parse('/1/2/'),
  geography::Point(47.65100, -122.34900, 4326)),
 (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE [{s}].[same] (id bigint PRIMARY KEY, name nvarchar(50), price decimal(10, 2), at datetimeoffset(7),
  flag bit, data varbinary(max), day date, f float, u uniqueidentifier, ts datetime2(7), tod time(7));
INSERT INTO [{s}].[same] VALUES
 (1, N'Zoë', 12.3, '2025-03-01 10:00:00.5 +00:00', 1, 0x00FF10, '2024-02-29', 0.1,
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2025-01-01 00:00:00.25', '12:34:56.5');
"#;

async fn every_type_reaches_the_receiver_exactly(h: Harness, conn_str: &str) {
    let db = Db::new(conn_str).await;
    db.exec(TYPES_TABLE).await;
    h.apply(&config(&h, conn_str, &format!("{}.all_types", db.schema), ""))
        .await;
    h.onboard().await;
    let runs = h.runs().await;
    assert!(runs.iter().all(|r| r.display_state() == "done"), "{runs:#?}");
    h.assert_in_sync().await;
    db.exec("UPDATE [{s}].[all_types] SET m = m - 1 WHERE id = 1; DELETE FROM [{s}].[all_types] WHERE id = 2;")
        .await;
    h.interval().await;
    let runs = h.runs().await;
    assert_eq!(runs[0].changes(), 2, "{runs:#?}");
    h.assert_in_sync().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_reaches_the_receiver_exactly_on_the_sqlite_store() {
    let Some(s) = mssql_server("every_type_reaches_the_receiver_exactly_on_the_sqlite_store") else {
        return;
    };
    every_type_reaches_the_receiver_exactly(Harness::on(StoreKind::Sqlite).await, &s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_reaches_the_receiver_exactly_on_the_postgres_store() {
    let Some(s) = mssql_server("every_type_reaches_the_receiver_exactly_on_the_postgres_store") else {
        return;
    };
    every_type_reaches_the_receiver_exactly(Harness::on(StoreKind::Postgres).await, &s).await;
}

/// The row `types::tests::the_same_logical_row_hashes_as_on_other_backends` builds from wire
/// values, read from a real server, hashes as SQLite's reading of it (and so as PostgreSQL's:
/// `tests/postgres_source.rs` proves those two agree on this row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_read_from_the_server_hashes_as_sqlite_reads_it() {
    let Some(s) = mssql_server("a_row_read_from_the_server_hashes_as_sqlite_reads_it") else {
        return;
    };
    let db = Db::new(&s).await;
    db.exec(TYPES_TABLE).await;
    let h = Harness::new().await;
    h.src()
        .execute_batch(
            "CREATE TABLE same (id INTEGER PRIMARY KEY, name TEXT, price DECIMAL(10,2), at TIMESTAMPTZ, flag BOOLEAN,
               data BLOB, day DATE, f DOUBLE, u UUID, ts DATETIME, tod TIME);
             INSERT INTO same VALUES (1, 'Zoë', '12.30', '2025-03-01T10:00:00.5+00:00', 1, X'00ff10', '2024-02-29', 0.1,
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2025-01-01 00:00:00.25', '12:34:56.5');",
        )
        .unwrap();
    let spec = |table: String| spec_of(table, "id");
    let from_mssql = first_row_hash(
        &MssqlSource::new(db.pool.clone(), "db"),
        &spec(format!("{}.same", db.schema)),
    )
    .await;
    let from_sqlite = first_row_hash(&SqliteSource::new(h.source.clone(), "sqlite"), &spec("same".into())).await;
    assert_eq!(
        from_mssql, from_sqlite,
        "row hashes differ between SQL Server and SQLite"
    );
}

async fn first_row_hash(source: &dyn SnapshotSource, spec: &SourceSpec) -> Vec<u8> {
    let schema = source.describe(spec).await.unwrap();
    let mut rx = source.read(spec, &schema, &KeyRange::default());
    let row = rx.recv().await.unwrap().unwrap().remove(0);
    row_hash(&row, &mut Vec::new()).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_the_server_sorts_otherwise_are_refused_with_the_reason() {
    let Some(s) = mssql_server("keys_the_server_sorts_otherwise_are_refused_with_the_reason") else {
        return;
    };
    let db = Db::new(&s).await;
    db.exec(
        "CREATE TABLE [{s}].[ci] (k varchar(10) COLLATE SQL_Latin1_General_CP1_CI_AS PRIMARY KEY, n int);
         CREATE TABLE [{s}].[bin] (k varchar(10) COLLATE Latin1_General_100_BIN2 PRIMARY KEY, n int);
         INSERT INTO [{s}].[bin] VALUES ('B', 1), ('a', 2), ('a ', 3), ('A', 4);",
    )
    .await;
    let source = MssqlSource::new(db.pool.clone(), "db");
    let spec = |t: &str| spec_of(format!("{}.{t}", db.schema), "k");
    let e = source.describe(&spec("ci")).await.unwrap_err().to_string();
    assert!(e.contains("key column `k`") && e.contains("_CI_AS"), "{e}");
    let schema = source.describe(&spec("bin")).await.unwrap();
    let n = count(source.read(&spec("bin"), &schema, &KeyRange::default())).await;
    assert_eq!(n, 4, "keys differing by case or a trailing space stay distinct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_and_a_missing_database_are_told_apart() {
    let Some(s) = mssql_server("wrong_credentials_and_a_missing_database_are_told_apart") else {
        return;
    };
    let spec = ConnSpec::parse(&s).unwrap();
    let wrong = format!(
        "Server=tcp:{},{};User Id=signals_no_such_login;Password=x;TrustServerCertificate=true",
        spec.host,
        spec.port.unwrap_or(1433)
    );
    let e = Pool::new(ConnSpec::parse(&wrong).unwrap(), 1)
        .get()
        .await
        .err()
        .unwrap();
    assert!(e.detail.contains("login failed"), "{e}");
    let Auth::Sql { user, password } = &spec.auth else {
        panic!("the suite logs in with SQL authentication")
    };
    let missing = format!(
        "Server=tcp:{},{};User Id={user};Password='{}';TrustServerCertificate=true;Database=signals_no_such_database",
        spec.host,
        spec.port.unwrap_or(1433),
        password.expose().replace('\'', "''")
    );
    let e = Pool::new(ConnSpec::parse(&missing).unwrap(), 1)
        .get()
        .await
        .err()
        .unwrap()
        .detail;
    assert!(e.contains("database missing"), "{e}");
}

/// The suite's connection string pointed at another database.
fn with_database(conn_str: &str, db: &str) -> String {
    let kept: Vec<&str> = conn_str
        .split(';')
        .filter(|p| {
            let k = p.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            !p.trim().is_empty() && k != "database" && k != "initial catalog"
        })
        .collect();
    format!("{};Database={db}", kept.join(";"))
}

/// Change tracking sends exactly the changed keys (deletes included) without reading the table,
/// and when tracking is switched off the next run falls back to a full snapshot diff and says
/// so in its run history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_tracking_sends_changes_and_falls_back_when_it_cannot() {
    let Some(s) = mssql_server("change_tracking_sends_changes_and_falls_back_when_it_cannot") else {
        return;
    };
    let name = format!("sigct_{}", std::process::id());
    let admin = Db::new(&s).await;
    admin
        .exec(&format!(
            "CREATE DATABASE [{name}]; ALTER DATABASE [{name}] SET CHANGE_TRACKING = ON (CHANGE_RETENTION = 2 DAYS, AUTO_CLEANUP = ON)"
        ))
        .await;
    let conn_str = with_database(&s, &name);
    let db = Db::new(&conn_str).await;
    db.exec(
        "CREATE TABLE [{s}].[items] (id int PRIMARY KEY, n int, label nvarchar(20));
         ALTER TABLE [{s}].[items] ENABLE CHANGE_TRACKING;
         INSERT INTO [{s}].[items] SELECT value, value * 2, CONCAT(N'item ', value) FROM GENERATE_SERIES(1, 1000);",
    )
    .await;
    let h = Harness::new().await;
    let table = format!("{}.items", db.schema);
    h.apply(&config(&h, &conn_str, &table, "diff = \"change_tracking\"\n"))
        .await;
    h.onboard().await;
    h.assert_in_sync().await;
    db.exec(
        "UPDATE [{s}].[items] SET n = -n WHERE id = 5; DELETE FROM [{s}].[items] WHERE id = 6;
             INSERT INTO [{s}].[items] VALUES (2000, 1, N'new'); UPDATE [{s}].[items] SET n = n WHERE id = 7;",
    )
    .await;
    h.interval().await;
    let run = h.runs().await.remove(0);
    assert_eq!((run.updates, run.deletes, run.inserts), (1, 1, 1), "{run:#?}");
    assert!(run.rows_read <= 3, "only changed keys are read: {run:#?}");
    h.assert_in_sync().await;

    db.exec("ALTER TABLE [{s}].[items] DISABLE CHANGE_TRACKING; UPDATE [{s}].[items] SET n = 0 WHERE id = 8;")
        .await;
    h.interval().await;
    let run = h.runs().await.remove(0);
    assert_eq!(run.changes(), 1, "{run:#?}");
    assert!(
        run.last_error.as_deref().is_some_and(|e| e.contains("not enabled")),
        "{run:#?}"
    );
    h.assert_in_sync().await;
    drop(db);
    admin
        .exec(&format!(
            "ALTER DATABASE [{name}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE [{name}]"
        ))
        .await;
}

/// A watermark read fetches only the rows at or past the cursor, with no sort on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermark_reads_only_rows_past_the_cursor() {
    let Some(s) = mssql_server("watermark_reads_only_rows_past_the_cursor") else {
        return;
    };
    let db = Db::new(&s).await;
    db.exec(
        "CREATE TABLE [{s}].[items] (id int PRIMARY KEY, n int, changed datetime2(3) NOT NULL);
         INSERT INTO [{s}].[items] SELECT value, value, DATEADD(minute, value, '2025-01-01') FROM GENERATE_SERIES(1, 100);",
    )
    .await;
    let source = MssqlSource::new(db.pool.clone(), "db");
    let spec = spec_of(format!("{}.items", db.schema), "id");
    let schema = source.describe(&spec).await.unwrap();
    let max = source.max_of(&spec, &schema, "changed").await.unwrap().unwrap();
    assert_eq!(format!("{max:?}"), "Timestamp(2025-01-01T01:40:00)");
    let from = signals_shared::domain::value::Value::Timestamp(
        chrono::NaiveDate::from_ymd_opt(2025, 1, 1)
            .unwrap()
            .and_hms_opt(1, 31, 0)
            .unwrap(),
    );
    let n = count(source.read_since(&spec, &schema, "changed", &from)).await;
    assert_eq!(n, 10, "minutes 91 to 100");
}

/// Push-down hashing: the server's row hashes are stable, change with the row, cover every
/// type (the CLR and large-object types included), and changed rows come back by key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_hashes_rows_and_returns_them_by_key() {
    let Some(s) = mssql_server("the_server_hashes_rows_and_returns_them_by_key") else {
        return;
    };
    let db = Db::new(&s).await;
    db.exec(TYPES_TABLE).await;
    let source = MssqlSource::new(db.pool.clone(), "db");
    let spec = spec_of(format!("{}.all_types", db.schema), "id");
    let schema = source.describe(&spec).await.unwrap();
    let hashes = || async {
        let mut rx = source.read_hashes(&spec, &schema, &KeyRange::default());
        let mut out = Vec::new();
        while let Some(b) = rx.recv().await {
            out.extend(b.unwrap());
        }
        out
    };
    let before = hashes().await;
    assert_eq!(before.len(), 2);
    assert_eq!(before, hashes().await, "stable");
    db.exec("UPDATE [{s}].[all_types] SET sm = sm + 1 WHERE id = 1").await;
    let after = hashes().await;
    assert_ne!(before[0].1, after[0].1, "a changed row hashes differently");
    assert_eq!(before[1], after[1], "an unchanged row hashes the same");
    // An initial run reads rows and hashes at once: the same hashes, the rows `read` gives.
    assert!(source.reads_with_hashes());
    let mut rx = source.read_with_hashes(&spec, &schema, &KeyRange::default());
    let mut with_rows = Vec::new();
    while let Some(b) = rx.recv().await {
        with_rows.extend(b.unwrap());
    }
    let keyed: Vec<_> = with_rows.iter().map(|(row, h)| (vec![row[0].clone()], *h)).collect();
    assert_eq!(keyed, after, "rows read with their hashes carry the hashes read alone");
    let mut rx = source.read(&spec, &schema, &KeyRange::default());
    let mut rows = Vec::new();
    while let Some(b) = rx.recv().await {
        rows.extend(b.unwrap());
    }
    let hash_of = |r: &Vec<signals_shared::domain::value::Value>| row_hash(r, &mut Vec::new());
    assert_eq!(
        with_rows.iter().map(|(r, _)| hash_of(r)).collect::<Vec<_>>(),
        rows.iter().map(hash_of).collect::<Vec<_>>(),
        "and the rows `read` gives"
    );
    let keys = vec![
        vec![signals_shared::domain::value::Value::Int(1)],
        vec![signals_shared::domain::value::Value::Int(99)],
    ];
    let rows = source.read_keys(&spec, &schema, &keys).await.unwrap();
    assert_eq!(rows.len(), 1, "a key the source lacks is absent");
}

/// Runs without a server: nothing listens on port 1 here, and PostgreSQL's port speaks another
/// protocol. Both fail within the connect timeout with their class, and no password appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_wrong_server_is_reported_without_the_password() {
    let spec = spec_of("dbo.t".into(), "id");
    for (server, want) in [
        ("127.0.0.1,1", "server unreachable"),
        ("127.0.0.1,5432", "is this a SQL Server port"),
    ] {
        let conn = format!("Server=tcp:{server};User Id=sa;Password=Sup3r-Secret;Connect Timeout=5");
        let source = MssqlSource::new(Pool::new(ConnSpec::parse(&conn).unwrap(), 1), "erp");
        let started = std::time::Instant::now();
        let e = source.describe(&spec).await.unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("cannot connect to source `erp`") && msg.contains(want),
            "{msg}"
        );
        assert!(!msg.contains("Sup3r-Secret"), "{msg}");
        assert!(e.retryable() || msg.contains("login"), "{msg}");
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "{msg}");
    }
}

/// A SQL Server store (`--store "Server=…"`) that cannot be reached fails within its connect
/// timeout, saying what happened and never echoing the password; a bad schema name is refused
/// before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sql_server_store_that_cannot_be_reached_says_so_without_the_password() {
    let conn = "Server=tcp:127.0.0.1,1;Database=signals;User Id=sa;Password=Sup3r-Secret;Connect Timeout=3";
    let started = std::time::Instant::now();
    let msg = signals_shared::backends::open(conn, "signals")
        .await
        .err()
        .expect("nothing listens on port 1")
        .to_string();
    assert!(msg.contains("server unreachable") && msg.contains("127.0.0.1"), "{msg}");
    assert!(!msg.contains("Sup3r-Secret"), "{msg}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{msg}");
    let msg = signals_shared::backends::open(conn, "signals]; DROP TABLE x; --")
        .await
        .err()
        .expect("an injected schema name is refused")
        .to_string();
    assert!(msg.contains("is not a valid store schema name"), "{msg}");
    let msg = signals_shared::backends::open(&format!("{conn};Max Pool Size=1"), "signals")
        .await
        .err()
        .expect("one connection cannot merge")
        .to_string();
    assert!(msg.contains("`Max Pool Size` must be at least 2"), "{msg}");
}

/// A large table is cut from a page sample: chunks of about `chunk_rows`, ascending boundaries,
/// and together the chunks hold every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_tables_are_chunked_from_a_sample_and_lose_no_row() {
    let Some(s) = mssql_server("large_tables_are_chunked_from_a_sample_and_lose_no_row") else {
        return;
    };
    let db = Db::new(&s).await;
    db.exec(
        "CREATE TABLE [{s}].[big] (id bigint PRIMARY KEY, pad varchar(40));
         INSERT INTO [{s}].[big] SELECT TOP (250000) 3 * ROW_NUMBER() OVER (ORDER BY (SELECT NULL)), REPLICATE('x', 40)
           FROM sys.all_objects a CROSS JOIN sys.all_objects b CROSS JOIN sys.all_objects c;",
    )
    .await;
    let source = MssqlSource::new(Pool::new(ConnSpec::parse(&s).unwrap(), 2), "erp");
    assert_chunked_from_a_sample(&source, format!("{}.big", db.schema)).await;
}
