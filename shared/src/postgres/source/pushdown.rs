//! Push-down hashing, reads by key, and watermark reads for the PostgreSQL source.
use super::*;
use crate::domain::encoding::RowHash;

/// The SQL text form every row is hashed over: a JSON array of the columns, so NULL, text
/// and numbers stay distinct and unambiguous; session settings (UTC, ISO intervals,
/// shortest-exact floats) make it deterministic.
pub(super) fn hash_expr(schema: &TableSchema) -> String {
    let cols = schema
        .columns
        .iter()
        .map(|c| quote(&c.name))
        .collect::<Vec<_>>()
        .join(", ");
    format!("substring(sha256(convert_to(json_build_array({cols})::text, 'UTF8')) from 1 for 16)")
}

/// Streams (key values, the server's 16-byte row hash) of a range, in key order.
pub(super) fn read_hashes(
    src: &PgSource,
    spec: &SourceSpec,
    schema: &TableSchema,
    range: &KeyRange,
) -> Batches<(Vec<Value>, RowHash), SourceError> {
    let keys: Vec<Column> = key_columns(schema).into_iter().cloned().collect();
    with_hashes(src, spec, schema, range, keys)
}

/// Streams every row of a range with the server's row hash, in key order: [`read_hashes`] with
/// all the columns instead of the key's.
pub(super) fn read_with_hashes(
    src: &PgSource,
    spec: &SourceSpec,
    schema: &TableSchema,
    range: &KeyRange,
) -> Batches<(Vec<Value>, RowHash), SourceError> {
    with_hashes(src, spec, schema, range, schema.columns.clone())
}

/// `columns` of a range's rows and each row's hash (over all its columns), in key order.
fn with_hashes(
    src: &PgSource,
    spec: &SourceSpec,
    schema: &TableSchema,
    range: &KeyRange,
    columns: Vec<Column>,
) -> Batches<(Vec<Value>, RowHash), SourceError> {
    let sql = (|| {
        let mut params = Params::new();
        let cond = range_where(schema, range, &mut params)?;
        let select = columns.iter().map(select_expr).collect::<Vec<_>>().join(", ");
        let order = key_columns(schema)
            .into_iter()
            .map(key_expr)
            .collect::<Vec<_>>()
            .join(", ");
        Ok((
            format!(
                "SELECT {select}, {} FROM {}{cond} ORDER BY {order}",
                hash_expr(schema),
                from_clause(spec)?
            ),
            params,
        ))
    })();
    src.stream(Some((spec.clone(), schema.clone())), sql, move |row| {
        let values = row_values(row, &columns)?;
        let digest: Vec<u8> = row.try_get(columns.len()).map_err(query_err)?;
        let hash: RowHash = digest
            .get(..16)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| SourceError::Query {
                detail: "the server's row hash is shorter than 16 bytes".into(),
            })?;
        Ok((values, hash))
    })
}

/// An array parameter of one key column's values, with its cast.
fn array_param(values: Vec<&Value>) -> Option<(Box<dyn ToSql + Send + Sync>, &'static str)> {
    macro_rules! arr {
        ($variant:ident, $t:ty, $cast:literal, $conv:expr) => {{
            let v: Option<Vec<$t>> = values
                .iter()
                .map(|x| {
                    if let Value::$variant(y) = x {
                        Some($conv(y))
                    } else {
                        None
                    }
                })
                .collect();
            (Box::new(v?) as Box<dyn ToSql + Send + Sync>, $cast)
        }};
    }
    Some(match values.first()? {
        Value::Int(_) => arr!(Int, i64, "int8[]", |y: &i64| *y),
        Value::Text(_) => arr!(Text, String, "text[]", |y: &String| y.clone()),
        Value::Bytes(_) => arr!(Bytes, Vec<u8>, "bytea[]", |y: &Vec<u8>| y.clone()),
        Value::Uuid(_) => arr!(Uuid, uuid::Uuid, "uuid[]", |y: &[u8; 16]| uuid::Uuid::from_bytes(*y)),
        Value::Date(_) => arr!(Date, chrono::NaiveDate, "date[]", |y: &chrono::NaiveDate| *y),
        Value::Timestamp(_) => arr!(
            Timestamp,
            chrono::NaiveDateTime,
            "timestamp[]",
            |y: &chrono::NaiveDateTime| *y
        ),
        _ => return None,
    })
}

