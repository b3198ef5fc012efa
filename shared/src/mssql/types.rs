//! SQL Server types → canonical column types, the select expression that reads each losslessly,
//! and wire values (`ColumnData`) → canonical values.
//!
//! Where the driver's own decoding would lose something, the server converts first: `money` and
//! `smallmoney` arrive as `f64` from tiberius, so they are selected as `decimal(19,4)` /
//! `decimal(10,4)`; CLR types (`hierarchyid`, `geography`, `geometry`) as their serialized bytes;
//! the 2025 `json` type as its text. `sql_variant` has no single canonical type and is refused
//! with a way out (select it converted in a `query`).

use super::ident::quote;
use crate::domain::schema::{Column, ColumnType};
use crate::domain::value::{Decimal, Value};
use crate::errors::SourceError;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};
use tiberius::{ColumnData, FromSql};

/// The base type of a `system_type_name` (`decimal(12,2)` → `decimal`).
pub fn base_type(system_type_name: &str) -> String {
    system_type_name
        .split('(')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The canonical type and scale of a column described as `system_type_name` (as
/// `sys.dm_exec_describe_first_result_set` names it) with its scale; `None` if it has no
/// lossless mapping.
pub fn map_type(system_type_name: &str, scale: u8) -> Option<(ColumnType, Option<u32>)> {
    let t = match base_type(system_type_name).as_str() {
        "bit" => ColumnType::Bool,
        "tinyint" | "smallint" | "int" | "bigint" => ColumnType::Int,
        "decimal" | "numeric" => return Some((ColumnType::Decimal, Some(scale.into()))),
        "money" | "smallmoney" => return Some((ColumnType::Decimal, Some(4))),
        "real" => ColumnType::Float32,
        "float" => ColumnType::Float64,
        "char" | "varchar" | "nchar" | "nvarchar" | "text" | "ntext" | "xml" | "sysname" => ColumnType::Text,
        "binary" | "varbinary" | "image" | "timestamp" | "rowversion" | "hierarchyid" | "geography" | "geometry" => {
            ColumnType::Bytes
        }
        "uniqueidentifier" => ColumnType::Uuid,
        "date" => ColumnType::Date,
        "time" => ColumnType::Time,
        "datetime" | "smalldatetime" | "datetime2" => ColumnType::Timestamp,
        "datetimeoffset" => ColumnType::Timestamptz,
        "json" => ColumnType::Json,
        _ => return None,
    };
    Some((t, None))
}

/// Why a type is refused, for the error.
pub fn unsupported_hint(system_type_name: &str) -> String {
    match base_type(system_type_name).as_str() {
        "sql_variant" => "sql_variant (its values have no single type: select it converted, e.g. \
                          `CONVERT(nvarchar(4000), col, 121)`, in a `query`)"
            .into(),
        other => other.to_owned(),
    }
}

/// How the read query selects a column so that [`read_value`] gets a lossless value.
pub fn select_expr(c: &Column) -> String {
    select_expr_of("", c)
}

/// [`select_expr`] for a column of the table aliased `alias` (`""`: unqualified).
pub fn select_expr_of(alias: &str, c: &Column) -> String {
    let q = quote(&c.name);
    let src = if alias.is_empty() {
        q.clone()
    } else {
        format!("{}.{q}", quote(alias))
    };
    match base_type(&c.native).as_str() {
        "money" => format!("CAST({src} AS decimal(19,4)) AS {q}"),
        "smallmoney" => format!("CAST({src} AS decimal(10,4)) AS {q}"),
        "hierarchyid" | "geography" | "geometry" => format!("CAST({src} AS varbinary(max)) AS {q}"),
        "json" => format!("CAST({src} AS nvarchar(max)) AS {q}"),
        _ if alias.is_empty() => q,
        _ => format!("{src} AS {q}"),
    }
}

fn bad(c: &Column, e: impl std::fmt::Display) -> SourceError {
    SourceError::BadValue {
        column: c.name.clone(),
        detail: e.to_string(),
    }
}

/// The exact text of a decimal value (`value` scaled by 10^`scale`).
pub fn numeric_text(value: i128, scale: u8) -> String {
    let digits = value.unsigned_abs().to_string();
    let scale = scale as usize;
    let mut out = String::with_capacity(digits.len() + 3);
    if value < 0 {
        out.push('-');
    }
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() > scale {
        out.push_str(&digits[..digits.len() - scale]);
        out.push('.');
        out.push_str(&digits[digits.len() - scale..]);
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    }
    out
}

fn get<'a, T: FromSql<'a>>(data: &'a ColumnData<'static>, c: &Column) -> Result<Option<T>, SourceError> {
    T::from_sql(data).map_err(|e| bad(c, e))
}

/// A wire value of column `c` (selected with [`select_expr`]) as a canonical value.
pub fn read_value(data: &ColumnData<'static>, c: &Column) -> Result<Value, SourceError> {
    let v = match (c.ty, data) {
        (ColumnType::Bool, ColumnData::Bit(b)) => b.map(Value::Bool),
        (ColumnType::Int, ColumnData::U8(v)) => v.map(|v| Value::Int(v.into())),
        (ColumnType::Int, ColumnData::I16(v)) => v.map(|v| Value::Int(v.into())),
        (ColumnType::Int, ColumnData::I32(v)) => v.map(|v| Value::Int(v.into())),
        (ColumnType::Int, ColumnData::I64(v)) => v.map(Value::Int),
        (ColumnType::Decimal, ColumnData::Numeric(n)) => match n {
            None => None,
            Some(n) => {
                let text = numeric_text(n.value(), n.scale());
                Some(Value::Decimal(
                    Decimal::parse(&text, c.scale).map_err(|_| bad(c, format!("decimal `{text}` does not fit")))?,
                ))
            }
        },
        (ColumnType::Float32, ColumnData::F32(v)) => v.map(Value::F32),
        (ColumnType::Float64, ColumnData::F64(v)) => v.map(Value::F64),
        (ColumnType::Text, ColumnData::String(s)) => s.as_ref().map(|s| Value::Text(s.to_string())),
        (ColumnType::Text, ColumnData::Xml(x)) => x.as_ref().map(|x| Value::Text(x.to_string())),
        (ColumnType::Json, ColumnData::String(s)) => s.as_ref().map(|s| Value::Json(s.to_string())),
        (ColumnType::Bytes, ColumnData::Binary(b)) => b.as_ref().map(|b| Value::Bytes(b.to_vec())),
        (ColumnType::Uuid, ColumnData::Guid(g)) => g.map(|g| Value::Uuid(*g.as_bytes())),
        (ColumnType::Date, _) => get::<NaiveDate>(data, c)?.map(Value::Date),
        (ColumnType::Time, _) => get::<NaiveTime>(data, c)?.map(Value::Time),
        (ColumnType::Timestamp, _) => get::<NaiveDateTime>(data, c)?.map(Value::Timestamp),
        (ColumnType::Timestamptz, _) => get::<DateTime<FixedOffset>>(data, c)?.map(Value::TimestampTz),
        // A NULL of any type may arrive in the shape of another (a NULL sql_variant, say).
        (_, other) if is_null(other) => None,
        (ty, other) => {
            return Err(bad(
                c,
                format!("a {} value arrived for a column described as {ty:?}", other_type(other)),
            ))
        }
    };
    Ok(v.unwrap_or(Value::Null))
}

fn is_null(d: &ColumnData<'_>) -> bool {
    match d {
        ColumnData::U8(v) => v.is_none(),
        ColumnData::I16(v) => v.is_none(),
        ColumnData::I32(v) => v.is_none(),
        ColumnData::I64(v) => v.is_none(),
        ColumnData::F32(v) => v.is_none(),
        ColumnData::F64(v) => v.is_none(),
        ColumnData::Bit(v) => v.is_none(),
        ColumnData::String(v) => v.is_none(),
        ColumnData::Guid(v) => v.is_none(),
        ColumnData::Binary(v) => v.is_none(),
        ColumnData::Numeric(v) => v.is_none(),
        ColumnData::Xml(v) => v.is_none(),
        ColumnData::DateTime(v) => v.is_none(),
        ColumnData::SmallDateTime(v) => v.is_none(),
        ColumnData::Time(v) => v.is_none(),
        ColumnData::Date(v) => v.is_none(),
        ColumnData::DateTime2(v) => v.is_none(),
        ColumnData::DateTimeOffset(v) => v.is_none(),
    }
}

fn other_type(d: &ColumnData<'_>) -> &'static str {
    match d {
        ColumnData::U8(_) | ColumnData::I16(_) | ColumnData::I32(_) | ColumnData::I64(_) => "integer",
        ColumnData::F32(_) | ColumnData::F64(_) => "float",
        ColumnData::Bit(_) => "bit",
        ColumnData::String(_) => "string",
        ColumnData::Guid(_) => "uniqueidentifier",
        ColumnData::Binary(_) => "binary",
        ColumnData::Numeric(_) => "decimal",
        ColumnData::Xml(_) => "xml",
        _ => "date/time",
    }
}

/// Whether the server sorts a key column the way canonical keys compare (bytewise): integers,
/// dates and times, and text in a binary code-point collation do; other collations (case- or
/// accent-insensitive) and `uniqueidentifier` (which SQL Server orders by its last bytes first)
/// do not, and the merge-join diff needs both sides in the same order.
pub fn sorts_canonically(c: &Column, collation: Option<&str>) -> bool {
    match c.ty {
        ColumnType::Int | ColumnType::Date | ColumnType::Time | ColumnType::Timestamp | ColumnType::Bool => true,
        ColumnType::Text => collation.is_some_and(|k| k.to_ascii_uppercase().ends_with("_BIN2")),
        _ => false,
    }
}

#[cfg(test)]
#[path = "types_tests.rs"]
mod tests;
