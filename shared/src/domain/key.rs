//! Order-preserving key encoding: staging keeps each key as bytes whose `memcmp` order equals the
//! source's key order, so any store can select a chunk's key range and stream it in key order.
//!
//! Sources order keys the same way (integers numerically, text and bytes by binary/code-point
//! order, dates and timestamps chronologically); the snapshot stage checks that the source really
//! returned ascending keys and fails the chunk loudly if not (e.g. a case-insensitive collation).

use super::value::Value;
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// Why a key could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A key column holds NULL; a key must identify its row.
    #[error("key column `{column}` is NULL")]
    Null {
        /// Name of the key column.
        column: String,
    },
    /// The key column's type has no stable order across databases.
    #[error("key column `{column}` has type {type_name}, which cannot be a key (use integer, text, bytes, uuid, date, time or timestamp)")]
    Unsupported {
        /// Name of the key column.
        column: String,
        /// Canonical type name.
        type_name: &'static str,
    },
    /// Stored key bytes are corrupt.
    #[error("stored key bytes are malformed at offset {offset}")]
    Malformed {
        /// Byte offset of the problem.
        offset: usize,
    },
}

const T_BOOL: u8 = 0x01;
const T_INT: u8 = 0x02;
const T_TEXT: u8 = 0x06;
const T_BYTES: u8 = 0x07;
const T_DATE: u8 = 0x08;
const T_TIME: u8 = 0x09;
const T_TIMESTAMP: u8 = 0x0A;
const T_TIMESTAMPTZ: u8 = 0x0B;
const T_UUID: u8 = 0x0C;

fn put_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

fn flip_i64(i: i64) -> [u8; 8] {
    ((i as u64) ^ (1 << 63)).to_be_bytes()
}

