//! Packed staging (decision 0029): an initial run's step stages its keys and hashes as one row,
//! a pack sorted by key, instead of a row and a primary-key entry per key — the entries' B-tree
//! upkeep was the largest single cost of an initial sync. What later runs change is staged per
//! key in `staging_keys`, where a row overrides the packed entry of its key and a row without a
//! hash (a tombstone) deletes it. Every read of staging merges the two.

mod read;
#[cfg(test)]
mod server_tests;

pub(super) use read::{read, staged_hashes};

use crate::domain::encoding::RowHash;
use crate::errors::StoreError;
use crate::ports::KeyRange;
use crate::postgres::pool::pg_err;
use read::Merged;
use tokio_postgres::Transaction;

/// Bytes of an entry's length prefix.
const LEN: usize = 4;
/// Bytes of an entry's hash.
const HASH: usize = std::mem::size_of::<RowHash>();

fn corrupt(detail: String) -> StoreError {
    StoreError::Corrupt {
        what: "staging pack",
        detail,
    }
}

/// A pack as stored: its body and its first and last keys.
#[derive(Debug)]
struct Encoded {
    body: Vec<u8>,
    lo: Vec<u8>,
    hi: Vec<u8>,
}

/// A step's keys and hashes as one pack's body: `[u32 LE key length][key][16-byte hash]` per
/// entry, keys ascending by their bytes (the order staging reads and compares them in, whatever
/// order the source read them in).
fn encode(entries: &mut [(&[u8], &[u8])]) -> Result<Option<Encoded>, StoreError> {
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Ok(None);
    };
    let size = entries.iter().map(|(k, _)| LEN + k.len() + HASH).sum();
    let mut body = Vec::with_capacity(size);
    for (i, (key, hash)) in entries.iter().enumerate() {
        if i > 0 && entries[i - 1].0 == *key {
            return Err(StoreError::Db {
                context: "stage chunk step",
                detail: "the step holds a key twice: the source's key columns are not unique".into(),
            });
        }
        let len = u32::try_from(key.len()).map_err(|_| corrupt(format!("a key of {} bytes", key.len())))?;
        if hash.len() != HASH {
            return Err(corrupt(format!("a hash of {} bytes", hash.len())));
        }
        body.extend_from_slice(&len.to_le_bytes());
        body.extend_from_slice(key);
        body.extend_from_slice(hash);
    }
    Ok(Some(Encoded {
        body,
        lo: first.0.to_vec(),
        hi: last.0.to_vec(),
    }))
}

/// One pack read back: its body and where each entry's key starts and ends, with a cursor over
/// the entries a read's key range takes.
#[derive(Debug)]
struct Pack {
    body: Vec<u8>,
    keys: Vec<(u32, u32)>,
    next: usize,
    end: usize,
}

impl Pack {
    fn decode(body: Vec<u8>) -> Result<Pack, StoreError> {
        let mut keys = Vec::new();
        let mut at = 0;
        while at < body.len() {
            let len = body
                .get(at..at + LEN)
                .map(|b| u32::from_le_bytes(b.try_into().expect("four bytes")) as usize)
                .ok_or_else(|| corrupt(format!("an entry cut short at byte {at}")))?;
            let (start, end) = (at + LEN, at + LEN + len);
            if end + HASH > body.len() {
                return Err(corrupt(format!(
                    "an entry of {len} key bytes runs past the end at byte {at}"
                )));
            }
            if let Some(&(s, e)) = keys.last() {
                if body[s as usize..e as usize] >= body[start..end] {
                    return Err(corrupt(format!("keys out of order at byte {at}")));
                }
            }
            keys.push((start as u32, end as u32));
            at = end + HASH;
        }
        let end = keys.len();
        Ok(Pack {
            body,
            keys,
            next: 0,
            end,
        })
    }

    fn key(&self, i: usize) -> &[u8] {
        let (s, e) = self.keys[i];
        &self.body[s as usize..e as usize]
    }

    fn hash(&self, i: usize) -> RowHash {
        let e = self.keys[i].1 as usize;
        self.body[e..e + HASH].try_into().expect("sixteen bytes")
    }

    /// The hash packed for `key`, if the pack holds it.
    fn find(&self, key: &[u8]) -> Option<RowHash> {
        let i = self
            .keys
            .partition_point(|&(s, e)| &self.body[s as usize..e as usize] < key);
        (i < self.keys.len() && self.key(i) == key).then(|| self.hash(i))
    }

    /// Keeps only the entries in `range`.
    fn clip(mut self, range: &KeyRange) -> Pack {
        if let Some(lo) = &range.lo {
            self.next = self
                .keys
                .partition_point(|&(s, e)| &self.body[s as usize..e as usize] < lo.as_slice());
        }
        if let Some(hi) = &range.hi {
            self.end = self
                .keys
                .partition_point(|&(s, e)| &self.body[s as usize..e as usize] < hi.as_slice());
        }
        self
    }

