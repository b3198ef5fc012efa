//! PostgreSQL as a source: a table or query streamed in binary key order (`COLLATE "C"` for text
//! keys) through a server-side row stream, in key-range chunks, with bounded memory.

use super::types::{key_param, map_type, read_into, read_value, select_expr};
use crate::domain::ident::{qualified, quote};
use crate::domain::key::decode_key;
use crate::domain::schema::{Column, ColumnType, Drift, TableSchema};
use crate::domain::value::Value;
use crate::errors::SourceError;
use crate::ports::{Batches, KeyRange, SnapshotSource, SourceSpec};
use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use futures_util::StreamExt;
use tokio_postgres::types::ToSql;

/// Reads one PostgreSQL database.
pub struct PgSource {
    pool: Pool,
    connection: String,
    statement_timeout_secs: Option<u64>,
}

type Params = Vec<Box<dyn ToSql + Send + Sync>>;
const BATCH: usize = 2_000;

fn from_clause(spec: &SourceSpec) -> Result<String, SourceError> {
    match (&spec.table, &spec.query) {
        (Some(t), _) => qualified(t, "table").map_err(|e| SourceError::Query { detail: e.to_string() }),
        (None, Some(q)) => Ok(format!("({q}) AS q")),
        (None, None) => Err(SourceError::Query {
            detail: "a data source needs a table or a query".into(),
        }),
    }
}

fn query_err(e: tokio_postgres::Error) -> SourceError {
    SourceError::Query {
        detail: e.as_db_error().map_or_else(|| e.to_string(), |d| d.to_string()),
    }
}

/// The key column expression in binary order: text keys compare in the "C" collation.
fn key_expr(c: &Column) -> String {
    if c.ty == ColumnType::Text {
        format!("{} COLLATE \"C\"", quote(&c.name))
    } else {
        quote(&c.name)
    }
}

fn key_columns(schema: &TableSchema) -> Vec<&Column> {
    schema.key_indexes().into_iter().map(|i| &schema.columns[i]).collect()
}

fn range_where(schema: &TableSchema, range: &KeyRange, params: &mut Params) -> Result<String, SourceError> {
    let keys = key_columns(schema);
    let tuple = format!("({})", keys.iter().map(|c| key_expr(c)).collect::<Vec<_>>().join(", "));
    let mut conds = Vec::new();
    for (bound, op) in [(&range.lo, ">="), (&range.hi, "<")] {
        let Some(bytes) = bound else { continue };
        let mut marks = Vec::new();
        for v in decode_key(bytes)? {
            let (p, cast) = key_param(&v).ok_or_else(|| SourceError::BadValue {
                column: schema.key.join(", "),
                detail: format!("{} keys cannot bound a range", v.type_name()),
            })?;
            params.push(p);
            marks.push(format!("${}::{cast}", params.len()));
        }
        conds.push(format!("{tuple} {op} ({})", marks.join(", ")));
    }
    Ok(if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    })
}

impl PgSource {
    /// A source over a pool; `connection` names it in errors.
    pub fn new(pool: Pool, connection: &str) -> PgSource {
        PgSource {
            pool,
            connection: connection.to_owned(),
            statement_timeout_secs: None,
        }
    }

    /// Cancels any single query that runs longer than this.
    pub fn with_statement_timeout(mut self, secs: Option<u64>) -> PgSource {
        self.statement_timeout_secs = secs;
        self
    }

    async fn client(&self) -> Result<Object, SourceError> {
        connect(&self.pool, &self.connection, self.statement_timeout_secs).await
    }
}

/// A pooled connection with our session settings. Reads are plain MVCC snapshots: they take no
/// locks that could block the customer's writers.
async fn connect(pool: &Pool, connection: &str, timeout_secs: Option<u64>) -> Result<Object, SourceError> {
    let c = pool.get().await.map_err(|e| SourceError::Connect {
        connection: connection.to_owned(),
        detail: e.to_string(),
    })?;
    let timeout_ms = timeout_secs.map_or(0, |s| s * 1000);
    c.batch_execute(&format!(
        "SET IntervalStyle = 'iso_8601'; SET TimeZone = 'UTC'; SET extra_float_digits = 1; SET statement_timeout = {timeout_ms}"
    ))
    .await
    .map_err(query_err)?;
    Ok(c)
}

async fn describe_on(client: &Object, spec: &SourceSpec) -> Result<TableSchema, SourceError> {
    let stmt = client
        .prepare(&format!("SELECT * FROM {} LIMIT 0", from_clause(spec)?))
        .await
        .map_err(|e| match (&spec.table, e.as_db_error().map(|d| d.code().code())) {
            (Some(t), Some("42P01")) => SourceError::NoSuchTable { table: t.clone() },
            _ => query_err(e),
        })?;
    let mut columns = Vec::new();
    for c in stmt.columns() {
        let (ty, scale, native) =
            map_type(c.type_(), c.type_modifier()).ok_or_else(|| SourceError::UnsupportedType {
                column: c.name().to_owned(),
                native: c.type_().name().to_owned(),
            })?;
        columns.push(Column {
            name: c.name().to_owned(),
            ty,
            scale,
            native,
        });
    }
    spec.shape(columns)
}

