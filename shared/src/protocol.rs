//! Request bodies of the push protocol (docs/push-protocol.md), built once per batch by string
//! concatenation of the change records' stored JSON, so no row is parsed again.

use crate::domain::buffers::Buffer;
use crate::domain::diff::Op;
use crate::domain::schema::TableSchema;
use crate::ports::RunKind;

/// Protocol name and major version, sent in every body.
pub const PROTOCOL: &str = "signals-push/1";

/// What every batch of a run shares.
pub struct BatchHeader<'a> {
    /// Tenant id.
    pub tenant: &'a str,
    /// Destination dataset.
    pub dataset: &'a str,
    /// Run id.
    pub run_id: &'a str,
    /// Initial or interval.
    pub run_kind: RunKind,
    /// Column names and types, published with the data.
    pub schema: &'a TableSchema,
}

/// Builds one batch body incrementally.
pub struct BodyBuilder {
    body: String,
    first_seq: Option<u64>,
    last_seq: u64,
    rows: u64,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

impl BodyBuilder {
    /// Starts a body with the run's header fields.
    pub fn new(h: &BatchHeader<'_>) -> BodyBuilder {
        let schema = serde_json::to_string(h.schema).expect("schemas serialise");
        let body = format!(
            "{{\"protocol\":\"{PROTOCOL}\",\"tenant\":{},\"dataset\":{},\"run_id\":{},\"run_kind\":\"{}\",\"schema\":{schema},\"changes\":[",
            json_str(h.tenant),
            json_str(h.dataset),
            json_str(h.run_id),
            h.run_kind.as_str(),
        );
        BodyBuilder {
            body,
            first_seq: None,
            last_seq: 0,
            rows: 0,
        }
    }

    /// Appends one change record; `payload` is the row (insert/update) or key (delete) JSON.
    pub fn push(&mut self, seq: u64, op: Op, payload: &str) {
        if self.first_seq.is_some() {
            self.body.push(',');
        }
        self.first_seq.get_or_insert(seq);
        self.last_seq = seq;
        self.rows += 1;
        let field = if op == Op::Delete { "key" } else { "row" };
        // Written in place: a formatted string per record cost the batch stage an allocation and
        // its regrowth for every change.
        self.body.push_str("{\"seq\":");
        self.body.push_str(itoa::Buffer::new().format(seq));
        self.body.push_str(",\"op\":\"");
        self.body.push_str(op.as_str());
        self.body.push_str("\",\"");
        self.body.push_str(field);
        self.body.push_str("\":");
        self.body.push_str(payload);
        self.body.push('}');
    }

    /// Makes room for `bytes` more (the previous body's size: bodies of one run are alike), so
    /// the body does not regrow and copy itself as records arrive.
    pub fn reserve(&mut self, bytes: usize) {
        let need = self.body.len() + bytes;
        if need > self.body.capacity() {
            // A kept buffer: a body is too large for the heap, and a fresh mapping of its size
            // is faulted in page by page as it fills.
            let mut body = String::from_utf8(Buffer::with_capacity(need).into_vec()).unwrap_or_default();
            body.push_str(&self.body);
            self.body = body;
        }
    }

    /// Bytes so far.
    pub fn bytes(&self) -> usize {
        self.body.len()
    }

    /// Records so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Sequence range so far.
    pub fn range(&self) -> (u64, u64) {
        (self.first_seq.unwrap_or(0), self.last_seq)
    }

    /// Closes the body with the batch id and sequence range.
    pub fn finish(mut self, batch_id: &str) -> Buffer {
        let (first, last) = self.range();
        self.body.push_str(&format!(
            "],\"batch_id\":{},\"seq_first\":{first},\"seq_last\":{last}}}",
            json_str(batch_id)
        ));
        Buffer::from(self.body.into_bytes())
    }
}

/// `POST /v1/checksums`: a destination's summary of one dataset, for reconciliation.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChecksumRequest {
    /// Tenant id.
    pub tenant: String,
    /// Dataset name.
    pub dataset: String,
    /// Key columns, in key order (the key text is the JSON array of their values).
    pub key: Vec<String>,
    /// Number of buckets rows are spread over by key.
    pub buckets: u32,
    /// Buckets whose rows should be listed one by one.
    #[serde(default)]
    pub detail: Vec<u32>,
}

/// A listed row: its key values and row hash.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChecksumRow {
    /// Key values in key order.
    pub key: Vec<serde_json::Value>,
    /// Row hash, 32 hex digits.
    pub hash: String,
}

