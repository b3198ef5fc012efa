//! Statements prepared once per pooled connection and run from then on by name.
//!
//! `tokio_postgres` prepares a statement given as text on every call: a round trip to parse
//! and describe it, a second to run it — and the server parses and plans it each time. Every job
//! runs a handful of store statements (claim, run, config, pauses, timings, ack) and every push
//! and segment write a few more, ~5,000 per 1,000,000-row initial sync; here they cost one round
//! trip and no parse after a connection's first use of them, and no plan either once the server
//! has chosen a generic one after five runs (decision 0028). Statements named after a run's own
//! tables (decision 0016) differ per run, so a connection's cache starts over once it holds
//! [`MAX_PREPARED`]: it cannot grow with the number of runs a worker has seen.

use deadpool_postgres::{GenericClient, StatementCache};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row, Statement};

/// Statements one connection keeps prepared, at most.
const MAX_PREPARED: usize = 256;

/// A pooled connection or a transaction on one, with the connection's statement cache.
pub(super) trait Conn: GenericClient {
    fn cache(&self) -> &StatementCache;
}

impl Conn for deadpool_postgres::Client {
    fn cache(&self) -> &StatementCache {
        &self.statement_cache
    }
}

impl Conn for deadpool_postgres::Transaction<'_> {
    fn cache(&self) -> &StatementCache {
        &self.statement_cache
    }
}

async fn prepare(c: &impl Conn, sql: &str) -> Result<Statement, Error> {
    if c.cache().size() >= MAX_PREPARED {
        c.cache().clear();
    }
    c.prepare_cached(sql).await
}

/// Forgets a statement the server no longer runs as prepared — deallocated behind our back, or
/// a plan whose result columns a migration changed — so the job's retry prepares it afresh
/// instead of failing the same way on this connection for as long as it lives.
fn forget_if_stale<T>(c: &impl Conn, sql: &str, r: Result<T, Error>) -> Result<T, Error> {
    if let Err(e) = &r {
        let stale = e.code().is_some_and(|code| {
            *code == SqlState::INVALID_SQL_STATEMENT_NAME || *code == SqlState::FEATURE_NOT_SUPPORTED
        });
        if stale {
            c.cache().remove(sql, &[]);
        }
    }
    r
}

/// Like `query`, prepared once per connection.
pub(super) async fn query(c: &impl Conn, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, Error> {
    let st = prepare(c, sql).await?;
    forget_if_stale(c, sql, c.query(&st, params).await)
}

/// Like `query_one`, prepared once per connection.
pub(super) async fn query_one(c: &impl Conn, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, Error> {
    let st = prepare(c, sql).await?;
    forget_if_stale(c, sql, c.query_one(&st, params).await)
}

/// Like `query_opt`, prepared once per connection.
pub(super) async fn query_opt(c: &impl Conn, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, Error> {
    let st = prepare(c, sql).await?;
    forget_if_stale(c, sql, c.query_opt(&st, params).await)
}

/// Like `execute`, prepared once per connection.
pub(super) async fn execute(c: &impl Conn, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
    let st = prepare(c, sql).await?;
    forget_if_stale(c, sql, c.execute(&st, params).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connection() -> deadpool_postgres::Client {
        let pool = crate::postgres::pool::pool(&super::super::test_url(), 1).expect("pool");
        pool.get().await.expect("a connection")
    }

    async fn prepared_on_server(c: &deadpool_postgres::Client) -> i64 {
        c.query_one("SELECT count(*) FROM pg_prepared_statements", &[])
            .await
            .expect("count prepared statements")
            .get(0)
    }

    /// Prepared once, and planned once its first five runs have shown a generic plan costs no
    /// more than theirs (decision 0028): a pooled session leaves the server's plan cache alone.
    #[tokio::test]
    async fn a_statement_runs_prepared_once_per_connection_and_is_planned_once() {
        let c = connection().await;
        let before = prepared_on_server(&c).await;
        let sql = "SELECT $1::INT4 + 1";
        for n in 0..8_i32 {
            let row = query_one(&c, sql, &[&n]).await.expect("query");
            assert_eq!(row.get::<_, i32>(0), n + 1);
        }
        assert_eq!(c.cache().size(), 1);
        assert_eq!(prepared_on_server(&c).await, before + 1, "one statement on the server");
        let plans = c
            .query_one(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
                &[&sql],
            )
            .await
            .expect("the statement's plans");
        let (generic, custom): (i64, i64) = (plans.get(0), plans.get(1));
        assert_eq!(
            (generic, custom),
            (3, 5),
            "runs on a generic plan after five custom ones"
        );
    }

    #[tokio::test]
    async fn a_connection_keeps_a_bounded_number_of_statements() {
        let c = connection().await;
        // Texts that differ per call, as statements naming a run's own tables do.
        for n in 0..(MAX_PREPARED + 44) {
            let sql = format!("SELECT {n}::INT8 + $1::INT8");
            let row = query_one(&c, &sql, &[&1_i64]).await.expect("query");
            assert_eq!(row.get::<_, i64>(0), n as i64 + 1);
        }
        assert!(c.cache().size() <= MAX_PREPARED, "{} cached", c.cache().size());
        // The server closes what the cache let go of (the close goes out with the next message).
        c.simple_query("SELECT 1").await.expect("a round trip");
        let on_server = prepared_on_server(&c).await;
        assert!(
            on_server <= MAX_PREPARED as i64 + 1,
            "{on_server} prepared on the server"
        );
    }

    #[tokio::test]
    async fn a_statement_the_server_no_longer_runs_as_prepared_is_prepared_afresh() {
        let c = connection().await;
        c.batch_execute("CREATE TEMP TABLE drifting (a INT4); INSERT INTO drifting VALUES (1)")
            .await
            .expect("table");
        let sql = "SELECT * FROM pg_temp.drifting";
        assert_eq!(query(&c, sql, &[]).await.expect("first").len(), 1);
        // A migration changes what the prepared statement returns.
        c.batch_execute("ALTER TABLE pg_temp.drifting ADD COLUMN b INT4")
            .await
            .expect("alter");
        let stale = query(&c, sql, &[])
            .await
            .expect_err("the cached plan's columns changed");
        assert_eq!(stale.code(), Some(&SqlState::FEATURE_NOT_SUPPORTED), "{stale}");
        let rows = query(&c, sql, &[]).await.expect("prepared afresh");
        assert_eq!(rows[0].len(), 2);
        // And a statement deallocated behind the cache's back.
        c.batch_execute("DEALLOCATE ALL").await.expect("deallocate");
        let gone = query(&c, sql, &[]).await.expect_err("deallocated");
        assert_eq!(gone.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME), "{gone}");
        assert_eq!(query(&c, sql, &[]).await.expect("prepared afresh").len(), 1);
    }
}
