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

/// What the merge takes out of each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Key, hash and payload.
    All,
    /// Key and hash (payload empty).
    Keys,
}

/// One row of an unpacked segment, borrowed from it; `payload_at` is where its payload starts.
struct RawRow<'a> {
    op: Op,
    key: &'a [u8],
    hash: Option<RowHash>,
    payload: &'a [u8],
    payload_at: usize,
}

/// Walks an unpacked segment row by row: every reader parses it here, and each row's hash is
/// checked (an insert or update without one is damage, not a delete).
fn walk(raw: &[u8], mut each: impl FnMut(RawRow<'_>) -> Result<(), SegmentError>) -> Result<(), SegmentError> {
    let mut r = Reader { b: raw, pos: 0 };
    match r.byte()? {
        FORMAT => {}
        v => return Err(SegmentError(format!("format {v} is not known to this build"))),
    }
    while r.pos < raw.len() {
        let code = r.byte()?;
        let op = Op::from_code(code.into()).ok_or_else(|| SegmentError(format!("op code {code}")))?;
        let key = r.sized()?;
        let hash: Option<RowHash> = match r.byte()? {
            0 => None,
            _ => Some(r.take(16)?.try_into().expect("sixteen bytes")),
        };
        if op != Op::Delete && hash.is_none() {
            return Err(SegmentError(format!("{} without a row hash", op.as_str())));
        }
        let payload = r.sized()?;
        let payload_at = r.pos - payload.len();
        each(RawRow {
            op,
            key,
            hash,
            payload,
            payload_at,
        })?;
    }
    Ok(())
}

fn text(payload: &[u8]) -> Result<&str, SegmentError> {
    std::str::from_utf8(payload).map_err(|e| SegmentError(e.to_string()))
}

/// The rows of a segment, in the order they were written.
pub fn decode(stored: &[u8], part: Part) -> Result<Vec<DeltaRow>, SegmentError> {
    let raw = unpack_buffer(stored).map_err(|e| SegmentError(e.to_string()))?;
    let mut rows = Vec::new();
    walk(&raw, |row| {
        rows.push(DeltaRow {
            key: row.key.to_vec(),
            op: row.op,
            hash: row.hash,
            payload: match part {
                Part::All => text(row.payload)?.to_owned(),
                Part::Keys => String::new(),
            },
        });
        Ok(())
    })?;
    Ok(rows)
}

/// Change records in write order, for the batch stage: each payload stays in the one buffer
/// it was unpacked into instead of being copied into a string of its own (a million
/// allocations, copies and frees per 1,000,000-row run).
pub struct Records {
    raw: Buffer,
    rows: Vec<(Op, usize, usize)>,
}

impl Records {
    /// The records of one stored segment.
    pub fn decode(stored: &[u8]) -> Result<Records, SegmentError> {
        let raw = unpack_buffer(stored).map_err(|e| SegmentError(e.to_string()))?;
        let mut rows = Vec::new();
        walk(&raw, |row| {
            rows.push((row.op, row.payload_at, row.payload.len()));
            Ok(())
        })?;
        Ok(Records { raw, rows })
    }

    /// Records of delta rows held one by one (a build before segments wrote its delta so).
    pub fn from_rows(delta: Vec<DeltaRow>) -> Records {
        let mut raw = Buffer::with_capacity(delta.iter().map(|r| r.payload.len()).sum());
        let mut rows = Vec::with_capacity(delta.len());
        for r in delta {
            rows.push((r.op, raw.len(), r.payload.len()));
            raw.extend_from_slice(r.payload.as_bytes());
        }
        Records { raw, rows }
    }

    /// Each record's change kind and payload JSON; a payload that is not UTF-8 is damage.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Op, &str), SegmentError>> + '_ {
        self.rows
            .iter()
            .map(|&(op, at, len)| Ok((op, text(&self.raw[at..at + len])?)))
    }
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
        for (k, r) in keys.iter().zip(&rows) {
            assert_eq!((&k.key, k.op, k.hash, k.payload.as_str()), (&r.key, r.op, r.hash, ""));
        }
    }

    #[test]
    fn records_are_the_payloads_in_write_order_from_segments_and_from_rows() {
        let rows = vec![row(3, Op::Insert), row(1, Op::Delete), row(2, Op::Update)];
        let want: Vec<(Op, &str)> = rows.iter().map(|r| (r.op, r.payload.as_str())).collect();
        let from_segment = Records::decode(&encode(&rows)).unwrap();
        let from_rows = Records::from_rows(rows.clone());
        for records in [&from_segment, &from_rows] {
            assert_eq!(records.iter().collect::<Result<Vec<_>, _>>().unwrap(), want);
            assert_eq!(records.iter().count(), 3);
        }
        assert_eq!(Records::decode(&encode(&[])).unwrap().iter().count(), 0);
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
            assert!(Records::decode(&plain[..cut]).is_err(), "cut at {cut}");
        }
        let mut not_text = plain.clone();
        let last = not_text.len() - 1;
        not_text[last] = 0xff;
        let records = Records::decode(&not_text).unwrap();
        assert!(
            records.iter().all(|r| r.is_err()),
            "a payload that is not UTF-8 is damage"
        );
        let mut bad = plain.clone();
        let mut no_hash = plain.clone();
        no_hash[1 + 1 + 4 + 2] = 0; // the insert's "hash follows" flag
        no_hash.drain(1 + 1 + 4 + 2 + 1..1 + 1 + 4 + 2 + 1 + 16);
        for err in [decode(&no_hash, Part::Keys).err(), Records::decode(&no_hash).err()] {
            assert_eq!(
                err.map(|e| e.to_string()).as_deref(),
                Some("delta segment is damaged: insert without a row hash")
            );
        }
        bad[1] = 9; // op code
        assert!(decode(&bad, Part::All).is_err());
        bad[0] = 2; // format
        assert_eq!(
            decode(&bad, Part::All).unwrap_err().to_string(),
            "delta segment is damaged: format 2 is not known to this build"
        );
    }
}