/// The rows with these keys: `WHERE (k1, k2) IN (SELECT * FROM UNNEST($1, $2))`.
pub(super) async fn read_keys(
    src: &PgSource,
    spec: &SourceSpec,
    schema: &TableSchema,
    keys: &[Vec<Value>],
) -> Result<Vec<Vec<Value>>, SourceError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let client = src.client().await?;
    let cols = key_columns(schema);
    let mut params = Params::new();
    let mut arrays = Vec::new();
    for (i, _) in cols.iter().enumerate() {
        let (p, cast) = array_param(keys.iter().map(|k| &k[i]).collect()).ok_or_else(|| SourceError::BadValue {
            column: schema.key.join(", "),
            detail: "these key types cannot be fetched by key".into(),
        })?;
        params.push(p);
        arrays.push(format!("${}::{cast}", params.len()));
    }
    let tuple = cols.iter().map(|c| quote(&c.name)).collect::<Vec<_>>().join(", ");
    let select = schema.columns.iter().map(select_expr).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT {select} FROM {} WHERE ({tuple}) IN (SELECT * FROM UNNEST({}))",
        from_clause(spec)?,
        arrays.join(", ")
    );
    let rows = client
        .query_raw(&sql, params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)))
        .await
        .map_err(query_err)?;
    futures_util::pin_mut!(rows);
    let mut out = Vec::with_capacity(keys.len());
    while let Some(row) = rows.next().await {
        let row = row.map_err(query_err)?;
        out.push(
            schema
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| read_value(&row, i, c))
                .collect::<Result<_, _>>()?,
        );
    }
    Ok(out)
}

/// `WHERE column >= $1`, in key order.
pub(super) fn read_since(
    src: &PgSource,
    spec: &SourceSpec,
    schema: &TableSchema,
    column: &str,
    from: &Value,
) -> Batches<Vec<Value>, SourceError> {
    let sql = (|| {
        let (p, cast) = key_param(from).ok_or_else(|| SourceError::BadValue {
            column: column.to_owned(),
            detail: format!("a {} cannot be a watermark", from.type_name()),
        })?;
        let select = schema.columns.iter().map(select_expr).collect::<Vec<_>>().join(", ");
        let order = key_columns(schema)
            .iter()
            .map(|c| key_expr(c))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT {select} FROM {} WHERE {} >= $1::{cast} ORDER BY {order}",
            from_clause(spec)?,
            quote(column)
        );
        Ok((sql, vec![p]))
    })();
    let cols = schema.columns.clone();
    src.stream(Some((spec.clone(), schema.clone())), sql, move |row| {
        row_values(row, &cols)
    })
}

/// `SELECT MAX(column)`.
pub(super) async fn max_of(
    src: &PgSource,
    spec: &SourceSpec,
    schema: &TableSchema,
    column: &str,
) -> Result<Option<Value>, SourceError> {
    let c = schema
        .columns
        .iter()
        .find(|c| c.name == column)
        .ok_or_else(|| SourceError::MissingKeyColumn {
            object: spec.table.clone().unwrap_or_else(|| "query".into()),
            column: column.to_owned(),
            available: schema
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let client = src.client().await?;
    let sql = format!("SELECT MAX({}) FROM {}", quote(column), from_clause(spec)?);
    let row = client.query_one(&sql, &[]).await.map_err(query_err)?;
    match read_value(&row, 0, c)? {
        Value::Null => Ok(None),
        v => Ok(Some(v)),
    }
}
