//! Change tracking (`diff = "change_tracking"`): the versions that decide whether the stored one
//! is still usable, and the change table joined back to the table for each changed key's row.
//! The join is on the primary key (change tracking requires one), so no sort is involved.

use super::ident::quote;
use super::sql::key_columns;
use super::types::{read_value, select_expr_of};
use crate::domain::schema::{Column, TableSchema};
use crate::domain::value::Value;
use crate::errors::SourceError;
use crate::ports::TrackedChange;

/// `CHANGE_TRACKING_CURRENT_VERSION()` and the table's minimum valid version (NULL when the
/// table is not tracked).
pub const VERSIONS_SQL: &str =
    "SELECT CHANGE_TRACKING_CURRENT_VERSION(), CHANGE_TRACKING_MIN_VALID_VERSION(OBJECT_ID(@P1))";

/// The changed keys since `@P1` with their current rows: the first column says whether the
/// row is gone, then the change table's key columns, then the row's columns.
pub fn changes_sql(table: &str, schema: &TableSchema) -> String {
    let keys = key_columns(schema);
    let join = keys
        .iter()
        .map(|c| format!("[t].{q} = [ct].{q}", q = quote(&c.name)))
        .collect::<Vec<_>>()
        .join(" AND ");
    let ct_keys = keys
        .iter()
        .map(|c| format!("[ct].{q} AS {q}", q = quote(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let row = schema
        .columns
        .iter()
        .map(|c| select_expr_of("t", c))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "SELECT CASE WHEN [t].{first} IS NULL THEN 1 ELSE 0 END, {ct_keys}, {row} \
         FROM CHANGETABLE(CHANGES {table}, @P1) AS [ct] LEFT JOIN {table} AS [t] ON {join}",
        first = quote(&keys[0].name)
    )
}

/// The current version and the table's minimum valid one, from [`VERSIONS_SQL`]'s row.
pub fn versions_of(row: Option<&tiberius::Row>) -> Result<(i64, Option<i64>), SourceError> {
    let row = row.ok_or_else(|| SourceError::Query {
        detail: "change tracking versions: no row".into(),
    })?;
    let current = row.get::<i64, _>(0).ok_or_else(|| SourceError::Unsupported {
        what: "change tracking: it is not enabled for the database (ALTER DATABASE … SET CHANGE_TRACKING = ON)".into(),
    })?;
    Ok((current, row.get::<i64, _>(1)))
}

/// One row of [`changes_sql`]: the key gone, or the row as it is now.
pub fn change_of(row: &tiberius::Row, keys: &[Column], columns: &[Column]) -> Result<TrackedChange, SourceError> {
    let mut cells = row.cells().map(|(_, d)| d);
    let gone = matches!(cells.next(), Some(tiberius::ColumnData::I32(Some(1))));
    let key: Vec<Value> = keys
        .iter()
        .map(|c| read_value(cells.next().unwrap_or(&tiberius::ColumnData::I32(None)), c))
        .collect::<Result<_, _>>()?;
    if gone {
        return Ok(TrackedChange::Gone(key));
    }
    let values = cells
        .zip(columns)
        .map(|(d, c)| read_value(d, c))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TrackedChange::Row(values))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::schema::ColumnType;

    #[test]
    fn the_change_table_is_joined_back_on_the_key_and_parameterized() {
        let col = |n: &str, ty, native: &str| Column {
            name: n.into(),
            ty,
            scale: None,
            native: native.into(),
        };
        let schema = TableSchema {
            columns: vec![
                col("Region", ColumnType::Text, "varchar(10)"),
                col("Id", ColumnType::Int, "int"),
                col("Fee", ColumnType::Decimal, "money"),
            ],
            key: vec!["Region".into(), "Id".into()],
            ..Default::default()
        };
        assert_eq!(
            changes_sql("[dbo].[Orders]", &schema),
            "SELECT CASE WHEN [t].[Region] IS NULL THEN 1 ELSE 0 END, [ct].[Region] AS [Region], [ct].[Id] AS [Id], \
             [t].[Region] AS [Region], [t].[Id] AS [Id], CAST([t].[Fee] AS decimal(19,4)) AS [Fee] \
             FROM CHANGETABLE(CHANGES [dbo].[Orders], @P1) AS [ct] LEFT JOIN [dbo].[Orders] AS [t] \
             ON [t].[Region] = [ct].[Region] AND [t].[Id] = [ct].[Id]"
        );
    }
}
