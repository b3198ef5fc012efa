//! SQLite as a source: a table or query read in binary key order, in key-range chunks, streamed
//! in bounded batches from a blocking thread.

use super::db::{connect, STREAM_BATCH};
use super::types::{map_decl, to_sql, to_value};
use crate::domain::key::{decode_key, encode_key};
use crate::domain::schema::{Column, Drift, TableSchema};
use crate::domain::value::Value;
use crate::errors::SourceError;
use crate::ports::{Batches, KeyRange, SnapshotSource, SourceSpec};
use async_trait::async_trait;
use rusqlite::Connection;
use std::path::PathBuf;

/// Reads one SQLite database file.
pub struct SqliteSource {
    path: PathBuf,
    connection: String,
}

/// Quotes an identifier (`"` doubled), so config names are never pasted into SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn from_clause(spec: &SourceSpec) -> String {
    match (&spec.table, &spec.query) {
        (Some(t), _) => t.split('.').map(quote_ident).collect::<Vec<_>>().join("."),
        (None, Some(q)) => format!("({q}) AS q"),
        (None, None) => unreachable!("config validation requires a table or a query"),
    }
}

fn object_name(spec: &SourceSpec) -> String {
    spec.table.clone().unwrap_or_else(|| "query".into())
}

fn query_err(e: rusqlite::Error) -> SourceError {
    SourceError::Query { detail: e.to_string() }
}

impl SqliteSource {
    /// A source on `path`; `connection` names it in errors.
    pub fn new(path: PathBuf, connection: &str) -> SqliteSource {
        SqliteSource {
            path,
            connection: connection.to_owned(),
        }
    }

    fn open(&self) -> Result<Connection, SourceError> {
        if !self.path.exists() {
            return Err(SourceError::Connect {
                connection: self.connection.clone(),
                detail: format!("no database file at {}", self.path.display()),
            });
        }
        connect(&self.path, true).map_err(|e| SourceError::Connect {
            connection: self.connection.clone(),
            detail: e.to_string(),
        })
    }

