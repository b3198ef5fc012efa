//! T-SQL text for the SQL Server source: names validated and bracketed, every value a
//! parameter (`@P1`…) cast to its column's declared type, key ranges spelled out as
//! lexicographic comparisons (T-SQL has no row values).

use super::errors::source_error;
use super::ident::{qualified, quote};
use super::pool::Conn;
use super::types::select_expr;
use crate::domain::key::decode_key;
use crate::domain::schema::{Column, TableSchema};
use crate::domain::value::Value;
use crate::errors::SourceError;
use crate::ports::{KeyRange, SourceSpec};
use tiberius::Query;

pub fn from_clause(spec: &SourceSpec) -> Result<String, SourceError> {
    match (&spec.table, &spec.query) {
        (Some(t), _) => qualified(t, "table").map_err(|e| SourceError::Query { detail: e.to_string() }),
        (None, Some(q)) => Ok(format!("({q}) AS [q]")),
        (None, None) => Err(SourceError::Query {
            detail: "a data source needs a table or a query".into(),
        }),
    }
}

pub fn key_columns(schema: &TableSchema) -> Vec<&Column> {
    schema.key_indexes().into_iter().map(|i| &schema.columns[i]).collect()
}

/// The key's columns, quoted and comma-separated: the `ORDER BY` of every ordered read.
pub fn key_list(schema: &TableSchema) -> String {
    key_columns(schema)
        .iter()
        .map(|c| quote(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
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
pub fn bind(q: &mut Query<'_>, values: Vec<Value>) -> Result<(), SourceError> {
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
pub async fn run(conn: &mut Conn, sql: &str, values: Vec<Value>) -> Result<Vec<tiberius::Row>, SourceError> {
    let mut q = Query::new(sql.to_owned());
    bind(&mut q, values)?;
    let stream = q.query(conn).await.map_err(|e| source_error(&e))?;
    stream.into_first_result().await.map_err(|e| source_error(&e))
}

/// The select list of a schema's columns.
pub fn select_list(schema: &TableSchema) -> String {
    schema.columns.iter().map(select_expr).collect::<Vec<_>>().join(", ")
}

pub fn column_of<'s>(schema: &'s TableSchema, column: &str) -> Result<&'s Column, SourceError> {
    schema
        .columns
        .iter()
        .find(|c| c.name == column)
        .ok_or_else(|| SourceError::Query {
            detail: format!("the source has no column `{column}`"),
        })
}

/// Chunk boundaries: every `@P1`-th key from one pass over the key's index in order (row 1
/// starts the first chunk, so only the later chunks' first keys come back).
pub fn split_sql(from: &str, keys: &[&Column]) -> String {
    let list = keys.iter().map(|c| quote(&c.name)).collect::<Vec<_>>().join(", ");
    format!(
        "SELECT {list} FROM (SELECT {list}, ROW_NUMBER() OVER (ORDER BY {list}) AS [signals_rn] FROM {from}) AS [k] \
         WHERE ([signals_rn] - 1) % CAST(@P1 AS bigint) = 0 AND [signals_rn] > 1 ORDER BY {list}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::key::encode_key;
    use crate::domain::schema::ColumnType;
    use crate::mssql::types::sorts_canonically;

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
    fn chunks_start_at_every_nth_key_of_one_ordered_pass() {
        let id = col("id", ColumnType::Int, "bigint");
        let sql = split_sql("[dbo].[t]", &[&id]);
        assert_eq!(
            sql,
            "SELECT [id] FROM (SELECT [id], ROW_NUMBER() OVER (ORDER BY [id]) AS [signals_rn] FROM [dbo].[t]) AS [k] \
             WHERE ([signals_rn] - 1) % CAST(@P1 AS bigint) = 0 AND [signals_rn] > 1 ORDER BY [id]"
        );
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
