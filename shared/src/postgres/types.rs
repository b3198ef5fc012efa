//! PostgreSQL types → canonical column types, the select expression that reads each losslessly,
//! and row values → canonical values.
//!
//! Types whose binary form has no exact Rust counterpart are read as text computed by the server:
//! `numeric` (exact digits and scale), `json`/`jsonb` (the document), `interval` (ISO 8601), and
//! arrays (`to_json`, so nesting and NULL elements survive).

use crate::domain::ident::quote;
use crate::domain::schema::{Column, ColumnType};
use crate::domain::value::{Decimal, Value};
use crate::errors::SourceError;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Utc};
use tokio_postgres::types::{Kind, Type};

/// The canonical type and display name of a server type; `None` if it has no lossless mapping.
pub fn map_type(ty: &Type, typmod: i32) -> Option<(ColumnType, Option<u32>, String)> {
    if let Kind::Array(elem) = ty.kind() {
        return Some((ColumnType::Json, None, format!("{}[]", elem.name())));
    }
    let scale = (typmod >= 4).then(|| ((typmod - 4) & 0xFFFF) as u32);
    let ct = match *ty {
        Type::BOOL => ColumnType::Bool,
        Type::INT2 | Type::INT4 | Type::INT8 => ColumnType::Int,
        Type::NUMERIC => return Some((ColumnType::Decimal, scale, "numeric".into())),
        Type::FLOAT4 => ColumnType::Float32,
        Type::FLOAT8 => ColumnType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::INTERVAL => ColumnType::Text,
        Type::BYTEA => ColumnType::Bytes,
        Type::DATE => ColumnType::Date,
        Type::TIME => ColumnType::Time,
        Type::TIMESTAMP => ColumnType::Timestamp,
        Type::TIMESTAMPTZ => ColumnType::Timestamptz,
        Type::UUID => ColumnType::Uuid,
        Type::JSON | Type::JSONB => ColumnType::Json,
        _ => return None,
    };
    Some((ct, None, ty.name().to_owned()))
}

/// How the read query selects a column so that [`read_value`] gets a lossless value.
pub fn select_expr(c: &Column) -> String {
    let q = quote(&c.name);
    if c.native.ends_with("[]") {
        format!("to_json({q})::text")
    } else if matches!(c.native.as_str(), "numeric" | "json" | "jsonb" | "interval") {
        format!("{q}::text")
    } else {
        q
    }
}

fn bad(c: &Column, e: impl std::fmt::Display) -> SourceError {
    SourceError::BadValue {
        column: c.name.clone(),
        detail: e.to_string(),
    }
}

/// Reads column `i` of a row selected with [`select_expr`].
pub fn read_value(row: &tokio_postgres::Row, i: usize, c: &Column) -> Result<Value, SourceError> {
    let mut v = Value::Null;
    read_into(row, i, c, &mut v)?;
    Ok(v)
}

/// [`read_value`] into a slot: each value is stored where it stays. Returned through `Option`
/// and `Result`, every value was copied through stack temporaries whose unaligned partial
/// reloads stalled on store forwarding (most of the reader's own samples in a profile).
#[inline]
pub fn read_into(row: &tokio_postgres::Row, i: usize, c: &Column, slot: &mut Value) -> Result<(), SourceError> {
    macro_rules! get {
        ($t:ty) => {
            row.try_get::<_, Option<$t>>(i).map_err(|e| bad(c, e))?
        };
    }
    // Each arm stores its value in the slot itself (see above).
    macro_rules! put {
        ($t:ty, $make:expr) => {
            *slot = match get!($t) {
                Some(v) => $make(v),
                None => Value::Null,
            }
        };
    }
    match c.ty {
        ColumnType::Bool => put!(bool, Value::Bool),
        ColumnType::Int => match *row.columns()[i].type_() {
            Type::INT2 => put!(i16, |v: i16| Value::Int(v.into())),
            Type::INT4 => put!(i32, |v: i32| Value::Int(v.into())),
            _ => put!(i64, Value::Int),
        },
        ColumnType::Decimal => {
            *slot = match get!(&str) {
                None => Value::Null,
                Some(t) => Value::Decimal(
                    Decimal::parse(t, c.scale).map_err(|_| bad(c, format!("numeric `{t}` is not a finite decimal")))?,
                ),
            }
        }
        ColumnType::Float32 => put!(f32, Value::F32),
        ColumnType::Float64 => put!(f64, Value::F64),
        ColumnType::Text => put!(String, Value::Text),
        ColumnType::Bytes => put!(Vec<u8>, Value::Bytes),
        ColumnType::Date => put!(NaiveDate, Value::Date),
        ColumnType::Time => put!(NaiveTime, Value::Time),
        ColumnType::Timestamp => put!(NaiveDateTime, Value::Timestamp),
        ColumnType::Timestamptz => put!(DateTime<Utc>, |t: DateTime<Utc>| Value::TimestampTz(
            t.with_timezone(&FixedOffset::east_opt(0).expect("UTC"))
        )),
        ColumnType::Uuid => put!(uuid::Uuid, |u: uuid::Uuid| Value::Uuid(*u.as_bytes())),
        ColumnType::Json => put!(String, Value::Json),
    }
    Ok(())
}

/// A key value as a query parameter, with the cast that makes its type explicit.
pub fn key_param(v: &Value) -> Option<(Box<dyn tokio_postgres::types::ToSql + Send + Sync>, &'static str)> {
    Some(match v {
        Value::Int(i) => (Box::new(*i), "int8"),
        Value::Text(t) => (Box::new(t.clone()), "text"),
        Value::Bytes(b) => (Box::new(b.clone()), "bytea"),
        Value::Bool(b) => (Box::new(*b), "bool"),
        Value::Uuid(u) => (Box::new(uuid::Uuid::from_bytes(*u)), "uuid"),
        Value::Date(d) => (Box::new(*d), "date"),
        Value::Time(t) => (Box::new(*t), "time"),
        Value::Timestamp(t) => (Box::new(*t), "timestamp"),
        Value::TimestampTz(t) => (Box::new(t.with_timezone(&Utc)), "timestamptz"),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_map() {
        assert_eq!(map_type(&Type::INT4, -1).unwrap().0, ColumnType::Int);
        // numeric(12,2): typmod = (12 << 16 | 2) + 4
        assert_eq!(map_type(&Type::NUMERIC, (12 << 16 | 2) + 4).unwrap().1, Some(2));
        assert_eq!(map_type(&Type::NUMERIC, -1).unwrap().1, None);
        assert_eq!(
            map_type(&Type::INT4_ARRAY, -1).unwrap(),
            (ColumnType::Json, None, "int4[]".into())
        );
        assert_eq!(map_type(&Type::INTERVAL, -1).unwrap().0, ColumnType::Text);
        assert!(map_type(&Type::MONEY, -1).is_none());
        assert!(map_type(&Type::INET, -1).is_none());
    }
}
