//! Chunk boundaries on SQL Server. A large table is cut from a sample of its pages
//! (`TABLESAMPLE SYSTEM`, `domain::sampling`) instead of one pass over every key on every run;
//! the sample comes back unsorted (no server sort) and is ordered here by its encoded bytes,
//! which is the server's order for every key this source admits (decision 0011). Small tables,
//! queries and views, and any table whose size or sample cannot be read (metadata permissions),
//! are cut exactly from one ordered pass over the key's index.

use super::pool::{Conn, Pool};
use super::sql::{from_clause, key_columns, run, split_sql};
use super::types::read_value;
use crate::domain::key::encode_key;
use crate::domain::sampling;
use crate::domain::schema::TableSchema;
use crate::domain::value::Value;
use crate::errors::SourceError;
use crate::ports::SourceSpec;

/// Rows and in-row data pages of a table (heap or clustered index), from catalog views any
/// reader of the table may see (unlike `sys.dm_db_partition_stats`, which needs VIEW DATABASE
/// STATE).
const SIZE_SQL: &str = "SELECT CAST(SUM(p.rows) AS float), CAST(SUM(a.data_pages) AS float) \
    FROM sys.partitions p JOIN sys.allocation_units a ON a.container_id = p.partition_id AND a.type = 1 \
    WHERE p.object_id = OBJECT_ID(@P1) AND p.index_id IN (0, 1)";

/// A page sample of `percent` of `from`'s pages: the key columns only, in no order.
fn sample_sql(from: &str, list: &str, percent: f64) -> String {
    format!("SELECT {list} FROM {from} TABLESAMPLE SYSTEM ({percent:.6} PERCENT)")
}

fn encoded(rows: Vec<tiberius::Row>, schema: &TableSchema) -> Result<Vec<Vec<u8>>, SourceError> {
    let keys = key_columns(schema);
    rows.iter()
        .map(|row| {
            let values = row
                .cells()
                .zip(&keys)
                .map(|((_, d), c)| read_value(d, c))
                .collect::<Result<Vec<Value>, _>>()?;
            let mut key = Vec::new();
            encode_key(&mut key, &values.iter().collect::<Vec<_>>(), &schema.key)?;
            Ok(key)
        })
        .collect()
}

/// Boundaries so each chunk holds about `chunk_rows` rows.
pub async fn split(
    pool: &Pool,
    connection: &str,
    spec: &SourceSpec,
    schema: &TableSchema,
    chunk_rows: u64,
) -> Result<Vec<Vec<u8>>, SourceError> {
    let from = from_clause(spec)?;
    let connect = |e: super::pool::ConnectError| SourceError::Connect {
        connection: connection.to_owned(),
        detail: e.detail,
    };
    if spec.table.is_some() {
        let mut c = pool.get().await.map_err(connect)?;
        // A failure here (no permission on the catalog, a sample refused) leaves the exact cut;
        // the connection is then closed rather than reused.
        if let Ok(b) = sampled(c.conn(), &from, schema, chunk_rows).await {
            c.release();
            if let Some(b) = b {
                return Ok(b);
            }
        }
    }
    let keys = key_columns(schema);
    let mut c = pool.get().await.map_err(connect)?;
    let rows = run(
        c.conn(),
        &split_sql(&from, &keys),
        vec![Value::Int(chunk_rows.max(1) as i64)],
    )
    .await?;
    c.release();
    let mut bounds = encoded(rows, schema)?;
    bounds.dedup();
    Ok(bounds)
}

/// Boundaries from a page sample, `Ok(None)` when the table is small, has no size on record,
/// or the sample came out too thin to trust.
async fn sampled(
    conn: &mut Conn,
    from: &str,
    schema: &TableSchema,
    chunk_rows: u64,
) -> Result<Option<Vec<Vec<u8>>>, SourceError> {
    let size = run(conn, SIZE_SQL, vec![Value::Text(from.to_owned())]).await?;
    let cell = |i: usize| size.first().and_then(|r| r.try_get::<f64, _>(i).ok().flatten());
    let (Some(estimate), Some(pages)) = (cell(0), cell(1)) else {
        return Ok(None);
    };
    let Some((chunks, percent)) = sampling::plan(estimate, pages, chunk_rows) else {
        return Ok(None);
    };
    let list = super::sql::key_list(schema);
    let mut sample = encoded(run(conn, &sample_sql(from, &list, percent), vec![]).await?, schema)?;
    sample.sort_unstable();
    sample.dedup();
    Ok(sampling::bounds(&sample, chunks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_reads_key_columns_of_a_table_without_a_server_sort() {
        let sql = sample_sql("[dbo].[Orders]", "[Region], [Id]", 2.5);
        assert_eq!(
            sql,
            "SELECT [Region], [Id] FROM [dbo].[Orders] TABLESAMPLE SYSTEM (2.500000 PERCENT)"
        );
        assert!(!sql.contains("ORDER BY"));
        assert!(SIZE_SQL.contains("OBJECT_ID(@P1)") && SIZE_SQL.contains("index_id IN (0, 1)"));
    }
}