    fn describe_on(conn: &Connection, spec: &SourceSpec) -> Result<TableSchema, SourceError> {
        let sql = format!("SELECT * FROM {} LIMIT 0", from_clause(spec));
        let stmt = conn.prepare(&sql).map_err(|e| match (&spec.table, e.to_string()) {
            (Some(t), msg) if msg.contains("no such table") => SourceError::NoSuchTable { table: t.clone() },
            (_, detail) => SourceError::Query { detail },
        })?;
        let mut columns = Vec::new();
        for c in stmt.columns() {
            let native = c.decl_type().unwrap_or("").to_owned();
            let (ty, scale) = map_decl(&native).ok_or_else(|| SourceError::UnsupportedType {
                column: c.name().to_owned(),
                native: if native.is_empty() {
                    "(no declared type: CAST it in the query)".into()
                } else {
                    native.clone()
                },
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
}

fn order_by(schema: &TableSchema) -> String {
    schema
        .key
        .iter()
        .map(|k| format!("{} COLLATE BINARY", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `WHERE (k1, k2) >= (?, ?) AND (k1, k2) < (?, ?)` for the bounds that exist.
fn range_where(schema: &TableSchema, range: &KeyRange) -> Result<(String, Vec<rusqlite::types::Value>), SourceError> {
    let tuple = format!(
        "({})",
        schema
            .key
            .iter()
            .map(|k| format!("{} COLLATE BINARY", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut conds = Vec::new();
    let mut params = Vec::new();
    for (bound, op) in [(&range.lo, ">="), (&range.hi, "<")] {
        let Some(bytes) = bound else { continue };
        let values = decode_key(bytes)?;
        let marks: Vec<String> = values
            .iter()
            .map(|v| {
                params.push(to_sql(v).ok_or_else(|| SourceError::BadValue {
                    column: schema.key.join(", "),
                    detail: format!(
                        "SQLite sources support integer, boolean, text and blob keys, not {}",
                        v.type_name()
                    ),
                })?);
                Ok(format!("?{}", params.len()))
            })
            .collect::<Result<_, SourceError>>()?;
        conds.push(format!("{tuple} {op} ({})", marks.join(", ")));
    }
    let sql = if conds.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conds.join(" AND "))
    };
    Ok((sql, params))
}

fn row_values(row: &rusqlite::Row<'_>, schema: &TableSchema) -> Result<Vec<Value>, SourceError> {
    schema
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let v = row.get_ref(i).map_err(query_err)?;
            to_value(v, c.ty, c.scale).map_err(|detail| SourceError::BadValue {
                column: c.name.clone(),
                detail,
            })
        })
        .collect()
}

#[async_trait]
impl SnapshotSource for SqliteSource {
    async fn describe(&self, spec: &SourceSpec) -> Result<TableSchema, SourceError> {
        let conn = self.open()?;
        Self::describe_on(&conn, spec)
    }

    async fn split(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        chunk_rows: u64,
    ) -> Result<Vec<Vec<u8>>, SourceError> {
        let conn = self.open()?;
        let (spec, schema) = (spec.clone(), schema.clone());
        tokio::task::spawn_blocking(move || {
            let keys = schema.key.iter().map(|k| quote_ident(k)).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT {keys} FROM {} ORDER BY {}",
                from_clause(&spec),
                order_by(&schema)
            );
            let mut stmt = conn.prepare(&sql).map_err(query_err)?;
            let mut rows = stmt.query([]).map_err(query_err)?;
            let key_schema = TableSchema {
                columns: schema
                    .key_indexes()
                    .into_iter()
                    .map(|i| schema.columns[i].clone())
                    .collect(),
                key: schema.key.clone(),
                ..Default::default()
            };
            let (mut n, mut bounds) = (0u64, Vec::new());
            while let Some(row) = rows.next().map_err(query_err)? {
                n += 1;
                if n % chunk_rows == 1 && n > 1 {
                    let values = row_values(row, &key_schema)?;
                    let mut key = Vec::new();
                    encode_key(&mut key, &values.iter().collect::<Vec<_>>(), &schema.key)?;
                    bounds.push(key);
                }
            }
            Ok(bounds)
        })
        .await
        .map_err(|e| SourceError::Query {
            detail: format!("reader thread failed: {e}"),
        })?
    }

    fn read(&self, spec: &SourceSpec, schema: &TableSchema, range: &KeyRange) -> Batches<Vec<Value>, SourceError> {
        match range_where(schema, range) {
            Ok((cond, params)) => self.select(spec, schema, cond, params),
            Err(e) => failed(e),
        }
    }

    fn read_since(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        column: &str,
        from: &Value,
    ) -> Batches<Vec<Value>, SourceError> {
        match from {
            // SQLite stores timestamps as text in many formats; only integer cursors compare safely.
            Value::Int(i) => self.select(
                spec,
                schema,
                format!(" WHERE {} >= ?1", quote_ident(column)),
                vec![(*i).into()],
            ),
            other => failed(SourceError::Unsupported {
                what: format!(
                    "a {} watermark on SQLite (use an integer version column)",
                    other.type_name()
                ),
            }),
        }
    }

    async fn max_of(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        column: &str,
    ) -> Result<Option<Value>, SourceError> {
        let c = schema
            .columns
            .iter()
            .find(|c| c.name == column)
            .ok_or_else(|| SourceError::MissingKeyColumn {
                object: object_name(spec),
                column: column.to_owned(),
                available: schema.column_names().collect::<Vec<_>>().join(", "),
            })?;
        let conn = self.open()?;
        let sql = format!("SELECT MAX({}) FROM {}", quote_ident(column), from_clause(spec));
        let v = conn
            .query_row(&sql, [], |r| Ok(to_value(r.get_ref(0)?, c.ty, c.scale)))
            .map_err(query_err)?
            .map_err(|detail| SourceError::BadValue {
                column: column.to_owned(),
                detail,
            })?;
        Ok(match v {
            Value::Null => None,
            v => Some(v),
        })
    }
}

/// A stream that carries one error.
fn failed<T: Send + 'static>(e: SourceError) -> Batches<T, SourceError> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let _ = tx.try_send(Err(e));
    rx
}

impl SqliteSource {
    /// Streams `SELECT columns FROM source{cond} ORDER BY key` on a blocking thread, checking
    /// first that the shape is still the run's.
    fn select(
        &self,
        spec: &SourceSpec,
        schema: &TableSchema,
        cond: String,
        params: Vec<rusqlite::types::Value>,
    ) -> Batches<Vec<Value>, SourceError> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let conn = self.open();
        let (spec, schema) = (spec.clone(), schema.clone());
        tokio::task::spawn_blocking(move || {
            let run = || -> Result<(), SourceError> {
                let conn = conn?;
                let now = SqliteSource::describe_on(&conn, &spec)?;
                let drift = Drift::between(&schema, &now);
                if !drift.is_empty() {
                    return Err(SourceError::ShapeChanged {
                        detail: drift.to_string(),
                    });
                }
                let cols = schema.column_names().map(quote_ident).collect::<Vec<_>>().join(", ");
                let sql = format!(
                    "SELECT {cols} FROM {}{cond} ORDER BY {}",
                    from_clause(&spec),
                    order_by(&schema)
                );
                let mut stmt = conn.prepare(&sql).map_err(query_err)?;
                let mut rows = stmt.query(rusqlite::params_from_iter(params)).map_err(query_err)?;
                let mut batch = Vec::with_capacity(STREAM_BATCH);
                while let Some(row) = rows.next().map_err(query_err)? {
                    batch.push(row_values(row, &schema)?);
                    if batch.len() == STREAM_BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(STREAM_BATCH));
                        if tx.blocking_send(Ok(full)).is_err() {
                            return Ok(());
                        }
                    }
                }
                if !batch.is_empty() {
                    let _ = tx.blocking_send(Ok(batch));
                }
                Ok(())
            };
            if let Err(e) = run() {
                let _ = tx.blocking_send(Err(e));
            }
        });
        rx
    }
}
