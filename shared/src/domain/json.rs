//! Lossless JSON for the push protocol (docs/push-protocol.md §Values).
//!
//! Integers within ±2^53 are numbers and beyond are strings; decimals are always strings (their
//! scale is the value's); bytes are base64; NaN and ±Inf are strings; timestamps are RFC 3339 with
//! their offset; JSON columns are their exact text as a string. Rows are written straight into a
//! byte buffer so a batch body is built once, without an intermediate tree.

use super::value::Value;
use base64::Engine;
use serde_json::ser::{CompactFormatter, Formatter};

const MAX_SAFE_INT: i64 = (1 << 53) - 1;

fn write_str(out: &mut String, s: &str) {
    // Most text needs no escaping: copy it as it is. Otherwise serde_json's escaping is the
    // reference (it escapes exactly `"`, `\\` and control characters).
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&serde_json::to_string(s).expect("strings always serialise"));
    }
}

fn write_f64(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("\"NaN\"");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "\"Infinity\"" } else { "\"-Infinity\"" });
    } else {
        // Shortest text that round-trips: serde_json's own formatter, into a stack buffer
        // rather than a string per value.
        push_formatted(out, |w| CompactFormatter.write_f64(w, f));
    }
}

fn write_f32(out: &mut String, f: f32) {
    if !f.is_finite() {
        return write_f64(out, f as f64);
    }
    push_formatted(out, |w| CompactFormatter.write_f32(w, f));
}

/// Appends what `write` formats into a stack buffer (a float's shortest form fits in 32 bytes).
fn push_formatted(out: &mut String, write: impl FnOnce(&mut std::io::Cursor<[u8; 32]>) -> std::io::Result<()>) {
    let mut w = std::io::Cursor::new([0u8; 32]);
    write(&mut w).expect("a float's text fits in 32 bytes");
    let n = w.position() as usize;
    out.push_str(std::str::from_utf8(&w.get_ref()[..n]).expect("formatters write ASCII"));
}

fn write_int(out: &mut String, i: i64) {
    out.push_str(itoa::Buffer::new().format(i));
}

/// Writes one value as JSON.
pub fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) if (-MAX_SAFE_INT..=MAX_SAFE_INT).contains(i) => write_int(out, *i),
        Value::Int(i) => {
            out.push('"');
            write_int(out, *i);
            out.push('"');
        }
        Value::Decimal(d) => {
            out.push('"');
            out.push_str(d.as_str());
            out.push('"');
        }
        Value::F32(f) => write_f32(out, *f),
        Value::F64(f) => write_f64(out, *f),
        Value::Text(s) | Value::Json(s) => write_str(out, s),
        Value::Bytes(b) => {
            out.push('"');
            base64::engine::general_purpose::STANDARD.encode_string(b, out);
            out.push('"');
        }
        Value::Date(d) => super::json_time::write_date(out, d),
        Value::Time(t) => super::json_time::write_time(out, t),
        Value::Timestamp(ts) => super::json_time::write_timestamp(out, ts),
        Value::TimestampTz(ts) => super::json_time::write_timestamp_tz(out, ts),
        Value::Uuid(u) => {
            out.push('"');
            out.push_str(
                uuid::Uuid::from_bytes(*u)
                    .hyphenated()
                    .encode_lower(&mut uuid::Uuid::encode_buffer()),
            );
            out.push('"');
        }
    }
}

/// Writes `{"col":value,...}` for the given columns and values, in column order.
pub fn write_object<'a>(
    out: &mut String,
    columns: impl IntoIterator<Item = &'a str>,
    values: impl IntoIterator<Item = &'a Value>,
) {
    out.push('{');
    for (i, (c, v)) in columns.into_iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_str(out, c);
        out.push(':');
        write_value(out, v);
    }
    out.push('}');
}

