//! Delta segments: a chunk's delta rows reach the store as a few large packed records (a few
//! thousand rows each) instead of one database row per change. The store then writes, logs and
//! indexes hundreds of records for a 1,000,000-row initial sync instead of a million, and the
//! batch stage reads them back in the order they were written, which is deterministic: the
//! same run always numbers its change records the same way.

use super::buffers::Buffer;
use super::diff::Op;
use super::encoding::RowHash;
use super::packing::{pack, unpack_buffer};

/// One change of a chunk's delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRow {
    /// Key bytes.
    pub key: Vec<u8>,
    /// Change kind.
    pub op: Op,
    /// New row hash (none for deletes).
    pub hash: Option<RowHash>,
    /// JSON payload: the full row, or the key object for deletes.
    pub payload: String,
}

impl DeltaRow {
    /// The hash staging takes for this change, or `None` for a delete (the key leaves staging).
    /// An insert or update without a hash is damage, not a delete.
    pub fn staged_hash(&self) -> Result<Option<&RowHash>, SegmentError> {
        match (self.op, &self.hash) {
            (Op::Delete, _) => Ok(None),
            (_, Some(h)) => Ok(Some(h)),
            (op, None) => Err(SegmentError(format!("{} without a row hash", op.as_str()))),
        }
    }
}

/// Why a stored segment could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("delta segment is damaged: {0}")]
pub struct SegmentError(String);

const FORMAT: u8 = 1;

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Builds one segment row by row: format byte, then per row the op code, key, optional hash
/// and payload, length-prefixed. Rows are copied in as they come, so the snapshot can write each
/// row's JSON into one reused buffer instead of a string per row.
pub struct Encoder {
    raw: Buffer,
    rows: usize,
}

impl Encoder {
    /// An empty segment with room for about `bytes`.
    pub fn with_capacity(bytes: usize) -> Encoder {
        let mut raw = Buffer::with_capacity(bytes + 1);
        raw.push(FORMAT);
        Encoder { raw, rows: 0 }
    }

    /// Adds a row.
    pub fn push(&mut self, op: Op, key: &[u8], hash: Option<&RowHash>, payload: &str) {
        self.raw.push(op.code() as u8);
        put_bytes(&mut self.raw, key);
        match hash {
            Some(h) => {
                self.raw.push(1);
                self.raw.extend_from_slice(h);
            }
            None => self.raw.push(0),
        }
        put_bytes(&mut self.raw, payload.as_bytes());
        self.rows += 1;
    }

    /// Rows so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Uncompressed bytes so far.
    pub fn bytes(&self) -> usize {
        self.raw.len()
    }

    /// The segment as stored: compressed.
    pub fn finish(self) -> Buffer {
        pack(&self.raw)
    }
}

/// Packs rows into one segment.
pub fn encode(rows: &[DeltaRow]) -> Buffer {
    let size: usize = rows.iter().map(|r| r.key.len() + r.payload.len() + 30).sum();
    let mut e = Encoder::with_capacity(size);
    for r in rows {
        e.push(r.op, &r.key, r.hash.as_ref(), &r.payload);
    }
    e.finish()
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SegmentError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| SegmentError(format!("truncated at byte {}", self.pos)))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, SegmentError> {
        Ok(self.take(1)?[0])
    }
    fn sized(&mut self) -> Result<&'a [u8], SegmentError> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().expect("four bytes"));
        self.take(n as usize)
    }
}

/// What a reader takes out of each row: the merge needs keys and hashes, the batch stage
/// payloads; the part not asked for is left empty instead of copied out of the segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Key, hash and payload.
    All,
    /// Key and hash (payload empty).
    Keys,
    /// Payload (key empty; the hash is still checked).
    Payloads,
}

/// The rows of a segment, in the order they were written.
pub fn decode(stored: &[u8], part: Part) -> Result<Vec<DeltaRow>, SegmentError> {
    let raw = unpack_buffer(stored).map_err(|e| SegmentError(e.to_string()))?;
    let mut r = Reader { b: &raw, pos: 0 };
    match r.byte()? {
        FORMAT => {}
        v => return Err(SegmentError(format!("format {v} is not known to this build"))),
    }
    let mut rows = Vec::new();
    while r.pos < raw.len() {
        let code = r.byte()?;
        let op = Op::from_code(code.into()).ok_or_else(|| SegmentError(format!("op code {code}")))?;
        let key = r.sized()?;
        let hash = match r.byte()? {
            0 => None,
            _ => Some(r.take(16)?.try_into().expect("sixteen bytes")),
        };
        let payload = std::str::from_utf8(r.sized()?).map_err(|e| SegmentError(e.to_string()))?;
        let row = DeltaRow {
            key: if part == Part::Payloads {
                Vec::new()
            } else {
                key.to_vec()
            },
            op,
            hash,
            payload: if part == Part::Keys {
                String::new()
            } else {
                payload.to_owned()
            },
        };
        row.staged_hash()?;
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(k: u8, op: Op) -> DeltaRow {
        DeltaRow {
            key: vec![1, k],
            op,
            hash: (op != Op::Delete).then_some([k; 16]),
            payload: format!(r#"{{"id":{k},"name":"ü"}}"#),
        }
    }

    #[test]
    fn round_trips_in_order() {
        let rows = vec![row(3, Op::Insert), row(1, Op::Delete), row(2, Op::Update)];
        assert_eq!(decode(&encode(&rows), Part::All).unwrap(), rows);
        assert_eq!(decode(&encode(&[]), Part::All).unwrap(), vec![]);
    }

    #[test]
    fn readers_take_only_the_part_they_need() {
        let rows = vec![row(3, Op::Insert), row(1, Op::Delete)];
        let keys = decode(&encode(&rows), Part::Keys).unwrap();
        let payloads = decode(&encode(&rows), Part::Payloads).unwrap();
        for ((k, p), r) in keys.iter().zip(&payloads).zip(&rows) {
            assert_eq!((&k.key, k.op, k.hash, k.payload.as_str()), (&r.key, r.op, r.hash, ""));
            assert_eq!((p.key.len(), p.op, p.hash, &p.payload), (0, r.op, r.hash, &r.payload));
        }
    }

    #[test]
    fn an_encoder_fed_row_by_row_writes_what_encode_writes() {
        let rows = vec![row(3, Op::Insert), row(1, Op::Delete), row(2, Op::Update)];
        let mut e = Encoder::with_capacity(0);
        for r in &rows {
            e.push(r.op, &r.key, r.hash.as_ref(), &r.payload);
        }
        assert_eq!((e.rows(), e.finish()), (3, encode(&rows)));
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let raw = encode(&[row(1, Op::Insert)]);
        let plain = crate::domain::packing::unpack(&raw).unwrap().into_owned();
        for cut in 2..plain.len() {
            assert!(decode(&plain[..cut], Part::All).is_err(), "cut at {cut}");
        }
        let mut bad = plain.clone();
        let mut no_hash = plain.clone();
        no_hash[1 + 1 + 4 + 2] = 0; // the insert's "hash follows" flag
        no_hash.drain(1 + 1 + 4 + 2 + 1..1 + 1 + 4 + 2 + 1 + 16);
        assert_eq!(
            decode(&no_hash, Part::Payloads).unwrap_err().to_string(),
            "delta segment is damaged: insert without a row hash"
        );
        bad[1] = 9; // op code
        assert!(decode(&bad, Part::All).is_err());
        bad[0] = 2; // format
        assert_eq!(
            decode(&bad, Part::All).unwrap_err().to_string(),
            "delta segment is damaged: format 2 is not known to this build"
        );
    }
}
