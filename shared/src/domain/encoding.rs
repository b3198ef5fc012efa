//! Canonical encoding of rows and the 128-bit row hash (spec: `docs/canonical-encoding.md`).
//!
//! Every value is a one-byte type tag followed by a fixed-width or length-prefixed payload, so a
//! row's bytes are unambiguous across column boundaries (`("ab","c")` ≠ `("a","bc")`) and across
//! types (NULL ≠ `''` ≠ `'NULL'`). The hash is XXH3-128 over a header that carries the encoding
//! version, then the encoded values: changing either is a controlled resync, never a silent one.

use super::value::Value;
use chrono::{Datelike, Timelike};
use xxhash_rust::xxh3::Xxh3;

/// Version of the canonical encoding; part of every row hash.
pub const ENCODING_VERSION: u8 = 1;

/// Name of the row hash algorithm, as recorded in the spec and in run history.
pub const HASH_ALGORITHM: &str = "xxh3-128";

/// A row's 128-bit hash, big-endian.
pub type RowHash = [u8; 16];

/// A hash staging records for a key whose destination state is unknown (repair): it matches no
/// row, so the next diff re-sends the key — as an update if the source has it, else a delete.
pub const INVALID_HASH: RowHash = [0; 16];

mod tag {
    pub const NULL: u8 = 0x00;
    pub const BOOL: u8 = 0x01;
    pub const INT: u8 = 0x02;
    pub const DECIMAL: u8 = 0x03;
    pub const F64: u8 = 0x04;
    pub const F32: u8 = 0x05;
    pub const TEXT: u8 = 0x06;
    pub const BYTES: u8 = 0x07;
    pub const DATE: u8 = 0x08;
    pub const TIME: u8 = 0x09;
    pub const TIMESTAMP: u8 = 0x0A;
    pub const TIMESTAMPTZ: u8 = 0x0B;
    pub const UUID: u8 = 0x0C;
    pub const JSON: u8 = 0x0D;
}

fn put_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Appends the canonical encoding of one value.
pub fn encode_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(tag::NULL),
        Value::Bool(b) => out.extend_from_slice(&[tag::BOOL, *b as u8]),
        Value::Int(i) => {
            out.push(tag::INT);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Value::Decimal(d) => {
            out.push(tag::DECIMAL);
            put_len_prefixed(out, d.as_str().as_bytes());
        }
        Value::F64(f) => {
            out.push(tag::F64);
            // One NaN: payload bits of NaNs differ between databases but not logically.
            let bits = if f.is_nan() { f64::NAN.to_bits() } else { f.to_bits() };
            out.extend_from_slice(&bits.to_be_bytes());
        }
        Value::F32(f) => {
            out.push(tag::F32);
            let bits = if f.is_nan() { f32::NAN.to_bits() } else { f.to_bits() };
            out.extend_from_slice(&bits.to_be_bytes());
        }
        Value::Text(s) => {
            out.push(tag::TEXT);
            put_len_prefixed(out, s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(tag::BYTES);
            put_len_prefixed(out, b);
        }
        Value::Date(d) => {
            out.push(tag::DATE);
            out.extend_from_slice(&d.num_days_from_ce().to_be_bytes());
        }
        Value::Time(t) => {
            out.push(tag::TIME);
            out.extend_from_slice(&t.num_seconds_from_midnight().to_be_bytes());
            out.extend_from_slice(&t.nanosecond().to_be_bytes());
        }
        Value::Timestamp(ts) => {
            out.push(tag::TIMESTAMP);
            let utc = ts.and_utc();
            out.extend_from_slice(&utc.timestamp().to_be_bytes());
            out.extend_from_slice(&utc.timestamp_subsec_nanos().to_be_bytes());
        }
        Value::TimestampTz(ts) => {
            out.push(tag::TIMESTAMPTZ);
            out.extend_from_slice(&ts.timestamp().to_be_bytes());
            out.extend_from_slice(&ts.timestamp_subsec_nanos().to_be_bytes());
            out.extend_from_slice(&ts.offset().local_minus_utc().to_be_bytes());
        }
        Value::Uuid(u) => {
            out.push(tag::UUID);
            out.extend_from_slice(u);
        }
        Value::Json(j) => {
            out.push(tag::JSON);
            put_len_prefixed(out, j.as_bytes());
        }
    }
}

