//! Every SQL Server type through `map_type` and `read_value`, against golden canonical JSON and,
//! where PostgreSQL has the same type, the value PostgreSQL's mapping produces.

use super::*;
use crate::domain::encoding::row_hash;
use crate::domain::json::write_value;
use std::borrow::Cow;
use tiberius::numeric::Numeric;
use tiberius::time::{Date, DateTime as SqlDateTime, DateTime2, DateTimeOffset, SmallDateTime, Time};
use tiberius::xml::XmlData;
use tiberius::Uuid;

/// time(7) counts 100 ns increments: this many per second.
const TICKS: u64 = 10_000_000;

fn column(native: &str, scale: u8) -> Column {
    let (ty, scale) = map_type(native, scale).unwrap_or_else(|| panic!("{native} should map"));
    Column {
        name: "c".into(),
        ty,
        scale,
        native: native.into(),
    }
}

/// The canonical JSON of a wire value read as a column of `native` type.
fn json(native: &str, scale: u8, data: ColumnData<'static>) -> String {
    let v = read_value(&data, &column(native, scale)).unwrap();
    let mut s = String::new();
    write_value(&mut s, &v);
    s
}

fn days_since(year0: i32, y: i32, m: u32, d: u32) -> i64 {
    (NaiveDate::from_ymd_opt(y, m, d).unwrap() - NaiveDate::from_ymd_opt(year0, 1, 1).unwrap()).num_days()
}

#[test]
fn integers_bits_and_floats() {
    assert_eq!(json("bit", 0, ColumnData::Bit(Some(true))), "true");
    assert_eq!(json("tinyint", 0, ColumnData::U8(Some(255))), "255");
    assert_eq!(json("smallint", 0, ColumnData::I16(Some(-32768))), "-32768");
    assert_eq!(json("int", 0, ColumnData::I32(Some(i32::MIN))), "-2147483648");
    // Beyond ±2^53 an integer travels as a string (docs/push-protocol.md).
    assert_eq!(
        json("bigint", 0, ColumnData::I64(Some(i64::MAX))),
        "\"9223372036854775807\""
    );
    assert_eq!(json("real", 0, ColumnData::F32(Some(0.1))), "0.1");
    assert_eq!(json("float", 0, ColumnData::F64(Some(0.1))), "0.1");
    assert_eq!(json("float", 0, ColumnData::F64(Some(f64::NAN))), "\"NaN\"");
}

#[test]
fn decimals_are_exact_to_38_digits() {
    let n = |v: i128, s: u8| ColumnData::Numeric(Some(Numeric::new_with_scale(v, s)));
    assert_eq!(json("decimal(12,2)", 2, n(1230, 2)), "\"12.30\"");
    assert_eq!(json("numeric(5,4)", 4, n(-1, 4)), "\"-0.0001\"");
    let max = 10i128.pow(38) - 1;
    assert_eq!(json("decimal(38,0)", 0, n(max, 0)), format!("\"{max}\""));
    assert_eq!(
        json("decimal(38,38)", 38, n(-max, 38)),
        "\"-0.99999999999999999999999999999999999999\""
    );
    assert_eq!(json("decimal(10,0)", 0, n(0, 0)), "\"0\"");
    assert_eq!(numeric_text(5, 3), "0.005");
    assert_eq!(numeric_text(-123456, 2), "-1234.56");
}

#[test]
fn money_is_read_as_an_exact_decimal() {
    // money arrives from tiberius as f64; the select list converts it on the server first.
    let money = column("money", 4);
    assert_eq!((money.ty, money.scale), (ColumnType::Decimal, Some(4)));
    assert_eq!(select_expr(&money), "CAST([c] AS decimal(19,4)) AS [c]");
    let n = ColumnData::Numeric(Some(Numeric::new_with_scale(9_223_372_036_854_775_807, 4)));
    assert_eq!(json("money", 4, n), "\"922337203685477.5807\"");
    let small = column("smallmoney", 4);
    assert_eq!(select_expr(&small), "CAST([c] AS decimal(10,4)) AS [c]");
    let n = ColumnData::Numeric(Some(Numeric::new_with_scale(-2_147_483_648, 4)));
    assert_eq!(json("smallmoney", 4, n), "\"-214748.3648\"");
}

