//! The push body as the receiver reads it: one pass that checks the whole document is JSON but
//! keeps each row as its JSON text instead of a tree of values. The receiver shares the machine
//! with the pipeline it measures, and building (then dropping) a map per row cost it more than
//! the rest of its work when it only acknowledges.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// A batch of the push protocol (docs/push-protocol.md); fields the receiver does not use are
/// skipped (still checked to be JSON).
#[derive(Deserialize)]
pub struct Body<'a> {
    #[serde(borrow, default)]
    pub protocol: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tenant: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub dataset: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub run_id: Option<Cow<'a, str>>,
    /// Echoed in the response as it came.
    #[serde(borrow, default)]
    pub batch_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub schema: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub changes: Option<Vec<Change<'a>>>,
}

/// One change record: its row (insert, update) or key (delete) as JSON text.
#[derive(Deserialize)]
pub struct Change<'a> {
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(borrow, default)]
    pub op: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub row: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub key: Option<&'a RawValue>,
}

/// Parses a body; the error says where it stops being a batch.
pub fn parse(body: &[u8]) -> Result<Body<'_>, String> {
    serde_json::from_slice(body).map_err(|e| format!("body is not a JSON batch: {e}"))
}

/// The `response` the protocol acknowledges a batch with.
pub fn ack(body: &Body<'_>) -> String {
    let n = body.changes.as_ref().map_or(0, Vec::len);
    let id = body.batch_id.map_or("null", RawValue::get);
    format!("{{\"applied\":{n},\"batch_id\":{id}}}")
}

/// The values of `cols` in a row or key object, in `cols` order (`None` where the object lacks
/// one); every other member is skipped unbuilt.
pub fn key_values(obj: &RawValue, cols: &[&str]) -> Result<Vec<Option<Value>>, String> {
    let mut de = serde_json::Deserializer::from_str(obj.get());
    KeyPicker { cols }.deserialize(&mut de).map_err(|e| e.to_string())
}

struct KeyPicker<'c> {
    cols: &'c [&'c str],
}

/// A member name, borrowed from the body unless it holds escapes.
#[derive(Deserialize)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> DeserializeSeed<'de> for KeyPicker<'_> {
    type Value = Vec<Option<Value>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for KeyPicker<'_> {
    type Value = Vec<Option<Value>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
        let mut out = vec![None; self.cols.len()];
        while let Some(Name(name)) = m.next_key()? {
            match self.cols.iter().position(|c| *c == name) {
                Some(i) => out[i] = Some(m.next_value()?),
                None => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rows_as_text_and_acknowledges_like_a_json_object() {
        let b = br#"{"protocol":"p","tenant":"t","dataset":"d","run_id":"r","batch_id":"r.1-2",
            "schema":{"key":["id"]},"changes":[{"seq":1,"op":"insert","row":{"id":1,"n":"\u00e9"}},
            {"seq":2,"op":"delete","key":{"id":2}}]}"#;
        let body = parse(b).unwrap();
        let changes = body.changes.as_ref().unwrap();
        assert_eq!(changes[0].row.unwrap().get(), r#"{"id":1,"n":"\u00e9"}"#);
        assert_eq!(changes[1].key.unwrap().get(), r#"{"id":2}"#);
        let ack: serde_json::Value = serde_json::from_str(&ack(&body)).unwrap();
        assert_eq!(ack, serde_json::json!({"applied": 2, "batch_id": "r.1-2"}));
    }

    #[test]
    fn picks_key_columns_in_key_order_and_skips_the_rest() {
        let row = serde_json::from_str::<&RawValue>(r#"{"b":"x","a\u0041":[1],"n":2,"id":{"deep":1}}"#).unwrap();
        let got = key_values(row, &["n", "aA", "missing"]).unwrap();
        assert_eq!(
            got,
            vec![Some(serde_json::json!(2)), Some(serde_json::json!([1])), None]
        );
        let not_object = serde_json::from_str::<&RawValue>("[1]").unwrap();
        assert!(key_values(not_object, &["id"])
            .unwrap_err()
            .contains("expected an object"));
    }

    #[test]
    fn a_body_that_is_not_json_says_where() {
        let e = parse(br#"{"changes":[{"seq":1,"op":"insert","row":{"id":1,}}]}"#)
            .err()
            .unwrap();
        assert!(e.contains("line 1 column"), "{e}");
        assert!(parse(br#"{"changes":[{"seq":"one"}]}"#).is_err());
    }
}
