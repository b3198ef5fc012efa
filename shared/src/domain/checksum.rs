//! Reconciliation checksums, computed the same way by us and by a destination: rows fall into
//! buckets by their key, and each bucket sums up as (row count, XOR of row hashes). XOR needs no
//! order, so neither side has to sort rows the way the other does.
//!
//! The key's text is the JSON array of its values in key column order; a row's hash is XXH3-128
//! of the row object's JSON with object keys sorted (docs/push-protocol.md §Reconciliation).

use serde_json::Value;
use xxhash_rust::xxh3::xxh3_128;

/// Writes JSON with object keys sorted, at every depth: the canonical text of a row.
pub fn canonical_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k).expect("strings serialise"));
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The bucket of a key text among `buckets`.
pub fn bucket_of(key_text: &str, buckets: u32) -> u32 {
    (xxh3_128(key_text.as_bytes()) as u64 % u64::from(buckets.max(1))) as u32
}

/// The hash of a row object.
pub fn row_checksum(row: &Value) -> u128 {
    let mut s = String::new();
    canonical_json(row, &mut s);
    xxh3_128(s.as_bytes())
}

/// One bucket's summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bucket {
    /// Rows in the bucket.
    pub count: u64,
    /// XOR of their row hashes, as 32 hex digits.
    #[serde(with = "hex128")]
    pub hash: u128,
}

impl Bucket {
    /// Adds a row.
    pub fn add(&mut self, row_hash: u128) {
        self.count += 1;
        self.hash ^= row_hash;
    }
}

mod hex128 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:032x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        u128::from_str_radix(&s, 16).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_text_sorts_keys_and_buckets_ignore_order() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"y":2,"x":1}],"c":"é"}}"#).unwrap();
        let mut s = String::new();
        canonical_json(&a, &mut s);
        assert_eq!(s, r#"{"a":{"c":"é","d":[1,{"x":1,"y":2}]},"b":1}"#);
        let (r1, r2) = (serde_json::json!({"id": 1}), serde_json::json!({"id": 2}));
        let (mut x, mut y) = (Bucket::default(), Bucket::default());
        x.add(row_checksum(&r1));
        x.add(row_checksum(&r2));
        y.add(row_checksum(&r2));
        y.add(row_checksum(&r1));
        assert_eq!(x, y);
        assert!(bucket_of("[1]", 64) < 64);
        let json = serde_json::to_string(&x).unwrap();
        assert_eq!(serde_json::from_str::<Bucket>(&json).unwrap(), x);
    }
}