#[test]
fn text_of_every_kind_including_non_bmp() {
    let s = |t: &str| ColumnData::String(Some(Cow::Owned(t.to_owned())));
    for native in [
        "char(3)",
        "varchar(max)",
        "nchar(2)",
        "nvarchar(max)",
        "text",
        "ntext",
        "sysname",
    ] {
        assert_eq!(column(native, 0).ty, ColumnType::Text, "{native}");
    }
    assert_eq!(json("nvarchar(max)", 0, s("Zoë 😀 \"q\"")), "\"Zoë 😀 \\\"q\\\"\"");
    assert_eq!(json("char(3)", 0, s("ab ")), "\"ab \"", "trailing spaces are kept");
    let xml = ColumnData::Xml(Some(Cow::Owned(XmlData::new("<a b=\"1\">x</a>"))));
    assert_eq!(json("xml", 0, xml), "\"<a b=\\\"1\\\">x</a>\"");
    let j = column("json", 0);
    assert_eq!(select_expr(&j), "CAST([c] AS nvarchar(max)) AS [c]");
    // A document travels as its exact text (docs/push-protocol.md), like PostgreSQL's json.
    assert_eq!(json("json", 0, s("{\"a\":[1,2]}")), "\"{\\\"a\\\":[1,2]}\"");
}

#[test]
fn binary_kinds_are_bytes() {
    let b = |v: &[u8]| ColumnData::Binary(Some(Cow::Owned(v.to_vec())));
    for native in ["binary(4)", "varbinary(max)", "image", "timestamp", "rowversion"] {
        assert_eq!(column(native, 0).ty, ColumnType::Bytes, "{native}");
        assert_eq!(select_expr(&column(native, 0)), "[c]");
    }
    assert_eq!(json("varbinary(max)", 0, b(&[0, 255, 16])), "\"AP8Q\"");
    assert_eq!(
        json("rowversion", 0, b(&[0, 0, 0, 0, 0, 0, 7, 209])),
        "\"AAAAAAAAB9E=\""
    );
    for clr in ["hierarchyid", "geography", "geometry"] {
        assert_eq!(select_expr(&column(clr, 0)), "CAST([c] AS varbinary(max)) AS [c]");
    }
}

#[test]
fn uniqueidentifier_keeps_its_canonical_text() {
    let u = Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap();
    assert_eq!(
        json("uniqueidentifier", 0, ColumnData::Guid(Some(u))),
        "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""
    );
}

#[test]
fn dates_and_times_keep_their_precision_and_offset() {
    let date = Date::new(days_since(1, 2024, 2, 29) as u32);
    assert_eq!(json("date", 0, ColumnData::Date(Some(date))), "\"2024-02-29\"");
    // time(7): 100 ns increments.
    let t = Time::new(86_399 * TICKS + 9_999_999, 7);
    assert_eq!(json("time(7)", 0, ColumnData::Time(Some(t))), "\"23:59:59.999999900\"");
    let dt2 = DateTime2::new(date, Time::new(45_296 * TICKS + 1_234_567, 7));
    assert_eq!(
        json("datetime2(7)", 0, ColumnData::DateTime2(Some(dt2))),
        "\"2024-02-29T12:34:56.123456700\""
    );
    // datetime counts 1/300 s: 12:00:00 plus one tick is exactly 3.333… ms.
    let dt = SqlDateTime::new(days_since(1900, 2024, 2, 29) as i32, 12 * 3600 * 300 + 1);
    assert_eq!(
        json("datetime", 0, ColumnData::DateTime(Some(dt))),
        "\"2024-02-29T12:00:00.003333333\""
    );
    let small = SmallDateTime::new(days_since(1900, 1999, 12, 31) as u16, 23 * 60 + 59);
    assert_eq!(
        json("smalldatetime", 0, ColumnData::SmallDateTime(Some(small))),
        "\"1999-12-31T23:59:00\""
    );
    // datetimeoffset travels as UTC plus the offset in minutes; the offset is part of the value.
    let utc = DateTime2::new(
        Date::new(days_since(1, 2025, 3, 1) as u32),
        Time::new(8 * 3600 * TICKS, 7),
    );
    let dto = DateTimeOffset::new(utc, 120);
    assert_eq!(
        json("datetimeoffset(7)", 0, ColumnData::DateTimeOffset(Some(dto))),
        "\"2025-03-01T10:00:00+02:00\""
    );
}

