//! Typed values as read from a source: the one in-memory form every backend maps onto.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime};

/// A decimal kept as its exact text, with its scale (digits after the point) part of the value.
///
/// Stored normalised (`-12.30`, `0.50`, `100`): no `+`, no leading zeros, no `-0`, so equal values
/// read from different databases compare and encode equally.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Decimal(String);

/// Why a text could not be read as a decimal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a decimal number")]
pub struct DecimalError {
    /// The offending text (a column value, never a secret).
    pub text: String,
}

impl Decimal {
    /// Parses decimal text; with `scale`, pads or checks the fractional digits to exactly that scale.
    pub fn parse(text: &str, scale: Option<u32>) -> Result<Self, DecimalError> {
        let err = || DecimalError { text: text.to_owned() };
        let t = text.trim();
        let (negative, body) = match t.as_bytes().first() {
            Some(b'-') => (true, &t[1..]),
            Some(b'+') => (false, &t[1..]),
            _ => (false, t),
        };
        let (int_part, frac_part) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        if (int_part.is_empty() && frac_part.is_empty())
            || !int_part.bytes().all(|b| b.is_ascii_digit())
            || !frac_part.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(err());
        }
        // The fraction as kept (cut to the scale) and the zeros that pad it to the scale: the
        // normalised text is built once, without an intermediate string per value.
        let (frac, pad) = match scale.map(|s| s as usize) {
            Some(scale) if frac_part.len() > scale => {
                // Only trailing zeros may be cut: anything else would lose a digit.
                if frac_part[scale..].bytes().any(|b| b != b'0') {
                    return Err(err());
                }
                (&frac_part[..scale], 0)
            }
            Some(scale) => (frac_part, scale - frac_part.len()),
            None => (frac_part, 0),
        };
        let int = int_part.trim_start_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        let zero = int == "0" && frac.bytes().all(|b| b == b'0');
        let mut out = String::with_capacity(int.len() + frac.len() + pad + 2);
        if negative && !zero {
            out.push('-');
        }
        out.push_str(int);
        if frac.len() + pad > 0 {
            out.push('.');
            out.push_str(frac);
            out.extend(std::iter::repeat_n('0', pad));
        }
        Ok(Decimal(out))
    }

    /// The normalised text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One value of one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Boolean / bit.
    Bool(bool),
    /// Any integer type up to 64 bits.
    Int(i64),
    /// Exact decimal with its scale.
    Decimal(Decimal),
    /// Single-precision float (kept apart so its shortest text form survives).
    F32(f32),
    /// Double-precision float.
    F64(f64),
    /// Unicode text.
    Text(String),
    /// Binary data.
    Bytes(Vec<u8>),
    /// Calendar date.
    Date(NaiveDate),
    /// Time of day.
    Time(NaiveTime),
    /// Timestamp without offset.
    Timestamp(NaiveDateTime),
    /// Timestamp with its UTC offset (the offset is part of the value).
    TimestampTz(DateTime<FixedOffset>),
    /// UUID as its 16 bytes in RFC 4122 order.
    Uuid([u8; 16]),
    /// JSON document kept as its exact text.
    Json(String),
}

impl Value {
    /// The canonical type name, as published in the push protocol's schema.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Decimal(_) => "decimal",
            Value::F32(_) => "float32",
            Value::F64(_) => "float64",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Date(_) => "date",
            Value::Time(_) => "time",
            Value::Timestamp(_) => "timestamp",
            Value::TimestampTz(_) => "timestamptz",
            Value::Uuid(_) => "uuid",
            Value::Json(_) => "json",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_normalise() {
        let d = |t, s| Decimal::parse(t, s).unwrap().as_str().to_owned();
        assert_eq!(d("12.3", Some(2)), "12.30");
        assert_eq!(d("0012.30", None), "12.30");
        assert_eq!(d("-0.00", Some(2)), "0.00");
        assert_eq!(d("+5", Some(0)), "5");
        assert_eq!(d(".5", None), "0.5");
        assert_eq!(d("-1.500", Some(1)), "-1.5");
        assert!(Decimal::parse("1.25", Some(1)).is_err());
        assert!(Decimal::parse("abc", None).is_err());
        assert!(Decimal::parse("", None).is_err());
        assert!(Decimal::parse("1e5", None).is_err());
    }
}