    fn head(&self) -> Option<&[u8]> {
        (self.next < self.end).then(|| self.key(self.next))
    }
}

/// Where the packs of one source lie, to tell whether a deleted key may be packed (it needs a
/// tombstone then) or can only be a per-key row (deleted outright).
pub(super) struct Coverage {
    /// Each pack's first key, ascending.
    lo: Vec<Vec<u8>>,
    /// The greatest last key of the packs up to each one (packs of a collation whose order is
    /// not the bytes' may overlap).
    reach: Vec<Vec<u8>>,
}

impl Coverage {
    pub(super) async fn of(tx: &Transaction<'_>, s: &str, sid: i32) -> Result<Coverage, StoreError> {
        let rows = tx
            .query(
                &format!("SELECT lo, hi FROM {s}.staging_packs WHERE sid = $1 ORDER BY lo"),
                &[&sid],
            )
            .await
            .map_err(pg_err("read staging packs"))?;
        let (mut lo, mut reach) = (
            Vec::with_capacity(rows.len()),
            Vec::<Vec<u8>>::with_capacity(rows.len()),
        );
        for r in rows {
            let hi: Vec<u8> = r.get(1);
            let hi = match reach.last() {
                Some(before) if *before > hi => before.clone(),
                _ => hi,
            };
            lo.push(r.get(0));
            reach.push(hi);
        }
        Ok(Coverage { lo, reach })
    }

    fn covers(&self, key: &[u8]) -> bool {
        let i = self.lo.partition_point(|lo| lo.as_slice() <= key);
        i > 0 && self.reach[i - 1].as_slice() >= key
    }
}

/// Unstages deleted keys: a tombstone for a key a pack may hold, the per-key row removed for any
/// other. Returns the rows written.
pub(super) async fn unstage(
    tx: &Transaction<'_>,
    s: &str,
    sid: i32,
    packs: &Coverage,
    keys: &[impl AsRef<[u8]>],
) -> Result<u64, StoreError> {
    let err = pg_err("unstage deleted keys");
    let (tombs, gone): (Vec<&[u8]>, Vec<&[u8]>) = keys.iter().map(AsRef::as_ref).partition(|k| packs.covers(k));
    let mut n = 0;
    if !gone.is_empty() {
        let sql = format!("DELETE FROM {s}.staging_keys WHERE sid = $1 AND key = ANY($2::BYTEA[])");
        n += tx.execute(&sql, &[&sid, &gone]).await.map_err(&err)?;
    }
    if !tombs.is_empty() {
        let sql = format!(
            "INSERT INTO {s}.staging_keys (sid, key, hash) SELECT $1, k, NULL FROM UNNEST($2::BYTEA[]) AS k \
             ON CONFLICT (sid, key) DO UPDATE SET hash = NULL"
        );
        n += tx.execute(&sql, &[&sid, &tombs]).await.map_err(&err)?;
    }
    Ok(n)
}

/// Stages a step's keys as one pack. A per-key row of the same key (a repair's invalidation
/// while the run was read) gives way to the step's hash, as the upsert it replaces did; the
/// look for one is a single probe of the key range's start when there is none.
pub(super) async fn stage(
    tx: &Transaction<'_>,
    s: &str,
    sid: i32,
    entries: &mut [(&[u8], &[u8])],
) -> Result<u64, StoreError> {
    let err = pg_err("stage chunk step");
    let Some(Encoded { body, lo, hi }) = encode(entries)? else {
        return Ok(0);
    };
    let overridden: bool = tx
        .query_one(
            &format!("SELECT EXISTS (SELECT 1 FROM {s}.staging_keys WHERE sid = $1 AND key >= $2 AND key <= $3)"),
            &[&sid, &lo, &hi],
        )
        .await
        .map_err(&err)?
        .get(0);
    let mut n = 0;
    if overridden {
        let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| *k).collect();
        let sql = format!("DELETE FROM {s}.staging_keys WHERE sid = $1 AND key = ANY($2::BYTEA[])");
        n += tx.execute(&sql, &[&sid, &keys]).await.map_err(&err)?;
    }
    let sql = format!("INSERT INTO {s}.staging_packs (sid, lo, hi, n, body) VALUES ($1, $2, $3, $4, $5)");
    n += tx
        .execute(&sql, &[&sid, &lo, &hi, &(entries.len() as i32), &body])
        .await
        .map_err(&err)?;
    Ok(n)
}

/// Keys per pack a compaction writes.
const COMPACTED_PACK: usize = 20_000;