#[test]
fn null_of_every_type_is_null() {
    let nulls: Vec<(&str, ColumnData<'static>)> = vec![
        ("bit", ColumnData::Bit(None)),
        ("tinyint", ColumnData::U8(None)),
        ("smallint", ColumnData::I16(None)),
        ("int", ColumnData::I32(None)),
        ("bigint", ColumnData::I64(None)),
        ("decimal(10,2)", ColumnData::Numeric(None)),
        ("money", ColumnData::Numeric(None)),
        ("real", ColumnData::F32(None)),
        ("float", ColumnData::F64(None)),
        ("nvarchar(max)", ColumnData::String(None)),
        ("xml", ColumnData::Xml(None)),
        ("varbinary(max)", ColumnData::Binary(None)),
        ("uniqueidentifier", ColumnData::Guid(None)),
        ("date", ColumnData::Date(None)),
        ("time(7)", ColumnData::Time(None)),
        ("datetime", ColumnData::DateTime(None)),
        ("smalldatetime", ColumnData::SmallDateTime(None)),
        ("datetime2(7)", ColumnData::DateTime2(None)),
        ("datetimeoffset(7)", ColumnData::DateTimeOffset(None)),
        ("json", ColumnData::String(None)),
        ("geography", ColumnData::Binary(None)),
    ];
    for (native, data) in nulls {
        assert_eq!(read_value(&data, &column(native, 2)).unwrap(), Value::Null, "{native}");
    }
}

#[test]
fn refused_types_say_why_and_mismatches_are_errors() {
    assert!(map_type("sql_variant", 0).is_none());
    assert!(unsupported_hint("sql_variant").contains("CONVERT"));
    assert!(map_type("vector(3)", 0).is_none());
    let e = read_value(&ColumnData::String(Some("x".into())), &column("int", 0)).unwrap_err();
    assert!(e.to_string().contains("a string value arrived"), "{e}");
}

/// The same logical row from SQL Server's wire values and from the values PostgreSQL's and
/// SQLite's mappings produce (tests/postgres_source.rs checks those two agree) hashes the same.
#[test]
fn the_same_logical_row_hashes_as_on_other_backends() {
    let cols = [
        ("bigint", 0),
        ("nvarchar(50)", 0),
        ("decimal(10,2)", 2),
        ("datetimeoffset(7)", 0),
        ("bit", 0),
        ("varbinary(max)", 0),
        ("date", 0),
        ("float", 0),
        ("uniqueidentifier", 0),
        ("datetime2(7)", 0),
        ("time(7)", 0),
    ];
    let d = Date::new(days_since(1, 2025, 3, 1) as u32);
    let wire: Vec<ColumnData<'static>> = vec![
        ColumnData::I64(Some(1)),
        ColumnData::String(Some("Zoë".into())),
        ColumnData::Numeric(Some(Numeric::new_with_scale(1230, 2))),
        ColumnData::DateTimeOffset(Some(DateTimeOffset::new(
            DateTime2::new(d, Time::new(36_000 * TICKS + 5_000_000, 7)),
            0,
        ))),
        ColumnData::Bit(Some(true)),
        ColumnData::Binary(Some(vec![0, 255, 16].into())),
        ColumnData::Date(Some(Date::new(days_since(1, 2024, 2, 29) as u32))),
        ColumnData::F64(Some(0.1)),
        ColumnData::Guid(Some(Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap())),
        ColumnData::DateTime2(Some(DateTime2::new(
            Date::new(days_since(1, 2025, 1, 1) as u32),
            Time::new(2_500_000, 7),
        ))),
        ColumnData::Time(Some(Time::new(45_296 * TICKS + 5_000_000, 7))),
    ];
    let from_mssql: Vec<Value> = wire
        .iter()
        .zip(cols)
        .map(|(w, (native, scale))| read_value(w, &column(native, scale)).unwrap())
        .collect();
    let utc = FixedOffset::east_opt(0).unwrap();
    let ts = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap();
    // What tokio-postgres and our PostgreSQL mapping give for the same row (bigint, text,
    // numeric(10,2), timestamptz, boolean, bytea, date, double, uuid, timestamp, time).
    let from_pg = vec![
        Value::Int(1),
        Value::Text("Zoë".into()),
        Value::Decimal(Decimal::parse("12.30", Some(2)).unwrap()),
        Value::TimestampTz(ts("2025-03-01 10:00:00.5").and_utc().with_timezone(&utc)),
        Value::Bool(true),
        Value::Bytes(vec![0, 255, 16]),
        Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
        Value::F64(0.1),
        Value::Uuid(
            *Uuid::parse_str("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
                .unwrap()
                .as_bytes(),
        ),
        Value::Timestamp(ts("2025-01-01 00:00:00.25")),
        Value::Time(NaiveTime::parse_from_str("12:34:56.5", "%H:%M:%S%.f").unwrap()),
    ];
    assert_eq!(from_mssql, from_pg);
    assert_eq!(
        row_hash(&from_mssql, &mut Vec::new()),
        row_hash(&from_pg, &mut Vec::new())
    );
}
