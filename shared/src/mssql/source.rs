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
use super::ident::{qualified, quote};
use super::pool::{Conn, Pool, Pooled};
use super::types::{map_type, read_value, select_expr, sorts_canonically, unsupported_hint};
use crate::domain::key::{decode_key, encode_key};
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

fn from_clause(spec: &SourceSpec) -> Result<String, SourceError> {
    match (&spec.table, &spec.query) {
        (Some(t), _) => qualified(t, "table").map_err(|e| SourceError::Query { detail: e.to_string() }),
        (None, Some(q)) => Ok(format!("({q}) AS [q]")),
        (None, None) => Err(SourceError::Query {
            detail: "a data source needs a table or a query".into(),
        }),
    }
}

fn key_columns(schema: &TableSchema) -> Vec<&Column> {
    schema.key_indexes().into_iter().map(|i| &schema.columns[i]).collect()
}

/// `(k1, …, kn) op (v1, …, vn)` in lexicographic order, spelled out (T-SQL has no row values);
/// each value a parameter cast to its column's declared type, so the comparison stays an
/// index seek instead of converting the column.
pub fn tuple_compare(keys: &[&Column], op: &str, first_param: usize) -> String {
    let strict = if op.starts_with('>') { ">" } else { "<" };
    let p = |i: usize| format!("CAST(@P{} AS {})", first_param + i, keys[i].native);
    let mut ors = Vec::new();
    for i in 0..keys.len() {
        let mut ands: Vec<String> = (0..i).map(|j| format!("{} = {}", quote(&keys[j].name), p(j))).collect();
        let last_op = if i + 1 == keys.len() { op } else { strict };
        ands.push(format!("{} {last_op} {}", quote(&keys[i].name), p(i)));
        ors.push(format!("({})", ands.join(" AND ")));
    }
    format!("({})", ors.join(" OR "))
}

/// The `WHERE` of a key range and its parameter values.
pub fn range_where(schema: &TableSchema, range: &KeyRange) -> Result<(String, Vec<Value>), SourceError> {
    let keys = key_columns(schema);
    let (mut conds, mut params) = (Vec::new(), Vec::new());
    for (bound, op) in [(&range.lo, ">="), (&range.hi, "<")] {
        let Some(bytes) = bound else { continue };
        conds.push(tuple_compare(&keys, op, params.len() + 1));
        params.extend(decode_key(bytes)?);
    }
    let sql = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    Ok((sql, params))
}

/// Binds key values (the types `sorts_canonically` admits as keys) and watermarks to a query.
fn bind(q: &mut Query<'_>, values: Vec<Value>) -> Result<(), SourceError> {
    for v in values {
        match v {
            Value::Int(i) => q.bind(i),
            Value::Bool(b) => q.bind(b),
            Value::Text(t) => q.bind(t),
            Value::Bytes(b) => q.bind(b),
            Value::Date(d) => q.bind(d),
            Value::Time(t) => q.bind(t),
            Value::Timestamp(t) => q.bind(t),
            Value::TimestampTz(t) => q.bind(t),
            other => {
                return Err(SourceError::BadValue {
                    column: "key".into(),
                    detail: format!("{} keys cannot bound a range", other.type_name()),
                })
            }
        }
    }
    Ok(())
}