/// Notes `added` rows staged per key for source `sid` by a merge and, once the rows staged per
/// key since its packs were written reach half as many as the packs hold, compacts it: packs and
/// per-key rows are read merged and written again as packs, which drops the tombstones and
/// overrides. Without it a table whose keys come and go (random keys inside the packs' ranges)
/// would add a tombstone per delete for good. Returns the rows written.
pub(super) async fn compact_if_due(tx: &Transaction<'_>, s: &str, sid: i32, added: u64) -> Result<u64, StoreError> {
    let err = pg_err("compact staging");
    let Some(row) = tx
        .query_opt(
            &format!(
                "UPDATE {s}.sources SET per_key = per_key + $2 WHERE sid = $1 \
                 AND EXISTS (SELECT 1 FROM {s}.staging_packs WHERE sid = $1) \
                 RETURNING per_key, (SELECT SUM(n) FROM {s}.staging_packs WHERE sid = $1)::BIGINT"
            ),
            &[&sid, &(added as i64)],
        )
        .await
        .map_err(&err)?
    else {
        return Ok(0);
    };
    let (per_key, packed): (i64, i64) = (row.get(0), row.get(1));
    if per_key * 2 < packed {
        return Ok(0);
    }
    // The merged read's portals keep the snapshot they were opened in: the deletes after it are
    // not seen by the read.
    let mut merged = Merged::open(tx, s, sid, &KeyRange::default()).await?;
    let mut n = 0;
    for table in ["staging_packs", "staging_keys"] {
        n += tx
            .execute(&format!("DELETE FROM {s}.{table} WHERE sid = $1"), &[&sid])
            .await
            .map_err(&err)?;
    }
    let mut entries = Vec::with_capacity(COMPACTED_PACK);
    loop {
        let next = merged.next(tx).await?;
        let end = next.is_none();
        entries.extend(next);
        if entries.len() == COMPACTED_PACK || (end && !entries.is_empty()) {
            let mut refs: Vec<(&[u8], &[u8])> = entries.iter().map(|(k, h)| (k.as_slice(), h.as_slice())).collect();
            n += stage(tx, s, sid, &mut refs).await?;
            entries.clear();
        }
        if end {
            break;
        }
    }
    tx.execute(&format!("UPDATE {s}.sources SET per_key = 0 WHERE sid = $1"), &[&sid])
        .await
        .map_err(&err)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(keys: &[&[u8]]) -> Pack {
        let hashes: Vec<[u8; 16]> = keys.iter().map(|k| [k.len() as u8; 16]).collect();
        let mut entries: Vec<(&[u8], &[u8])> = keys.iter().zip(&hashes).map(|(k, h)| (*k, h.as_slice())).collect();
        Pack::decode(encode(&mut entries).unwrap().unwrap().body).unwrap()
    }

    #[test]
    fn a_pack_sorts_its_keys_by_their_bytes_and_finds_each() {
        let Encoded { body, lo, hi } = encode(&mut [
            (b"b".as_slice(), [2; 16].as_slice()),
            (b"A", &[1; 16]),
            (b"a", &[3; 16]),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((lo.as_slice(), hi.as_slice()), (b"A".as_slice(), b"b".as_slice()));
        let pack = Pack::decode(body).unwrap();
        assert_eq!(pack.find(b"a"), Some([3; 16]));
        assert_eq!(pack.find(b"A"), Some([1; 16]));
        assert_eq!(pack.find(b"b"), Some([2; 16]));
        assert_eq!(pack.find(b"B"), None);
        assert_eq!(pack.find(b"a "), None, "a trailing space is another key");
    }

    #[test]
    fn a_key_twice_in_one_step_is_refused() {
        let e = encode(&mut [(b"k".as_slice(), [0; 16].as_slice()), (b"k", &[1; 16])]).unwrap_err();
        assert!(e.to_string().contains("holds a key twice"), "{e}");
    }

    #[test]
    fn a_damaged_pack_is_refused_not_misread() {
        let mut body = Vec::new();
        for key in [b"b", b"a"] {
            body.extend_from_slice(&1u32.to_le_bytes());
            body.extend_from_slice(key);
            body.extend_from_slice(&[0; 16]);
        }
        assert!(Pack::decode(body.clone())
            .unwrap_err()
            .to_string()
            .contains("out of order"));
        body.truncate(body.len() - 1);
        assert!(Pack::decode(body)
            .unwrap_err()
            .to_string()
            .contains("runs past the end"));
    }

    #[test]
    fn a_clipped_pack_keeps_the_range_only() {
        let range = KeyRange {
            lo: Some(b"b".to_vec()),
            hi: Some(b"d".to_vec()),
        };
        let mut pack = packed(&[b"a", b"b", b"c", b"d", b"e"]).clip(&range);
        let mut seen = Vec::new();
        while let Some(k) = pack.head() {
            seen.push(k.to_vec());
            pack.next += 1;
        }
        assert_eq!(seen, [b"b".to_vec(), b"c".to_vec()]);
    }

    #[test]
    fn coverage_reaches_past_an_overlapped_pack() {
        let cov = Coverage {
            lo: vec![b"a".to_vec(), b"c".to_vec()],
            reach: vec![b"m".to_vec(), b"m".to_vec()],
        };
        assert!(cov.covers(b"a") && cov.covers(b"k") && cov.covers(b"m"));
        assert!(!cov.covers(b"0") && !cov.covers(b"n"));
    }
}
