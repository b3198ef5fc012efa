//! SQL Server as a source: a table or query streamed in key order, in key-range chunks, with
//! bounded memory. Reads never use `NOLOCK` (they must not see uncommitted rows); where the
//! database allows snapshot isolation each read runs in it, so it neither blocks nor is blocked
//! by the customer's writers, otherwise in the server's READ COMMITTED.
//!
//! Key order: the diff merge-joins the source with staging in canonical (bytewise) key order,
//! and the read orders by the key columns themselves — an index order, never a sort of a
//! computed expression that would spill to tempdb. Keys the server sorts otherwise (text in a
//! case- or accent-insensitive collation, `uniqueidentifier`) are refused at describe time
//! with the reason (docs/sqlserver.md).

use super::errors::source_error;
use super::ident::quote;
use super::pool::{Conn, Pool, Pooled};
use super::sql::{bind, column_of, from_clause, key_columns, key_list, range_where, run, select_list};
use super::types::{map_type, read_value, select_expr_of, sorts_canonically, unsupported_hint};
use crate::domain::encoding::RowHash;
use crate::domain::schema::{Column, Drift, TableSchema};
use crate::domain::value::Value;
use crate::errors::SourceError;
use crate::ports::{Batches, KeyRange, SnapshotSource, SourceSpec};
use async_trait::async_trait;
use futures_util::TryStreamExt;
use tiberius::Query;

const BATCH: usize = 2_000;

/// Reads one SQL Server database.
pub struct MssqlSource {
    pool: Pool,
    connection: String,
}

/// The columns a table or query returns, and each column's collation.
async fn describe_on(conn: &mut Conn, spec: &SourceSpec) -> Result<TableSchema, SourceError> {
    let probe = format!("SELECT * FROM {}", from_clause(spec)?);
    let mut q = Query::new(
        "SELECT name, system_type_name, CAST(scale AS int), collation_name, error_number, error_message \
         FROM sys.dm_exec_describe_first_result_set(@P1, NULL, 0) \
         WHERE ISNULL(is_hidden, 0) = 0 ORDER BY column_ordinal",
    );
    q.bind(probe);
    let rows = q
        .query(conn)
        .await
        .map_err(|e| source_error(&e))?
        .into_first_result()
        .await
        .map_err(|e| source_error(&e))?;
    let mut columns = Vec::new();
    let mut collations = Vec::new();
    for r in &rows {
        if let Some(code) = r.get::<i32, _>(4) {
            let msg = r.get::<&str, _>(5).unwrap_or("").to_owned();
            return Err(match (&spec.table, code) {
                (Some(t), 208) => SourceError::NoSuchTable { table: t.clone() },
                _ => SourceError::Query {
                    detail: format!("{msg} (error {code})"),
                },
            });
        }
        let name = r.get::<&str, _>(0).unwrap_or("").to_owned();
        let native = r.get::<&str, _>(1).unwrap_or("").to_owned();
        // It is cast to in range bounds: only a type name and its size may appear there.
        if !native.chars().all(|c| c.is_ascii_alphanumeric() || "_(), ".contains(c)) {
            return Err(SourceError::UnsupportedType { column: name, native });
        }
        let scale = r.get::<i32, _>(2).unwrap_or(0).clamp(0, 38) as u8;
        let (ty, scale) = map_type(&native, scale).ok_or_else(|| SourceError::UnsupportedType {
            column: name.clone(),
            native: unsupported_hint(&native),
        })?;
        collations.push((name.clone(), r.get::<&str, _>(3).map(str::to_owned)));
        columns.push(Column {
            name,
            ty,
            scale,
            native,
        });
    }
    let schema = spec.shape(columns)?;
    for c in key_columns(&schema) {
        let collation = collations
            .iter()
            .find(|(n, _)| *n == c.name)
            .and_then(|(_, k)| k.as_deref());
        if !sorts_canonically(c, collation) {
            return Err(SourceError::Unsupported {
                what: format!(
                    "key column `{}` ({}{}): SQL Server orders it differently from the byte order the \
                     diff compares in (case/accent-insensitive collations, uniqueidentifier); key the data \
                     source on an integer, date/time or binary-collated (_BIN2) column — see docs/sqlserver.md",
                    c.name,
                    c.native,
                    collation.map(|k| format!(", collation {k}")).unwrap_or_default()
                ),
            });
        }
    }
    Ok(schema)
}

/// Reads run in snapshot isolation where the database allows it.
async fn set_isolation(conn: &mut Conn) -> Result<(), SourceError> {
    let rows = run(
        conn,
        "SELECT CAST(snapshot_isolation_state AS int) FROM sys.databases WHERE database_id = DB_ID()",
        vec![],
    )
    .await?;
    if rows.first().and_then(|r| r.get::<i32, _>(0)) == Some(1) {
        run(conn, "SET TRANSACTION ISOLATION LEVEL SNAPSHOT", vec![]).await?;
    }
    Ok(())
}

