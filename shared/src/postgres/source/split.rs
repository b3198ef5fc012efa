//! Chunk boundaries: a large table is cut from a sample of its pages (`domain::sampling`) —
//! one never analysed after a pilot sample estimates its rows; small tables, queries and views
//! are cut exactly from all their keys.

use super::{from_clause, key_columns, key_expr, query_err, read_value, select_expr};
use crate::domain::key::encode_key;
use crate::domain::sampling;
use crate::domain::schema::TableSchema;
use crate::errors::SourceError;
use crate::ports::SourceSpec;
use futures_util::StreamExt;
use tokio_postgres::types::ToSql;

/// The encoded keys of a key stream's rows that `keep(row number)` selects (ascending,
/// distinct), and how many rows the stream had.
async fn keys_where(
    client: &deadpool_postgres::Object,
    sql: &str,
    schema: &TableSchema,
    keep: impl Fn(u64) -> bool,
) -> Result<(Vec<Vec<u8>>, u64), SourceError> {
    let keys = key_columns(schema);
    let rows = client
        .query_raw(sql, std::iter::empty::<&(dyn ToSql + Sync)>())
        .await
        .map_err(query_err)?;
    futures_util::pin_mut!(rows);
    let (mut n, mut bounds) = (0u64, Vec::<Vec<u8>>::new());
    while let Some(row) = rows.next().await {
        let row = row.map_err(query_err)?;
        n += 1;
        if keep(n) {
            let values = keys
                .iter()
                .enumerate()
                .map(|(i, c)| read_value(&row, i, c))
                .collect::<Result<Vec<_>, _>>()?;
            let mut key = Vec::new();
            encode_key(&mut key, &values.iter().collect::<Vec<_>>(), &schema.key)?;
            if bounds.last() != Some(&key) {
                bounds.push(key);
            }
        }
    }
    Ok((bounds, n))
}

/// Boundaries so each chunk holds about `chunk_rows` rows.
pub(super) async fn split(
    client: &deadpool_postgres::Object,
    spec: &SourceSpec,
    schema: &TableSchema,
    chunk_rows: u64,
) -> Result<Vec<Vec<u8>>, SourceError> {
    let keys = key_columns(schema);
    let select = keys.iter().map(|c| select_expr(c)).collect::<Vec<_>>().join(", ");
    let order = keys.iter().map(|c| key_expr(c)).collect::<Vec<_>>().join(", ");
    let from = from_clause(spec)?;
    if spec.table.is_some() {
        if let Some(b) = sampled(client, &from, &select, &order, schema, chunk_rows).await {
            return Ok(b);
        }
    }
    let sql = format!("SELECT {select} FROM {from} ORDER BY {order}");
    let every = chunk_rows.max(1);
    Ok(keys_where(client, &sql, schema, |n| n > 1 && n % every == 1).await?.0)
}

/// Boundaries from a page sample, or `None` when the table is small, cannot be sampled (a
/// view) or the sample came out too thin to trust. A table never analysed has no row estimate:
/// a pilot sample sized from its pages gives one (and serves as the sample when dense enough).
async fn sampled(
    client: &deadpool_postgres::Object,
    from: &str,
    select: &str,
    order: &str,
    schema: &TableSchema,
    chunk_rows: u64,
) -> Option<Vec<Vec<u8>>> {
    let row = client
        .query_opt(
            "SELECT reltuples::FLOAT8, relpages::FLOAT8, \
                    pg_relation_size(oid)::FLOAT8 / current_setting('block_size')::FLOAT8 \
             FROM pg_class WHERE oid = to_regclass($1) AND relkind = 'r'",
            &[&from],
        )
        .await
        .ok()??;
    let (estimate, pages, size_pages): (f64, f64, f64) = (row.get(0), row.get(1), row.get(2));
    let sample = |percent: f64| async move {
        let sql = format!("SELECT {select} FROM {from} TABLESAMPLE SYSTEM ({percent}) ORDER BY {order}");
        keys_where(client, &sql, schema, |_| true)
            .await
            .ok()
            .map(|(keys, _)| keys)
    };
    // PostgreSQL 14+ says -1 rows for a table never vacuumed or analysed; older ones 0 pages.
    if estimate >= 0.0 && pages > 0.0 {
        let (chunks, percent) = sampling::plan(estimate, pages, chunk_rows)?;
        return sampling::bounds(&sample(percent).await?, chunks);
    }
    let pilot_percent = sampling::pilot_percent(size_pages)?;
    let pilot = sample(pilot_percent).await?;
    let estimate = pilot.len() as f64 * 100.0 / pilot_percent;
    let (chunks, percent) = sampling::plan(estimate, size_pages, chunk_rows)?;
    if percent <= pilot_percent {
        return sampling::bounds(&pilot, chunks);
    }
    sampling::bounds(&sample(percent).await?, chunks)
}