#[async_trait]
impl SnapshotSource for PgSource {
    async fn describe(&self, spec: &SourceSpec) -> Result<TableSchema, SourceError> {
        describe_on(&self.client().await?, spec).await
    }

    async fn split(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        chunk_rows: u64,
    ) -> Result<Vec<Vec<u8>>, SourceError> {
        split::split(&self.client().await?, spec, schema, chunk_rows).await
    }

    fn read(&self, spec: &SourceSpec, schema: &TableSchema, range: &KeyRange) -> Batches<Vec<Value>, SourceError> {
        let sql = (|| {
            let mut params = Params::new();
            let cond = range_where(schema, range, &mut params)?;
            let select = schema.columns.iter().map(select_expr).collect::<Vec<_>>().join(", ");
            let order = key_columns(schema)
                .iter()
                .map(|c| key_expr(c))
                .collect::<Vec<_>>()
                .join(", ");
            Ok((
                format!("SELECT {select} FROM {}{cond} ORDER BY {order}", from_clause(spec)?),
                params,
            ))
        })();
        let cols = schema.columns.clone();
        self.stream(Some((spec.clone(), schema.clone())), sql, move |row| {
            row_values(row, &cols)
        })
    }

    fn read_hashes(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        range: &KeyRange,
    ) -> Batches<(Vec<Value>, crate::domain::encoding::RowHash), SourceError> {
        pushdown::read_hashes(self, spec, schema, range)
    }

    fn reads_with_hashes(&self) -> bool {
        true
    }

    fn read_with_hashes(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        range: &KeyRange,
    ) -> Batches<(Vec<Value>, crate::domain::encoding::RowHash), SourceError> {
        pushdown::read_with_hashes(self, spec, schema, range)
    }

    async fn read_keys(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        keys: &[Vec<Value>],
    ) -> Result<Vec<Vec<Value>>, SourceError> {
        pushdown::read_keys(self, spec, schema, keys).await
    }

    fn read_since(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        column: &str,
        from: &Value,
    ) -> Batches<Vec<Value>, SourceError> {
        pushdown::read_since(self, spec, schema, column, from)
    }

    async fn max_of(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        column: &str,
    ) -> Result<Option<Value>, SourceError> {
        pushdown::max_of(self, spec, schema, column).await
    }
}

mod pushdown;
mod split;

/// A row's values in schema column order, each read into its place (see [`read_into`]).
fn row_values(row: &tokio_postgres::Row, columns: &[Column]) -> Result<Vec<Value>, SourceError> {
    // Not `vec![Value::Null; n]`: that clones through `Value::clone`, out of line.
    let mut values = Vec::with_capacity(columns.len());
    values.resize_with(columns.len(), || Value::Null);
    for ((i, c), slot) in columns.iter().enumerate().zip(&mut values) {
        read_into(row, i, c, slot)?;
    }
    Ok(values)
}

impl PgSource {
    /// Streams a query's rows, mapped by `map`, in bounded batches from a task of its own. With
    /// `shape`, the source's columns are checked against the run's first: a change mid-run is an
    /// error, not a silently different row.
    fn stream<T: Send + 'static>(
        &self,
        shape: Option<(SourceSpec, TableSchema)>,
        sql: Result<(String, Params), SourceError>,
        map: impl Fn(&tokio_postgres::Row) -> Result<T, SourceError> + Send + Sync + 'static,
    ) -> Batches<T, SourceError> {
        // Two batches ahead of the diff keep the read going while it works; more only holds
        // memory (every concurrent chunk holds its own).
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (pool, connection, timeout) = (self.pool.clone(), self.connection.clone(), self.statement_timeout_secs);
        tokio::spawn(async move {
            let run = async {
                let (sql, params) = sql?;
                let client = connect(&pool, &connection, timeout).await?;
                if let Some((spec, schema)) = shape {
                    let drift = Drift::between(&schema, &describe_on(&client, &spec).await?);
                    if !drift.is_empty() {
                        return Err(SourceError::ShapeChanged {
                            detail: drift.to_string(),
                        });
                    }
                }
                let rows = client
                    .query_raw(&sql, params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)))
                    .await
                    .map_err(query_err)?;
                futures_util::pin_mut!(rows);
                let mut batch = Vec::with_capacity(BATCH);
                while let Some(row) = rows.next().await {
                    batch.push(map(&row.map_err(query_err)?)?);
                    if batch.len() == BATCH && tx.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                        return Ok(());
                    }
                }
                if !batch.is_empty() {
                    let _ = tx.send(Ok(batch)).await;
                }
                Ok(())
            };
            if let Err(e) = run.await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }
}