impl MssqlSource {
    /// A source over a pool; `connection` names it in errors.
    pub fn new(pool: Pool, connection: &str) -> MssqlSource {
        MssqlSource {
            pool,
            connection: connection.to_owned(),
        }
    }

    async fn conn(&self) -> Result<Pooled, SourceError> {
        self.pool.get().await.map_err(|e| SourceError::Connect {
            connection: self.connection.clone(),
            detail: e.detail,
        })
    }
}

#[async_trait]
impl SnapshotSource for MssqlSource {
    async fn describe(&self, spec: &SourceSpec) -> Result<TableSchema, SourceError> {
        let mut c = self.conn().await?;
        let schema = describe_on(c.conn(), spec).await?;
        c.release();
        Ok(schema)
    }

    async fn split(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        chunk_rows: u64,
    ) -> Result<Vec<Vec<u8>>, SourceError> {
        super::split::split(&self.pool, &self.connection, spec, schema, chunk_rows).await
    }

    async fn change_versions(&self, spec: &SourceSpec) -> Result<(i64, Option<i64>), SourceError> {
        let table = Self::table_of(spec)?;
        let mut pooled = self.conn().await?;
        let rows = run(pooled.conn(), super::tracking::VERSIONS_SQL, vec![Value::Text(table)]).await?;
        pooled.release();
        super::tracking::versions_of(rows.first())
    }

    fn read_changes(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        version: i64,
    ) -> Batches<crate::ports::TrackedChange, SourceError> {
        let sql = Self::table_of(spec).map(|t| (super::tracking::changes_sql(&t, schema), vec![Value::Int(version)]));
        let keys: Vec<Column> = key_columns(schema).into_iter().cloned().collect();
        let columns = schema.columns.clone();
        self.stream_mapped(spec, schema, sql, move |row| {
            super::tracking::change_of(row, &keys, &columns)
        })
    }

    fn read(&self, spec: &SourceSpec, schema: &TableSchema, range: &KeyRange) -> Batches<Vec<Value>, SourceError> {
        let sql = (|| {
            let (cond, params) = range_where(schema, range)?;
            let order = key_list(schema);
            Ok((
                format!(
                    "SELECT {} FROM {}{cond} ORDER BY {order}",
                    select_list(schema),
                    from_clause(spec)?
                ),
                params,
            ))
        })();
        self.stream_rows(spec, schema, sql)
    }

    fn read_since(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        column: &str,
        from: &Value,
    ) -> Batches<Vec<Value>, SourceError> {
        // Compared with staging by key, so in no particular order: no sort on the server.
        let sql = (|| {
            let c = column_of(schema, column)?;
            Ok((
                format!(
                    "SELECT {} FROM {} WHERE {} >= CAST(@P1 AS {})",
                    select_list(schema),
                    from_clause(spec)?,
                    quote(&c.name),
                    c.native
                ),
                vec![from.clone()],
            ))
        })();
        self.stream_rows(spec, schema, sql)
    }

    fn read_hashes(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        range: &KeyRange,
    ) -> Batches<(Vec<Value>, RowHash), SourceError> {
        let keys: Vec<Column> = key_columns(schema).into_iter().cloned().collect();
        self.with_hashes(spec, schema, range, keys)
    }

    fn reads_with_hashes(&self) -> bool {
        true
    }

    fn read_with_hashes(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        range: &KeyRange,
    ) -> Batches<(Vec<Value>, RowHash), SourceError> {
        self.with_hashes(spec, schema, range, schema.columns.clone())
    }

    async fn read_keys(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        keys: &[Vec<Value>],
    ) -> Result<Vec<Vec<Value>>, SourceError> {
        let cols = key_columns(schema);
        let mut out = Vec::with_capacity(keys.len());
        let mut pooled = self.conn().await?;
        for group in keys.chunks(super::pushdown::keys_per_statement(cols.len())) {
            let sql = format!(
                "SELECT {} FROM {} WHERE {}",
                select_list(schema),
                from_clause(spec)?,
                super::pushdown::keys_where(&cols, group.len())
            );
            for row in run(pooled.conn(), &sql, super::pushdown::key_params(group)).await? {
                out.push(
                    row.cells()
                        .zip(&schema.columns)
                        .map(|((_, d), c)| read_value(d, c))
                        .collect::<Result<Vec<_>, _>>()?,
                );
            }
        }
        pooled.release();
        Ok(out)
    }