/// Encodes a key tuple; `columns` names the key columns for error messages.
pub fn encode_key(out: &mut Vec<u8>, values: &[&Value], columns: &[String]) -> Result<(), KeyError> {
    for (v, col) in values.iter().zip(columns) {
        match v {
            Value::Null => return Err(KeyError::Null { column: col.clone() }),
            Value::Bool(b) => out.extend_from_slice(&[T_BOOL, *b as u8]),
            Value::Int(i) => {
                out.push(T_INT);
                out.extend_from_slice(&flip_i64(*i));
            }
            Value::Text(s) => {
                out.push(T_TEXT);
                put_escaped(out, s.as_bytes());
            }
            Value::Bytes(b) => {
                out.push(T_BYTES);
                put_escaped(out, b);
            }
            Value::Uuid(u) => {
                out.push(T_UUID);
                out.extend_from_slice(u);
            }
            Value::Date(d) => {
                out.push(T_DATE);
                out.extend_from_slice(&flip_i64(d.num_days_from_ce() as i64));
            }
            Value::Time(t) => {
                out.push(T_TIME);
                out.extend_from_slice(&t.num_seconds_from_midnight().to_be_bytes());
                out.extend_from_slice(&t.nanosecond().to_be_bytes());
            }
            Value::Timestamp(ts) => {
                out.push(T_TIMESTAMP);
                let utc = ts.and_utc();
                out.extend_from_slice(&flip_i64(utc.timestamp()));
                out.extend_from_slice(&utc.timestamp_subsec_nanos().to_be_bytes());
            }
            Value::TimestampTz(ts) => {
                out.push(T_TIMESTAMPTZ);
                out.extend_from_slice(&flip_i64(ts.timestamp()));
                out.extend_from_slice(&ts.timestamp_subsec_nanos().to_be_bytes());
                let off = ts.offset().local_minus_utc() as u32 ^ (1 << 31);
                out.extend_from_slice(&off.to_be_bytes());
            }
            other => {
                return Err(KeyError::Unsupported {
                    column: col.clone(),
                    type_name: other.type_name(),
                })
            }
        }
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KeyError> {
        let end = self.pos + n;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or(KeyError::Malformed { offset: self.pos })?;
        self.pos = end;
        Ok(s)
    }
    fn i64_flipped(&mut self) -> Result<i64, KeyError> {
        let b: [u8; 8] = self.take(8)?.try_into().expect("8 bytes");
        Ok((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
    }
    fn u32(&mut self) -> Result<u32, KeyError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn escaped(&mut self) -> Result<Vec<u8>, KeyError> {
        let mut out = Vec::new();
        loop {
            let b = self.take(1)?[0];
            if b != 0 {
                out.push(b);
                continue;
            }
            match self.take(1)?[0] {
                0xFF => out.push(0),
                0x01 => return Ok(out),
                _ => return Err(KeyError::Malformed { offset: self.pos - 1 }),
            }
        }
    }
}

/// Decodes key bytes back into values (used for delete markers, which only staging knows).
pub fn decode_key(bytes: &[u8]) -> Result<Vec<Value>, KeyError> {
    let mut r = Reader { bytes, pos: 0 };
    let mut out = Vec::new();
    while r.pos < bytes.len() {
        let at = r.pos;
        let bad = KeyError::Malformed { offset: at };
        let v = match r.take(1)?[0] {
            T_BOOL => Value::Bool(r.take(1)?[0] != 0),
            T_INT => Value::Int(r.i64_flipped()?),
            T_TEXT => Value::Text(String::from_utf8(r.escaped()?).map_err(|_| bad)?),
            T_BYTES => Value::Bytes(r.escaped()?),
            T_UUID => Value::Uuid(r.take(16)?.try_into().expect("16 bytes")),
            T_DATE => {
                let days = i32::try_from(r.i64_flipped()?).map_err(|_| bad.clone())?;
                Value::Date(NaiveDate::from_num_days_from_ce_opt(days).ok_or(bad)?)
            }
            T_TIME => {
                let (secs, nanos) = (r.u32()?, r.u32()?);
                Value::Time(NaiveTime::from_num_seconds_from_midnight_opt(secs, nanos).ok_or(bad)?)
            }
            T_TIMESTAMP => {
                let (secs, nanos) = (r.i64_flipped()?, r.u32()?);
                let dt = DateTime::from_timestamp(secs, nanos).ok_or(bad)?;
                Value::Timestamp(dt.naive_utc() as NaiveDateTime)
            }
            T_TIMESTAMPTZ => {
                let (secs, nanos) = (r.i64_flipped()?, r.u32()?);
                let off_bytes: [u8; 4] = r.take(4)?.try_into().expect("4 bytes");
                let off = (u32::from_be_bytes(off_bytes) ^ (1 << 31)) as i32;
                let offset = FixedOffset::east_opt(off).ok_or(bad.clone())?;
                let dt = DateTime::from_timestamp(secs, nanos).ok_or(bad)?;
                Value::TimestampTz(dt.with_timezone(&offset))
            }
            _ => return Err(bad),
        };
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(values: &[Value]) -> Vec<u8> {
        let cols: Vec<String> = (0..values.len()).map(|i| format!("k{i}")).collect();
        let refs: Vec<&Value> = values.iter().collect();
        let mut out = Vec::new();
        encode_key(&mut out, &refs, &cols).unwrap();
        out
    }

    #[test]
    fn order_matches_value_order() {
        let ints = [i64::MIN, -5, -1, 0, 1, 2, 255, 256, i64::MAX];
        for w in ints.windows(2) {
            assert!(key(&[Value::Int(w[0])]) < key(&[Value::Int(w[1])]), "{w:?}");
        }
        let texts = ["", "\0", "a", "a\0", "a\0b", "ab", "b", "é", "日本"];
        for w in texts.windows(2) {
            assert!(
                key(&[Value::Text(w[0].into())]) < key(&[Value::Text(w[1].into())]),
                "{w:?}"
            );
        }
        // Composite: first column dominates, then the second, with no bleed between them.
        let a = key(&[Value::Text("a".into()), Value::Int(9)]);
        let b = key(&[Value::Text("ab".into()), Value::Int(1)]);
        assert!(a < b);
        let d1 = NaiveDate::from_ymd_opt(1969, 12, 31).unwrap();
        let d2 = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        assert!(key(&[Value::Date(d1)]) < key(&[Value::Date(d2)]));
    }

    #[test]
    fn round_trips() {
        let ts = DateTime::parse_from_rfc3339("1901-05-06T07:08:09.123456789-03:30").unwrap();
        let row = vec![
            Value::Int(-42),
            Value::Text("a\0b".into()),
            Value::Bytes(vec![0, 0xFF, 0]),
            Value::Uuid([7; 16]),
            Value::Date(NaiveDate::from_ymd_opt(1, 1, 1).unwrap()),
            Value::Time(NaiveTime::from_hms_nano_opt(23, 59, 59, 999).unwrap()),
            Value::Timestamp(ts.naive_utc()),
            Value::TimestampTz(ts),
            Value::Bool(true),
        ];
        assert_eq!(decode_key(&key(&row)).unwrap(), row);
    }

    #[test]
    fn null_and_float_keys_are_refused_by_name() {
        let cols = vec!["id".to_owned()];
        let err = encode_key(&mut Vec::new(), &[&Value::Null], &cols).unwrap_err();
        assert_eq!(err.to_string(), "key column `id` is NULL");
        let err = encode_key(&mut Vec::new(), &[&Value::F64(1.0)], &cols).unwrap_err();
        assert!(err.to_string().contains("float64"));
    }

    #[test]
    fn malformed_bytes_are_an_error() {
        assert!(decode_key(&[T_INT, 1, 2]).is_err());
        assert!(decode_key(&[0x77]).is_err());
        assert!(decode_key(&[T_TEXT, b'a', 0, 0x05]).is_err());
    }
}