/// Reads a key value back from its protocol JSON, given its column type (for repairs, which
/// start from a batch body or a destination's key list). `None` if it does not fit the type.
pub fn key_value_from_json(v: &serde_json::Value, ty: super::schema::ColumnType) -> Option<Value> {
    use super::schema::ColumnType as T;
    use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime};
    let s = v.as_str();
    Some(match ty {
        T::Int => Value::Int(v.as_i64().or_else(|| s?.parse().ok())?),
        T::Bool => Value::Bool(v.as_bool()?),
        T::Text => Value::Text(s?.to_owned()),
        T::Bytes => Value::Bytes(base64::engine::general_purpose::STANDARD.decode(s?).ok()?),
        T::Uuid => Value::Uuid(*uuid::Uuid::parse_str(s?).ok()?.as_bytes()),
        T::Date => Value::Date(NaiveDate::parse_from_str(s?, "%Y-%m-%d").ok()?),
        T::Time => Value::Time(NaiveTime::parse_from_str(s?, "%H:%M:%S%.f").ok()?),
        T::Timestamp => Value::Timestamp(NaiveDateTime::parse_from_str(s?, "%Y-%m-%dT%H:%M:%S%.f").ok()?),
        T::Timestamptz => Value::TimestampTz(DateTime::parse_from_rfc3339(s?).ok()?),
        T::Decimal | T::Float32 | T::Float64 | T::Json => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::value::Decimal;
    use chrono::{DateTime, NaiveDate};

    #[test]
    fn text_is_escaped_exactly_as_serde_json_does() {
        for t in [
            "plain",
            "",
            "ü 😀 \u{2028}",
            "q\"uote",
            "back\\slash",
            "tab\tnl\n",
            "\u{0}\u{1f}\u{7f}",
            "</script>",
        ] {
            let mut s = String::new();
            write_str(&mut s, t);
            assert_eq!(s, serde_json::to_string(t).unwrap(), "{t:?}");
        }
    }

    fn j(v: Value) -> String {
        let mut s = String::new();
        write_value(&mut s, &v);
        s
    }

    #[test]
    fn values_are_lossless() {
        assert_eq!(j(Value::Int(9_007_199_254_740_991)), "9007199254740991");
        assert_eq!(j(Value::Int(9_007_199_254_740_992)), "\"9007199254740992\"");
        assert_eq!(j(Value::Int(i64::MIN)), "\"-9223372036854775808\"");
        assert_eq!(j(Value::Decimal(Decimal::parse("1.50", None).unwrap())), "\"1.50\"");
        assert_eq!(j(Value::F64(0.1)), "0.1");
        assert_eq!(j(Value::F64(1e300)), "1e+300");
        assert_eq!(j(Value::F64(f64::NAN)), "\"NaN\"");
        assert_eq!(j(Value::F64(f64::NEG_INFINITY)), "\"-Infinity\"");
        assert_eq!(j(Value::F32(0.1)), "0.1");
        assert_eq!(j(Value::Bytes(vec![0, 255])), "\"AP8=\"");
        assert_eq!(j(Value::Text("a\"\n☃".into())), "\"a\\\"\\n☃\"");
        let ts = DateTime::parse_from_rfc3339("2024-01-02T03:04:05.250+05:30").unwrap();
        assert_eq!(j(Value::TimestampTz(ts)), "\"2024-01-02T03:04:05.250+05:30\"");
        assert_eq!(j(Value::Timestamp(ts.naive_local())), "\"2024-01-02T03:04:05.250\"");
        let d = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        assert_eq!(j(Value::Date(d)), "\"2024-02-29\"");
        assert_eq!(j(Value::Uuid([0xAB; 16])), "\"abababab-abab-abab-abab-abababababab\"");
        assert_eq!(j(Value::Json("{\"a\":1}".into())), "\"{\\\"a\\\":1}\"");
    }

    #[test]
    fn numbers_are_written_exactly_as_serde_json_writes_them() {
        for i in [0, 1, -1, 42, -9_007_199_254_740_991, 9_007_199_254_740_991, 1 << 40] {
            assert_eq!(j(Value::Int(i)), serde_json::to_string(&i).unwrap());
        }
        for f in [
            0.0,
            -0.0,
            0.1,
            1.0 / 3.0,
            -2.5e-308,
            1e300,
            123456789.0,
            f64::MAX,
            f64::MIN_POSITIVE,
        ] {
            assert_eq!(j(Value::F64(f)), serde_json::to_string(&f).unwrap(), "{f:e}");
        }
        for f in [0.0f32, 0.1, 1.0 / 3.0, -1.5e-38, f32::MAX, 16_777_217.0] {
            assert_eq!(j(Value::F32(f)), serde_json::to_string(&f).unwrap(), "{f:e}");
        }
        assert_eq!(j(Value::F32(f32::INFINITY)), "\"Infinity\"");
        let u = uuid::Uuid::new_v4();
        assert_eq!(j(Value::Uuid(*u.as_bytes())), format!("\"{}\"", u.hyphenated()));
    }

    #[test]
    fn floats_round_trip_through_serde() {
        for f in [0.1, 1.0 / 3.0, -2.5e-308, 123456789.0] {
            let back: f64 = serde_json::from_str(&j(Value::F64(f))).unwrap();
            assert_eq!(back.to_bits(), f.to_bits());
        }
    }

    #[test]
    fn key_values_read_back_from_their_json() {
        use crate::domain::schema::ColumnType as T;
        let cases = [
            (Value::Int(9_007_199_254_740_993), T::Int),
            (Value::Int(-5), T::Int),
            (Value::Text("é\"x".into()), T::Text),
            (Value::Bytes(vec![0, 1, 255]), T::Bytes),
            (Value::Uuid([7; 16]), T::Uuid),
            (Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()), T::Date),
            (
                Value::TimestampTz(DateTime::parse_from_rfc3339("2024-01-02T03:04:05.25+05:30").unwrap()),
                T::Timestamptz,
            ),
            (Value::Bool(true), T::Bool),
        ];
        for (v, ty) in cases {
            let json: serde_json::Value = serde_json::from_str(&j(v.clone())).unwrap();
            assert_eq!(key_value_from_json(&json, ty), Some(v));
        }
        assert_eq!(key_value_from_json(&serde_json::json!("x"), T::Int), None);
    }

    #[test]
    fn objects_keep_column_order() {
        let mut s = String::new();
        write_object(&mut s, ["b", "a"], &[Value::Int(1), Value::Null]);
        assert_eq!(s, "{\"b\":1,\"a\":null}");
    }
}