/// Encodes a whole row: header (magic `SC`, version, column count), then each value.
pub fn encode_row(out: &mut Vec<u8>, values: &[Value]) {
    out.extend_from_slice(&[b'S', b'C', ENCODING_VERSION]);
    out.extend_from_slice(&(values.len() as u32).to_be_bytes());
    for v in values {
        encode_value(out, v);
    }
}

/// Hashes a row over its canonical encoding; `scratch` is reused between rows to avoid allocation.
pub fn row_hash(values: &[Value], scratch: &mut Vec<u8>) -> RowHash {
    scratch.clear();
    encode_row(scratch, values);
    let mut h = Xxh3::new();
    h.update(scratch);
    h.digest128().to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::value::Decimal;
    use chrono::{DateTime, NaiveDate};

    fn hash(values: &[Value]) -> String {
        hex::encode(row_hash(values, &mut Vec::new()))
    }

    fn enc(values: &[Value]) -> String {
        let mut out = Vec::new();
        encode_row(&mut out, values);
        hex::encode(out)
    }

    #[test]
    fn golden_encodings() {
        // These vectors are copied into docs/canonical-encoding.md; changing one is a resync.
        assert_eq!(enc(&[]), "53430100000000");
        assert_eq!(enc(&[Value::Null]), "5343010000000100");
        assert_eq!(
            enc(&[Value::Int(1), Value::Text("ab".into())]),
            "5343010000000202000000000000000106000000026162"
        );
        assert_eq!(
            enc(&[Value::Decimal(Decimal::parse("-12.30", None).unwrap())]),
            "534301000000010300000006".to_owned() + &hex::encode("-12.30")
        );
        assert_eq!(
            enc(&[Value::Bool(true), Value::F64(1.5)]),
            "53430100000002010104".to_owned() + "3ff8000000000000"
        );
        let d = NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        assert_eq!(enc(&[Value::Date(d)]), "5343010000000108000b4681");
        let tz = DateTime::parse_from_rfc3339("2024-01-02T03:04:05.5+02:00").unwrap();
        assert_eq!(
            enc(&[Value::TimestampTz(tz)]),
            "534301000000010b00000000659361051dcd650000001c20"
        );
    }

    #[test]
    fn golden_hashes() {
        assert_eq!(hash(&[]), "b655c9ff5a2eb90556ef250a1142ac77");
        assert_eq!(
            hash(&[Value::Int(1), Value::Text("ab".into())]),
            "466e43dedd04c6c8348a0ba395c8f274"
        );
    }

    #[test]
    fn rows_that_must_differ_do() {
        let distinct = [
            vec![Value::Null],
            vec![Value::Text(String::new())],
            vec![Value::Text("NULL".into())],
            vec![Value::Bytes(Vec::new())],
            vec![Value::Int(0)],
            vec![Value::Bool(false)],
            vec![Value::F64(0.0)],
            vec![Value::Json(String::new())],
        ];
        let hashes: std::collections::HashSet<_> = distinct.iter().map(|r| hash(r)).collect();
        assert_eq!(hashes.len(), distinct.len());
        assert_ne!(
            hash(&[Value::Text("ab".into()), Value::Text("c".into())]),
            hash(&[Value::Text("a".into()), Value::Text("bc".into())])
        );
        assert_ne!(hash(&[Value::Null, Value::Int(1)]), hash(&[Value::Int(1), Value::Null]));
        assert_ne!(hash(&[Value::Null]), hash(&[Value::Null, Value::Null]));
        let a = Decimal::parse("1.5", Some(1)).unwrap();
        let b = Decimal::parse("1.50", Some(2)).unwrap();
        assert_ne!(hash(&[Value::Decimal(a)]), hash(&[Value::Decimal(b)]));
        let plus1 = DateTime::parse_from_rfc3339("2024-01-01T01:00:00+01:00").unwrap();
        let utc = DateTime::parse_from_rfc3339("2024-01-01T00:00:00+00:00").unwrap();
        assert_ne!(hash(&[Value::TimestampTz(plus1)]), hash(&[Value::TimestampTz(utc)]));
    }

    #[test]
    fn nan_payloads_hash_alike() {
        let other_nan = f64::from_bits(0x7ff8_0000_0000_0001);
        assert!(other_nan.is_nan());
        assert_eq!(hash(&[Value::F64(f64::NAN)]), hash(&[Value::F64(other_nan)]));
    }
}
