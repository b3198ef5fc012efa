//! SQLite declared types → canonical column types, and stored values → canonical values.
//!
//! SQLite stores values dynamically, so the declared type decides the canonical type and each
//! stored value must fit it; a value that does not is an error naming the column, never a guess.

use crate::domain::schema::ColumnType;
use crate::domain::value::{Decimal, Value};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};
use rusqlite::types::ValueRef;

/// Maps a declared type to a canonical type and decimal scale; `None` if it has no mapping.
pub fn map_decl(decl: &str) -> Option<(ColumnType, Option<u32>)> {
    let d = decl.to_ascii_uppercase();
    let scale = || {
        let inner = d.split_once('(')?.1.split_once(')')?.0;
        inner
            .split_once(',')
            .and_then(|(_, s)| s.trim().parse().ok())
            .or(Some(0))
    };
    let has = |s: &str| d.contains(s);
    let ty = if has("BOOL") || d == "BIT" {
        ColumnType::Bool
    } else if has("INT") {
        ColumnType::Int
    } else if has("DEC") || has("NUMERIC") || has("MONEY") {
        return Some((ColumnType::Decimal, scale()));
    } else if has("DATETIMEOFFSET") || has("TIMESTAMPTZ") || has("WITH TIME ZONE") {
        ColumnType::Timestamptz
    } else if has("DATETIME") || has("TIMESTAMP") {
        ColumnType::Timestamp
    } else if has("DATE") {
        ColumnType::Date
    } else if has("TIME") {
        ColumnType::Time
    } else if has("REAL") || has("FLOA") || has("DOUB") {
        ColumnType::Float64
    } else if has("UUID") || has("UNIQUEIDENTIFIER") || has("GUID") {
        ColumnType::Uuid
    } else if has("JSON") {
        ColumnType::Json
    } else if has("BLOB") || has("BINARY") || has("BYTEA") {
        ColumnType::Bytes
    } else if has("CHAR") || has("CLOB") || has("TEXT") {
        ColumnType::Text
    } else {
        return None;
    };
    Some((ty, None))
}

fn shown(v: &ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => format!("integer {i}"),
        ValueRef::Real(f) => format!("real {f}"),
        ValueRef::Text(t) => {
            let s = String::from_utf8_lossy(t);
            let cut: String = s.chars().take(40).collect();
            format!("text `{cut}`")
        }
        ValueRef::Blob(b) => format!("blob of {} bytes", b.len()),
    }
}

fn text<'a>(v: &ValueRef<'a>) -> Option<&'a str> {
    match v {
        ValueRef::Text(t) => std::str::from_utf8(t).ok(),
        _ => None,
    }
}

fn parse_timestamp(s: &str) -> Option<NaiveDateTime> {
    [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
}

fn parse_timestamptz(s: &str) -> Option<DateTime<chrono::FixedOffset>> {
    DateTime::parse_from_rfc3339(s).ok().or_else(|| {
        [
            "%Y-%m-%d %H:%M:%S%.f%:z",
            "%Y-%m-%d %H:%M:%S%.f %:z",
            "%Y-%m-%d %H:%M:%S%.f%#z",
        ]
        .iter()
        .find_map(|f| DateTime::parse_from_str(s, f).ok())
    })
}

/// Converts one stored value to the column's canonical type, or says why it does not fit.
pub fn to_value(v: ValueRef<'_>, ty: ColumnType, scale: Option<u32>) -> Result<Value, String> {
    if let ValueRef::Null = v {
        return Ok(Value::Null);
    }
    let want = |what: &str| format!("expected {what}, found {}", shown(&v));
    let out = match ty {
        ColumnType::Bool => match v {
            ValueRef::Integer(0) => Value::Bool(false),
            ValueRef::Integer(1) => Value::Bool(true),
            _ => match text(&v) {
                Some("true") => Value::Bool(true),
                Some("false") => Value::Bool(false),
                _ => return Err(want("a boolean (0/1)")),
            },
        },
        ColumnType::Int => match v {
            ValueRef::Integer(i) => Value::Int(i),
            _ => Value::Int(
                text(&v)
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| want("an integer"))?,
            ),
        },
        ColumnType::Decimal => {
            let t = match v {
                ValueRef::Integer(i) => i.to_string(),
                ValueRef::Real(f) => format!("{f}"),
                _ => text(&v).ok_or_else(|| want("a decimal"))?.to_owned(),
            };
            Value::Decimal(
                Decimal::parse(&t, scale).map_err(|_| want(&format!("a decimal with scale {}", scale.unwrap_or(0))))?,
            )
        }
        ColumnType::Float64 | ColumnType::Float32 => match v {
            ValueRef::Real(f) => Value::F64(f),
            ValueRef::Integer(i) => Value::F64(i as f64),
            _ => Value::F64(match text(&v).ok_or_else(|| want("a number"))? {
                "NaN" => f64::NAN,
                "Infinity" | "Inf" => f64::INFINITY,
                "-Infinity" | "-Inf" => f64::NEG_INFINITY,
                t => t.parse().map_err(|_| want("a number"))?,
            }),
        },
        ColumnType::Text => match v {
            ValueRef::Integer(i) => Value::Text(i.to_string()),
            ValueRef::Real(f) => Value::Text(f.to_string()),
            _ => Value::Text(text(&v).ok_or_else(|| want("UTF-8 text"))?.to_owned()),
        },
        ColumnType::Bytes => match v {
            ValueRef::Blob(b) | ValueRef::Text(b) => Value::Bytes(b.to_vec()),
            _ => return Err(want("a blob")),
        },
        ColumnType::Date => Value::Date(
            text(&v)
                .and_then(|t| NaiveDate::parse_from_str(t, "%Y-%m-%d").ok())
                .ok_or_else(|| want("a date YYYY-MM-DD"))?,
        ),
        ColumnType::Time => Value::Time(
            text(&v)
                .and_then(|t| NaiveTime::parse_from_str(t, "%H:%M:%S%.f").ok())
                .ok_or_else(|| want("a time HH:MM:SS"))?,
        ),
        ColumnType::Timestamp => Value::Timestamp(
            text(&v)
                .and_then(parse_timestamp)
                .ok_or_else(|| want("a timestamp YYYY-MM-DD HH:MM:SS"))?,
        ),
        ColumnType::Timestamptz => Value::TimestampTz(
            text(&v)
                .and_then(parse_timestamptz)
                .ok_or_else(|| want("a timestamp with offset (RFC 3339)"))?,
        ),
        ColumnType::Uuid => match v {
            ValueRef::Blob(b) if b.len() == 16 => Value::Uuid(b.try_into().expect("16 bytes")),
            _ => Value::Uuid(
                text(&v)
                    .and_then(|t| uuid::Uuid::parse_str(t).ok())
                    .map(|u| *u.as_bytes())
                    .ok_or_else(|| want("a UUID"))?,
            ),
        },
        ColumnType::Json => Value::Json(text(&v).ok_or_else(|| want("JSON text"))?.to_owned()),
    };
    Ok(out)
}

