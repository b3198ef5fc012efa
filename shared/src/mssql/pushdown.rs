//! Push-down hashing (`diff = "remote_hash"`) for SQL Server: the server hashes each row and
//! only (key, hash) crosses the link; the changed rows are then fetched by key.

use super::ident::quote;
use super::types::{base_type, select_expr_of};
use crate::domain::schema::{Column, TableSchema};
use crate::domain::value::Value;

/// Parameters per statement: SQL Server accepts 2,100.
pub const MAX_PARAMS: usize = 2_000;

/// How a column enters the hashed document: as the read selects it, with the types `FOR JSON`
/// cannot serialize (CLR types, the old large-object types) converted first.
fn hashed_expr(c: &Column) -> String {
    let q = quote(&c.name);
    match base_type(&c.native).as_str() {
        "text" => format!("CAST([t].{q} AS varchar(max)) AS {q}"),
        "ntext" => format!("CAST([t].{q} AS nvarchar(max)) AS {q}"),
        "image" => format!("CAST([t].{q} AS varbinary(max)) AS {q}"),
        _ => select_expr_of("t", c),
    }
}

/// The server's 16-byte row hash: SHA-256 of the row as a JSON object (NULLs included, so a
/// NULL and an absent value differ; binary as base64; types in their fixed JSON forms).
pub fn hash_expr(schema: &TableSchema) -> String {
    let cols = schema.columns.iter().map(hashed_expr).collect::<Vec<_>>().join(", ");
    format!(
        "CAST(HASHBYTES('SHA2_256', (SELECT {cols} FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES)) AS binary(16))"
    )
}

/// `WHERE` matching any of `n` keys, parameters from `@P1` in key-column order per key.
pub fn keys_where(keys: &[&Column], n: usize) -> String {
    let p = |k: usize, i: usize| format!("CAST(@P{} AS {})", k * keys.len() + i + 1, keys[i].native);
    if let [only] = keys {
        let list = (0..n).map(|k| p(k, 0)).collect::<Vec<_>>().join(", ");
        return format!("{} IN ({list})", quote(&only.name));
    }
    (0..n)
        .map(|k| {
            let ands = keys
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{} = {}", quote(&c.name), p(k, i)))
                .collect::<Vec<_>>()
                .join(" AND ");
            format!("({ands})")
        })
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// Keys per statement so the parameters stay under the limit.
pub fn keys_per_statement(key_columns: usize) -> usize {
    (MAX_PARAMS / key_columns.max(1)).max(1)
}

/// The parameters of [`keys_where`], flattened.
pub fn key_params(keys: &[Vec<Value>]) -> Vec<Value> {
    keys.iter().flatten().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::schema::ColumnType;

    fn col(n: &str, ty: ColumnType, native: &str) -> Column {
        Column {
            name: n.into(),
            ty,
            scale: None,
            native: native.into(),
        }
    }

    #[test]
    fn rows_hash_as_json_documents_with_every_column() {
        let schema = TableSchema {
            columns: vec![
                col("id", ColumnType::Int, "int"),
                col("fee", ColumnType::Decimal, "money"),
                col("notes", ColumnType::Text, "ntext"),
                col("place", ColumnType::Bytes, "geography"),
            ],
            key: vec!["id".into()],
            ..Default::default()
        };
        assert_eq!(
            hash_expr(&schema),
            "CAST(HASHBYTES('SHA2_256', (SELECT [t].[id] AS [id], CAST([t].[fee] AS decimal(19,4)) AS [fee], \
             CAST([t].[notes] AS nvarchar(max)) AS [notes], CAST([t].[place] AS varbinary(max)) AS [place] \
             FOR JSON PATH, WITHOUT_ARRAY_WRAPPER, INCLUDE_NULL_VALUES)) AS binary(16))"
        );
    }

    #[test]
    fn keys_are_matched_by_parameters_within_the_limit() {
        let id = col("id", ColumnType::Int, "bigint");
        assert_eq!(
            keys_where(&[&id], 3),
            "[id] IN (CAST(@P1 AS bigint), CAST(@P2 AS bigint), CAST(@P3 AS bigint))"
        );
        let site = col("site", ColumnType::Text, "varchar(8)");
        assert_eq!(
            keys_where(&[&site, &id], 2),
            "([site] = CAST(@P1 AS varchar(8)) AND [id] = CAST(@P2 AS bigint)) OR \
             ([site] = CAST(@P3 AS varchar(8)) AND [id] = CAST(@P4 AS bigint))"
        );
        assert_eq!(keys_per_statement(1), 2_000);
        assert_eq!(keys_per_statement(3), 666);
        let keys = vec![
            vec![Value::Text("a".into()), Value::Int(1)],
            vec![Value::Text("b".into()), Value::Int(2)],
        ];
        assert_eq!(key_params(&keys).len(), 4);
    }
}
