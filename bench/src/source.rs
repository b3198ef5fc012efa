//! The benchmark's PostgreSQL source: generated tables of the shape, the `COPY`
//! baseline, a 1% change, and counters of what the server read and wrote.

use anyhow::Context;
use futures_util::StreamExt;

/// Schema holding every generated source table.
pub const SRC: &str = "sigbench_src";

/// The server every phase uses (source and store alike).
pub fn pg_url() -> String {
    std::env::var("SIGNALS_BENCH_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A plain client for the benchmark's own statements.
pub async fn client() -> anyhow::Result<tokio_postgres::Client> {
    let (c, conn) = tokio_postgres::connect(&pg_url(), tokio_postgres::NoTls)
        .await
        .context("PostgreSQL")?;
    tokio::spawn(conn);
    Ok(c)
}

/// Drops and recreates the source schema.
pub async fn reset(c: &tokio_postgres::Client) -> anyhow::Result<()> {
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS {SRC} CASCADE; CREATE SCHEMA {SRC};"))
        .await?;
    Ok(())
}

/// A 13-column table (bigint key, int, texts, smallint, numeric, double, bool, date,
/// timestamptz, timestamp, uuid, nullable text) of `rows` rows, about 210 bytes each as text.
pub async fn create_table(c: &tokio_postgres::Client, table: &str, rows: u64) -> anyhow::Result<()> {
    c.batch_execute(&format!(
        "CREATE TABLE {SRC}.{table} (id BIGINT PRIMARY KEY, customer_id INTEGER, sku TEXT, name TEXT, qty SMALLINT,
             price NUMERIC(12,2), discount DOUBLE PRECISION, paid BOOLEAN, ordered_on DATE, created_at TIMESTAMPTZ,
             updated_at TIMESTAMP, ref UUID, notes TEXT);
         INSERT INTO {SRC}.{table} SELECT i, i % 50000, 'SKU-' || (i % 9973), 'customer name ' || md5(i::text), (i % 30)::smallint,
             (i % 100000) / 100.0, (i % 17) / 7.0, i % 3 = 0, DATE '2020-01-01' + (i % 2000),
             TIMESTAMPTZ '2024-01-01 00:00:00+00' + i * INTERVAL '1 second', TIMESTAMP '2024-06-01' + i * INTERVAL '1 second',
             md5(i::text)::uuid, CASE WHEN i % 5 = 0 THEN NULL ELSE 'note ' || repeat('x', (i % 40)::int) END
         FROM generate_series(1, {rows}) AS i;"
    ))
    .await?;
    settle(c, table).await
}

/// Vacuums and analyses a freshly loaded table, as a customer's long-lived table is: hint bits
/// and visibility map set, statistics current. Otherwise the first phase to read it pays for
/// setting every row's hint bits and writing every page back (autovacuum is off on some servers),
/// a cost of the load, not of whatever reads it first.
pub async fn settle(c: &tokio_postgres::Client, table: &str) -> anyhow::Result<()> {
    // Its own statement: VACUUM cannot run inside the implicit transaction of a multi-statement query.
    c.batch_execute(&format!("VACUUM (ANALYZE) {SRC}.{table}")).await?;
    Ok(())
}

/// A copy of `from` limited to its first `rows` keys (much faster than generating again).
pub async fn copy_table(c: &tokio_postgres::Client, from: &str, table: &str, rows: u64) -> anyhow::Result<()> {
    c.batch_execute(&format!(
        "CREATE TABLE {SRC}.{table} (LIKE {SRC}.{from} INCLUDING ALL);
         INSERT INTO {SRC}.{table} SELECT * FROM {SRC}.{from} WHERE id <= {rows};"
    ))
    .await?;
    settle(c, table).await
}

/// `COPY (SELECT * … ORDER BY id) TO STDOUT` in text, read by this client: bytes received.
pub async fn copy_baseline(c: &tokio_postgres::Client, table: &str) -> anyhow::Result<u64> {
    let stream = c
        .copy_out(&format!("COPY (SELECT * FROM {SRC}.{table} ORDER BY id) TO STDOUT"))
        .await?;
    futures_util::pin_mut!(stream);
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        bytes += chunk?.len() as u64;
    }
    Ok(bytes)
}

/// Changes 1% of a table of `rows` rows: 0.5% updates, 0.25% inserts, 0.25% deletes.
pub async fn change_one_percent(c: &tokio_postgres::Client, table: &str, rows: u64) -> anyhow::Result<u64> {
    let ins = rows / 400;
    let n = c
        .execute(&format!("UPDATE {SRC}.{table} SET name = name || '*', updated_at = now() WHERE id % 200 = 7"), &[])
        .await?
        + c.execute(&format!("DELETE FROM {SRC}.{table} WHERE id % 400 = 3"), &[]).await?
        + c.execute(
            &format!(
                "INSERT INTO {SRC}.{table} SELECT i, 1, 'SKU-new', 'new', 1, 1.00, 0, true, DATE '2026-01-01', now(), now(), \
                 md5(i::text)::uuid, NULL FROM generate_series({rows} + 1, {rows} + {ins}) AS i"
            ),
            &[],
        )
        .await?;
    Ok(n)
}

/// Writes every dirty buffer out before a phase starts, so a phase does not pay for the
/// previous one's writes (a checkpoint falling inside it), only for its own.
pub async fn checkpoint(c: &tokio_postgres::Client) -> anyhow::Result<()> {
    c.batch_execute("CHECKPOINT").await?;
    Ok(())
}

/// The server's WAL position: the difference of two is every byte the server wrote durably
/// (the store's writes, when nothing else runs).
pub async fn wal_lsn(c: &tokio_postgres::Client) -> anyhow::Result<String> {
    Ok(c.query_one("SELECT pg_current_wal_lsn()::TEXT", &[]).await?.get(0))
}

/// WAL bytes written since `from`.
pub async fn wal_since(c: &tokio_postgres::Client, from: &str) -> anyhow::Result<i64> {
    let n: f64 = c
        .query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::TEXT::pg_lsn)::FLOAT8",
            &[&from],
        )
        .await?
        .get(0);
    Ok(n as i64)
}