/// Drains a query's results so the connection can be reused.
async fn run(conn: &mut Conn, sql: &str, values: Vec<Value>) -> Result<Vec<tiberius::Row>, SourceError> {
    let mut q = Query::new(sql.to_owned());
    bind(&mut q, values)?;
    let stream = q.query(conn).await.map_err(|e| source_error(&e))?;
    stream.into_first_result().await.map_err(|e| source_error(&e))
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
        let keys = key_columns(schema);
        let list = keys.iter().map(|c| quote(&c.name)).collect::<Vec<_>>().join(", ");
        // One pass over the key's index in order; only each chunk's first key comes back.
        let sql = format!(
            "SELECT {list} FROM (SELECT {list}, ROW_NUMBER() OVER (ORDER BY {list}) AS [signals_rn] FROM {}) AS [k] \
             WHERE [signals_rn] % CAST(@P1 AS bigint) = 1 AND [signals_rn] > 1 ORDER BY {list}",
            from_clause(spec)?
        );
        let mut c = self.conn().await?;
        let rows = run(c.conn(), &sql, vec![Value::Int(chunk_rows.max(1) as i64)]).await?;
        c.release();
        let mut bounds: Vec<Vec<u8>> = Vec::with_capacity(rows.len());
        for row in rows {
            let values = row
                .cells()
                .zip(&keys)
                .map(|((_, d), c)| read_value(d, c))
                .collect::<Result<Vec<_>, _>>()?;
            let mut key = Vec::new();
            encode_key(&mut key, &values.iter().collect::<Vec<_>>(), &schema.key)?;
            if bounds.last() != Some(&key) {
                bounds.push(key);
            }
        }
        Ok(bounds)
    }

    async fn change_versions(&self, spec: &SourceSpec) -> Result<(i64, Option<i64>), SourceError> {
        super::tracking::versions(&self.pool, &self.connection, &Self::table_of(spec)?).await
    }

    fn read_changes(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        version: i64,
    ) -> Batches<crate::ports::TrackedChange, SourceError> {
        match Self::table_of(spec) {
            Ok(table) => super::tracking::read(
                self.pool.clone(),
                self.connection.clone(),
                super::tracking::changes_sql(&table, schema),
                schema.clone(),
                version,
            ),
            Err(e) => crate::ports::failed(e),
        }
    }

    fn read(&self, spec: &SourceSpec, schema: &TableSchema, range: &KeyRange) -> Batches<Vec<Value>, SourceError> {
        let sql = (|| {
            let (cond, params) = range_where(schema, range)?;
            let order = key_columns(schema)
                .iter()
                .map(|c| quote(&c.name))
                .collect::<Vec<_>>()
                .join(", ");
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

/// The select list of a schema's columns.
fn select_list(schema: &TableSchema) -> String {
    schema.columns.iter().map(select_expr).collect::<Vec<_>>().join(", ")
}

fn column_of<'s>(schema: &'s TableSchema, column: &str) -> Result<&'s Column, SourceError> {
    schema
        .columns
        .iter()
        .find(|c| c.name == column)
        .ok_or_else(|| SourceError::Query {
            detail: format!("the source has no column `{column}`"),
        })
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
                    let values = row
                        .cells()
                        .zip(&schema.columns)
                        .map(|((_, d), c)| read_value(d, c))
                        .collect::<Result<Vec<_>, _>>()?;
                    batch.push(values);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::schema::ColumnType;

    fn col(name: &str, ty: ColumnType, native: &str) -> Column {
        Column {
            name: name.into(),
            ty,
            scale: None,
            native: native.into(),
        }
    }

    #[test]
    fn composite_key_ranges_are_spelled_out_and_parameterized() {
        let a = col("Region", ColumnType::Text, "varchar(10)");
        let b = col("Id", ColumnType::Int, "int");
        assert_eq!(
            tuple_compare(&[&a, &b], ">=", 1),
            "(([Region] > CAST(@P1 AS varchar(10))) OR ([Region] = CAST(@P1 AS varchar(10)) AND [Id] >= CAST(@P2 AS int)))"
        );
        assert_eq!(tuple_compare(&[&b], "<", 3), "(([Id] < CAST(@P3 AS int)))");
        let schema = TableSchema {
            columns: vec![a.clone(), b.clone()],
            key: vec!["Region".into(), "Id".into()],
            ..Default::default()
        };
        let key = |r: &str, i: i64| {
            let mut k = Vec::new();
            encode_key(&mut k, &[&Value::Text(r.into()), &Value::Int(i)], &schema.key).unwrap();
            k
        };
        let range = KeyRange {
            lo: Some(key("EU'; DROP TABLE x; --", 5)),
            hi: Some(key("US", 1)),
        };
        let (sql, params) = range_where(&schema, &range).unwrap();
        assert!(
            sql.contains("@P4") && !sql.contains("DROP"),
            "values are parameters: {sql}"
        );
        assert_eq!(params.len(), 4);
        assert_eq!(params[0], Value::Text("EU'; DROP TABLE x; --".into()));
        assert_eq!(range_where(&schema, &KeyRange::default()).unwrap().0, "");
    }

    #[test]
    fn table_names_are_validated_and_bracketed() {
        let spec = |t: &str| SourceSpec {
            table: Some(t.into()),
            key: vec!["id".into()],
            ..Default::default()
        };
        assert_eq!(from_clause(&spec("dbo.Orders")).unwrap(), "[dbo].[Orders]");
        assert!(from_clause(&spec("dbo.Orders]; DROP TABLE x")).is_err());
        assert!(from_clause(&SourceSpec::default()).is_err());
    }

    #[test]
    fn only_keys_the_server_sorts_bytewise_are_accepted() {
        let text = col("k", ColumnType::Text, "nvarchar(50)");
        assert!(!sorts_canonically(&text, Some("SQL_Latin1_General_CP1_CI_AS")));
        assert!(sorts_canonically(&text, Some("Latin1_General_100_BIN2")));
        assert!(sorts_canonically(&col("k", ColumnType::Int, "bigint"), None));
        assert!(!sorts_canonically(
            &col("k", ColumnType::Uuid, "uniqueidentifier"),
            None
        ));
    }
}