/// The answer to a [`ChecksumRequest`].
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ChecksumResponse {
    /// Rows in the dataset.
    pub rows: u64,
    /// One summary per bucket, bucket `i` at index `i`.
    pub buckets: Vec<crate::domain::checksum::Bucket>,
    /// The rows of the requested detail buckets.
    #[serde(default)]
    pub rows_of_detail: Vec<ChecksumRow>,
}

/// One half of a split batch.
#[derive(Debug)]
pub struct Half {
    /// Deterministic batch id of the half.
    pub id: String,
    /// First sequence number.
    pub first: u64,
    /// Last sequence number.
    pub last: u64,
    /// Change records.
    pub records: usize,
    /// Complete request body.
    pub body: Vec<u8>,
}

/// Splits a batch body in two halves by its change records, each a complete body with its own
/// deterministic batch id and sequence range; `None` if it holds fewer than two records or is
/// not a body we built.
pub fn split_body(body: &[u8], run_id: &str) -> Option<[Half; 2]> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let changes = v.get_mut("changes")?.as_array_mut()?;
    if changes.len() < 2 {
        return None;
    }
    let second = changes.split_off(changes.len() / 2);
    let first = std::mem::take(changes);
    let mut half = |records: Vec<serde_json::Value>| -> Option<Half> {
        let seq = |c: &serde_json::Value| c.get("seq").and_then(serde_json::Value::as_u64);
        let (lo, hi) = (seq(records.first()?)?, seq(records.last()?)?);
        let id = crate::domain::batching::batch_id(run_id, lo, hi);
        let n = records.len();
        v["changes"] = serde_json::Value::Array(records);
        v["batch_id"] = id.clone().into();
        v["seq_first"] = lo.into();
        v["seq_last"] = hi.into();
        Some(Half {
            id,
            first: lo,
            last: hi,
            records: n,
            body: serde_json::to_vec(&v).ok()?,
        })
    };
    Some([half(first)?, half(second)?])
}

/// Bytes a record adds to a body besides its payload (for the byte limit).
pub const RECORD_OVERHEAD: usize = 40;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::schema::{Column, ColumnType};

    #[test]
    fn body_is_valid_json_with_everything_the_protocol_names() {
        let schema = TableSchema {
            columns: vec![Column {
                name: "id".into(),
                ty: ColumnType::Int,
                scale: None,
                native: "INTEGER".into(),
            }],
            key: vec!["id".into()],
            ..Default::default()
        };
        let h = BatchHeader {
            tenant: "acme",
            dataset: "orders",
            run_id: "r1",
            run_kind: RunKind::Interval,
            schema: &schema,
        };
        let mut b = BodyBuilder::new(&h);
        b.push(7, Op::Insert, "{\"id\":1}");
        b.push(8, Op::Delete, "{\"id\":2}");
        let body: serde_json::Value = serde_json::from_slice(&b.finish("r1.7-8")).unwrap();
        assert_eq!(body["protocol"], "signals-push/1");
        assert_eq!(body["batch_id"], "r1.7-8");
        assert_eq!(body["seq_first"], 7);
        assert_eq!(body["seq_last"], 8);
        assert_eq!(body["schema"]["columns"][0]["type"], "int");
        assert_eq!(body["changes"][0]["row"]["id"], 1);
        assert_eq!(body["changes"][1]["op"], "delete");
        assert_eq!(body["changes"][1]["key"]["id"], 2);
    }

    #[test]
    fn a_body_splits_into_two_complete_halves() {
        let schema = TableSchema {
            columns: vec![],
            key: vec!["id".into()],
            ..Default::default()
        };
        let h = BatchHeader {
            tenant: "t",
            dataset: "d",
            run_id: "r",
            run_kind: RunKind::Initial,
            schema: &schema,
        };
        let mut b = BodyBuilder::new(&h);
        for seq in 1..=5 {
            b.push(seq, Op::Insert, &format!("{{\"id\":{seq}}}"));
        }
        let [a, z] = split_body(&b.finish("r.1-5"), "r").unwrap();
        assert_eq!((a.id.as_str(), a.first, a.last, a.records), ("r.1-2", 1, 2, 2));
        assert_eq!((z.id.as_str(), z.first, z.last, z.records), ("r.3-5", 3, 5, 3));
        let body: serde_json::Value = serde_json::from_slice(&z.body).unwrap();
        assert_eq!(
            (
                body["batch_id"].as_str(),
                body["seq_first"].as_u64(),
                body["tenant"].as_str()
            ),
            (Some("r.3-5"), Some(3), Some("t"))
        );
        let mut one = BodyBuilder::new(&h);
        one.push(1, Op::Delete, "{\"id\":1}");
        assert!(split_body(&one.finish("r.1-1"), "r").is_none());
    }
}
