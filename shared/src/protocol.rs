//! Request bodies of the push protocol (docs/push-protocol.md), built once per batch by string
//! concatenation of the change records' stored JSON, so no row is parsed again.

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
        self.body.push_str(&format!(
            "{{\"seq\":{seq},\"op\":\"{}\",\"{field}\":{payload}}}",
            op.as_str()
        ));
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
    pub fn finish(mut self, batch_id: &str) -> Vec<u8> {
        let (first, last) = self.range();
        self.body.push_str(&format!(
            "],\"batch_id\":{},\"seq_first\":{first},\"seq_last\":{last}}}",
            json_str(batch_id)
        ));
        self.body.into_bytes()
    }
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
}