/// Converts a key value back to what SQLite stores, for range bounds.
pub fn to_sql(v: &Value) -> Option<rusqlite::types::Value> {
    use rusqlite::types::Value as S;
    Some(match v {
        Value::Int(i) => S::Integer(*i),
        Value::Bool(b) => S::Integer(*b as i64),
        Value::Text(t) => S::Text(t.clone()),
        Value::Bytes(b) => S::Blob(b.clone()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_types_map() {
        assert_eq!(map_decl("INTEGER"), Some((ColumnType::Int, None)));
        assert_eq!(map_decl("bigint"), Some((ColumnType::Int, None)));
        assert_eq!(map_decl("DECIMAL(12, 2)"), Some((ColumnType::Decimal, Some(2))));
        assert_eq!(map_decl("NUMERIC(10)"), Some((ColumnType::Decimal, Some(0))));
        assert_eq!(map_decl("NUMERIC"), Some((ColumnType::Decimal, None)));
        assert_eq!(map_decl("VARCHAR(20)"), Some((ColumnType::Text, None)));
        assert_eq!(map_decl("BOOLEAN"), Some((ColumnType::Bool, None)));
        assert_eq!(map_decl("TIMESTAMPTZ"), Some((ColumnType::Timestamptz, None)));
        assert_eq!(map_decl("DATETIME"), Some((ColumnType::Timestamp, None)));
        assert_eq!(map_decl("DATE"), Some((ColumnType::Date, None)));
        assert_eq!(map_decl("BLOB"), Some((ColumnType::Bytes, None)));
        assert_eq!(map_decl("GEOMETRY"), None);
    }

    #[test]
    fn values_convert_or_say_why_not() {
        assert_eq!(
            to_value(ValueRef::Integer(1), ColumnType::Bool, None),
            Ok(Value::Bool(true))
        );
        assert_eq!(
            to_value(ValueRef::Real(12.3), ColumnType::Decimal, Some(2)).unwrap(),
            Value::Decimal(Decimal::parse("12.30", None).unwrap())
        );
        let e = to_value(ValueRef::Text(b"2024-13-45"), ColumnType::Date, None).unwrap_err();
        assert_eq!(e, "expected a date YYYY-MM-DD, found text `2024-13-45`");
        assert!(to_value(ValueRef::Text(b"x"), ColumnType::Int, None).is_err());
        assert_eq!(to_value(ValueRef::Null, ColumnType::Int, None), Ok(Value::Null));
        let tz = to_value(
            ValueRef::Text(b"2024-01-02 03:04:05.5+02:00"),
            ColumnType::Timestamptz,
            None,
        )
        .unwrap();
        let Value::TimestampTz(t) = tz else { panic!() };
        assert_eq!(t.offset().local_minus_utc(), 7200);
    }
}