    async fn max_of(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        column: &str,
    ) -> Result<Option<Value>, SourceError> {
        let c = column_of(schema, column)?;
        let sql = format!("SELECT MAX({}) FROM {}", quote(&c.name), from_clause(spec)?);
        let mut pooled = self.conn().await?;
        let rows = run(pooled.conn(), &sql, vec![]).await?;
        pooled.release();
        match rows
            .first()
            .and_then(|r| r.cells().next().map(|(_, d)| read_value(d, c)))
        {
            Some(v) => Ok(Some(v?).filter(|v| *v != Value::Null)),
            None => Ok(None),
        }
    }
}

impl MssqlSource {
    /// Streams a query's rows in bounded batches from a task of its own, after checking the
    /// source's shape is still the run's (a change mid-run is an error, not a silently
    /// different row).
    fn stream_rows(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        sql: Result<(String, Vec<Value>), SourceError>,
    ) -> Batches<Vec<Value>, SourceError> {
        let columns = schema.columns.clone();
        self.stream_mapped(spec, schema, sql, move |row| {
            row.cells().zip(&columns).map(|((_, d), c)| read_value(d, c)).collect()
        })
    }

    /// `columns` of a range's rows and each row's hash over all its columns (the server's,
    /// `pushdown::hash_expr`), in key order.
    fn with_hashes(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        range: &KeyRange,
        columns: Vec<Column>,
    ) -> Batches<(Vec<Value>, RowHash), SourceError> {
        let sql = (|| {
            let (cond, params) = range_where(schema, range)?;
            let order = key_list(schema);
            Ok((
                format!(
                    "SELECT {}, {} FROM {} AS [t]{cond} ORDER BY {order}",
                    columns
                        .iter()
                        .map(|c| select_expr_of("t", c))
                        .collect::<Vec<_>>()
                        .join(", "),
                    super::pushdown::hash_expr(schema),
                    from_clause(spec)?
                ),
                params,
            ))
        })();
        self.stream_mapped(spec, schema, sql, move |row| {
            let mut cells = row.cells().map(|(_, d)| d);
            let values = columns
                .iter()
                .map(|c| read_value(cells.next().unwrap_or(&tiberius::ColumnData::I32(None)), c))
                .collect::<Result<Vec<_>, _>>()?;
            let hash: RowHash = match cells.next() {
                Some(tiberius::ColumnData::Binary(Some(b))) => b.as_ref().try_into().ok(),
                _ => None,
            }
            .ok_or_else(|| SourceError::Query {
                detail: "the server's row hash is not 16 bytes".into(),
            })?;
            Ok((values, hash))
        })
    }

    /// [`Self::stream_rows`] with each row mapped by `map`.
    fn stream_mapped<T: Send + 'static>(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        sql: Result<(String, Vec<Value>), SourceError>,
        map: impl Fn(&tiberius::Row) -> Result<T, SourceError> + Send + Sync + 'static,
    ) -> Batches<T, SourceError> {
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let (pool, connection, spec, schema) =
            (self.pool.clone(), self.connection.clone(), spec.clone(), schema.clone());
        tokio::spawn(async move {
            let work = async {
                let (sql, params) = sql?;
                let mut pooled = pool.get().await.map_err(|e| SourceError::Connect {
                    connection: connection.clone(),
                    detail: e.detail,
                })?;
                let conn = pooled.conn();
                let drift = Drift::between(&schema, &describe_on(conn, &spec).await?);
                if !drift.is_empty() {
                    return Err(SourceError::ShapeChanged {
                        detail: drift.to_string(),
                    });
                }
                set_isolation(conn).await?;
                let mut q = Query::new(sql);
                bind(&mut q, params)?;
                let mut rows = q.query(conn).await.map_err(|e| source_error(&e))?.into_row_stream();
                let mut batch = Vec::with_capacity(BATCH);
                while let Some(row) = rows.try_next().await.map_err(|e| source_error(&e))? {
                    batch.push(map(&row)?);
                    if batch.len() == BATCH && tx.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                        return Ok(()); // the reader went away: the connection is closed, not reused
                    }
                }
                drop(rows);
                if !batch.is_empty() {
                    let _ = tx.send(Ok(batch)).await;
                }
                run(pooled.conn(), "SET TRANSACTION ISOLATION LEVEL READ COMMITTED", vec![]).await?;
                pooled.release();
                Ok(())
            };
            if let Err(e) = work.await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    fn table_of(spec: &SourceSpec) -> Result<String, SourceError> {
        match &spec.table {
            Some(_) => from_clause(spec),
            None => Err(SourceError::Unsupported {
                what: "change tracking on a query (it reads a table's change table)".into(),
            }),
        }
    }
}
