//! Packed staging (decision 0029): an initial run's step stages its keys and hashes as one row,
//! a pack sorted by key, instead of a row and a primary-key entry per key — the entries' B-tree
//! upkeep was the largest single cost of an initial sync. What later runs change is staged per
//! key in `staging_keys`, where a row overrides the packed entry of its key and a row without a
//! hash (a tombstone) deletes it. Every read of staging merges the two.

use super::{PgStore, STREAM_BATCH};
use crate::domain::encoding::RowHash;
use crate::errors::StoreError;
use crate::ports::{Batches, KeyRange};
use crate::postgres::pool::{pg_err, pool_err};
use std::cmp::Ordering;
use std::collections::VecDeque;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

/// Bytes of an entry's length prefix.
const LEN: usize = 4;
/// Bytes of an entry's hash.
const HASH: usize = std::mem::size_of::<RowHash>();
/// Per-key rows fetched from a read's portal at a time.
const KEY_PAGE: i32 = 2_000;
/// Packs fetched from a read's portal at a time: each is a step's keys, decoded as it is fetched.
const PACK_PAGE: i32 = 2;

fn corrupt(detail: String) -> StoreError {
    StoreError::Corrupt {
        what: "staging pack",
        detail,
    }
}

/// A pack as stored: its body and its first and last keys.
#[derive(Debug)]
pub(super) struct Encoded {
    body: Vec<u8>,
    lo: Vec<u8>,
    hi: Vec<u8>,
}

/// A step's keys and hashes as one pack's body: `[u32 LE key length][key][16-byte hash]` per
/// entry, keys ascending by their bytes (the order staging reads and compares them in, whatever
/// order the source read them in).
pub(super) fn encode(entries: &mut [(&[u8], &[u8])]) -> Result<Option<Encoded>, StoreError> {
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

/// The staged hashes of `keys` that are staged: per-key rows first, then the packs that may
/// hold the rest.
pub(super) async fn staged_hashes(
    store: &PgStore,
    tenant: &str,
    source: &str,
    keys: Vec<Vec<u8>>,
) -> Result<Vec<(Vec<u8>, RowHash)>, StoreError> {
    let (s, err) = (&store.s, pg_err("staged hashes"));
    let mut c = store.client().await?;
    let tx = c
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(&err)?;
    let Some(sid) = source_id(&tx, s, tenant, source).await? else {
        return Ok(Vec::new());
    };
    let rows = tx
        .query(
            &format!("SELECT key, hash FROM {s}.staging_keys WHERE sid = $1 AND key = ANY($2)"),
            &[&sid, &keys],
        )
        .await
        .map_err(&err)?;
    let mut out = Vec::with_capacity(keys.len());
    let mut per_key = std::collections::HashSet::with_capacity(rows.len());
    for r in &rows {
        let key: &[u8] = r.get(0);
        per_key.insert(key);
        if let Some(hash) = row_hash(r)? {
            out.push((key.to_vec(), hash));
        }
    }
    let rest: Vec<&[u8]> = keys
        .iter()
        .map(Vec::as_slice)
        .filter(|k| !per_key.contains(k))
        .collect();
    if rest.is_empty() {
        return Ok(out);
    }
    let packs = tx
        .query(
            &format!(
                "SELECT body FROM {s}.staging_packs WHERE sid = $1 \
                 AND EXISTS (SELECT 1 FROM UNNEST($2::BYTEA[]) AS k WHERE k >= lo AND k <= hi)"
            ),
            &[&sid, &rest],
        )
        .await
        .map_err(&err)?;
    let mut found = std::collections::HashSet::new();
    for p in packs {
        let pack = Pack::decode(p.get(0))?;
        for key in &rest {
            if !found.contains(key) {
                if let Some(hash) = pack.find(key) {
                    found.insert(*key);
                    out.push((key.to_vec(), hash));
                }
            }
        }
    }
    Ok(out)
}

async fn source_id(tx: &Transaction<'_>, s: &str, tenant: &str, source: &str) -> Result<Option<i32>, StoreError> {
    Ok(tx
        .query_opt(
            &format!("SELECT sid FROM {s}.sources WHERE tenant = $1 AND source = $2"),
            &[&tenant, &source],
        )
        .await
        .map_err(pg_err("source id"))?
        .map(|r| r.get(0)))
}

/// A per-key row's hash; `None` for a tombstone.
fn row_hash(r: &Row) -> Result<Option<RowHash>, StoreError> {
    let hash: Option<&[u8]> = r.get(1);
    hash.map(|h| {
        h.try_into().map_err(|_| StoreError::Corrupt {
            what: "staging hash",
            detail: "not 16 bytes".into(),
        })
    })
    .transpose()
}

/// Staged keys and hashes of a (tenant, data source) in `range`, ascending by key: the packs
/// and the per-key rows merged, as of one snapshot, with only a page of rows and the packs that
/// overlap the next key in memory at a time.
pub(super) fn read(
    store: &PgStore,
    tenant: &str,
    source: &str,
    range: &KeyRange,
) -> Batches<(Vec<u8>, RowHash), StoreError> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (pool, s) = (store.pool.clone(), store.s.clone());
    let (tenant, source, range) = (tenant.to_owned(), source.to_owned(), range.clone());
    tokio::spawn(async move {
        let run = async {
            let err = pg_err("read staging");
            let mut c = pool.get().await.map_err(pool_err("read staging", &pool))?;
            let t = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(&err)?;
            let Some(sid) = source_id(&t, &s, &tenant, &source).await? else {
                return Ok(());
            };
            let mut merged = Merged::open(&t, &s, sid, &range).await?;
            let mut batch = Vec::with_capacity(STREAM_BATCH);
            while let Some(entry) = merged.next(&t).await? {
                batch.push(entry);
                if batch.len() >= STREAM_BATCH && tx.send(Ok(std::mem::take(&mut batch))).await.is_err() {
                    return Ok(());
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(Ok(batch)).await;
            }
            Ok::<(), StoreError>(())
        };
        if let Err(e) = run.await {
            let _ = tx.send(Err(e)).await;
        }
    });
    rx
}

/// The merge of one source's packs and per-key rows, each read through a portal of its own.
struct Merged {
    range: KeyRange,
    keys: tokio_postgres::Portal,
    page: VecDeque<Row>,
    keys_done: bool,
    packs: tokio_postgres::Portal,
    /// Packs fetched, by first key, not yet merged from.
    waiting: VecDeque<Pack>,
    packs_done: bool,
    /// Packs being merged from.
    open: Vec<Pack>,
    /// The last key given out or deleted by a tombstone: a key packed twice (in overlapping
    /// packs of a source whose key columns were not unique) is given once, or not at all.
    last: Vec<u8>,
    started: bool,
}

impl Merged {
    async fn open(t: &Transaction<'_>, s: &str, sid: i32, range: &KeyRange) -> Result<Merged, StoreError> {
        let err = pg_err("read staging");
        let mut kp: Vec<Box<dyn ToSql + Send + Sync>> = vec![Box::new(sid)];
        let mut pp: Vec<Box<dyn ToSql + Send + Sync>> = vec![Box::new(sid)];
        let (mut kc, mut pc) = (String::new(), String::new());
        if let Some(lo) = &range.lo {
            kp.push(Box::new(lo.clone()));
            pp.push(Box::new(lo.clone()));
            kc.push_str(" AND key >= $2");
            pc.push_str(" AND hi >= $2");
        }
        if let Some(hi) = &range.hi {
            kp.push(Box::new(hi.clone()));
            pp.push(Box::new(hi.clone()));
            kc.push_str(&format!(" AND key < ${}", kp.len()));
            pc.push_str(&format!(" AND lo < ${}", pp.len()));
        }
        let bind = |sql: String, p: Vec<Box<dyn ToSql + Send + Sync>>| async move {
            t.bind_raw(&sql, p.iter().map(|b| b.as_ref() as &(dyn ToSql + Sync)))
                .await
        };
        let keys = bind(
            format!("SELECT key, hash FROM {s}.staging_keys WHERE sid = $1{kc} ORDER BY key"),
            kp,
        )
        .await
        .map_err(&err)?;
        let packs = bind(
            format!("SELECT body FROM {s}.staging_packs WHERE sid = $1{pc} ORDER BY lo"),
            pp,
        )
        .await
        .map_err(&err)?;
        Ok(Merged {
            range: range.clone(),
            keys,
            page: VecDeque::new(),
            keys_done: false,
            packs,
            waiting: VecDeque::new(),
            packs_done: false,
            open: Vec::new(),
            last: Vec::new(),
            started: false,
        })
    }

    /// The next staged key and hash, or `None` at the end.
    async fn next(&mut self, t: &Transaction<'_>) -> Result<Option<(Vec<u8>, RowHash)>, StoreError> {
        let err = pg_err("read staging");
        loop {
            if self.page.is_empty() && !self.keys_done {
                let rows = t.query_portal(&self.keys, KEY_PAGE).await.map_err(&err)?;
                self.keys_done = rows.len() < KEY_PAGE as usize;
                self.page = rows.into();
            }
            self.open_packs(t).await?;
            let packed = self.least_packed();
            let row = self.page.front();
            let take_row = match (packed, row) {
                (None, None) => return Ok(None),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(i), Some(r)) => match self.open[i].head().expect("open packs are not spent").cmp(r.get(0)) {
                    Ordering::Less => false,
                    Ordering::Equal => {
                        // The per-key row overrides the packed entry.
                        let pack = &mut self.open[i];
                        pack.next += 1;
                        if pack.head().is_none() {
                            self.open.swap_remove(i);
                        }
                        true
                    }
                    Ordering::Greater => true,
                },
            };
            if take_row {
                let r = self.page.pop_front().expect("a row to take");
                let key: &[u8] = r.get(0);
                self.passed(key);
                match row_hash(&r)? {
                    Some(hash) => return Ok(Some((key.to_vec(), hash))),
                    None => continue,
                }
            }
            let i = packed.expect("a pack to take from");
            let pack = &mut self.open[i];
            let (key, hash) = (pack.key(pack.next).to_vec(), pack.hash(pack.next));
            pack.next += 1;
            if pack.head().is_none() {
                self.open.swap_remove(i);
            }
            if self.started && self.last >= key {
                continue;
            }
            self.passed(&key);
            return Ok(Some((key, hash)));
        }
    }

    /// Notes the key last given out or deleted, in a buffer reused from key to key.
    fn passed(&mut self, key: &[u8]) {
        self.last.clear();
        self.last.extend_from_slice(key);
        self.started = true;
    }

    /// The open pack holding the least next key.
    fn least_packed(&self) -> Option<usize> {
        (0..self.open.len()).min_by(|&a, &b| self.open[a].head().cmp(&self.open[b].head()))
    }

    /// Opens every waiting pack that may hold a key before the open packs' least next one; the
    /// packs come in order of their first key, so none after them can.
    async fn open_packs(&mut self, t: &Transaction<'_>) -> Result<(), StoreError> {
        loop {
            if self.waiting.is_empty() && !self.packs_done {
                let rows = t
                    .query_portal(&self.packs, PACK_PAGE)
                    .await
                    .map_err(pg_err("read staging"))?;
                self.packs_done = rows.len() < PACK_PAGE as usize;
                for r in rows {
                    let pack = Pack::decode(r.get(0))?.clip(&self.range);
                    if pack.head().is_some() {
                        self.waiting.push_back(pack);
                    }
                }
                continue;
            }
            let least = self.least_packed().and_then(|i| self.open[i].head());
            match self.waiting.front() {
                Some(w) if least.is_none_or(|l| w.head().expect("waiting packs are not spent") <= l) => {
                    let w = self.waiting.pop_front().expect("a waiting pack");
                    self.open.push(w);
                }
                _ => return Ok(()),
            }
        }
    }
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

#[cfg(test)]
mod server_tests {
    use super::*;
    use crate::ports::StagingStore;
    use std::collections::BTreeMap;

    type Model = BTreeMap<Vec<u8>, RowHash>;

    async fn read_all(store: &PgStore, range: &KeyRange) -> Vec<(Vec<u8>, RowHash)> {
        let mut rx = store.staging("t", "src", range);
        let mut out = Vec::new();
        while let Some(batch) = rx.recv().await {
            out.extend(batch.expect("a staging read"));
        }
        out
    }

    fn expected(model: &Model, range: &KeyRange) -> Vec<(Vec<u8>, RowHash)> {
        model
            .iter()
            .filter(|(k, _)| range.lo.as_ref().is_none_or(|lo| *k >= lo) && range.hi.as_ref().is_none_or(|hi| *k < hi))
            .map(|(k, h)| (k.clone(), *h))
            .collect()
    }

    /// Staging read back, whole or by range, and looked up by key, is exactly what was staged:
    /// packs that overlap (as a case-insensitive collation's steps do in byte order), keys that
    /// differ only by case or trailing spaces, per-key rows that override packed entries, are
    /// new or are tombstones, across many pages of either.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn staging_reads_merge_packs_and_per_key_rows_exactly() {
        let schema = format!("packs_merge_{}", std::process::id());
        let store = PgStore::connect(&super::super::test_url(), &schema, 2)
            .await
            .expect("store");
        let mut model = Model::new();
        let key = |i: u32| format!("k{:06}", (i * 7919) % 20_000).into_bytes();
        let mut c = store.client().await.expect("a connection");
        let tx = c.transaction().await.expect("a transaction");
        let sid = super::super::staging::sid(&*tx, &store.s, "t", "src")
            .await
            .expect("sid");
        // Two packs of interleaved keys (even and odd positions of one range), and one apart.
        let mut steps: Vec<Vec<(Vec<u8>, RowHash)>> = vec![Vec::new(), Vec::new(), Vec::new()];
        for i in 0..9_000u32 {
            let k = format!("k{:06}", i * 2).into_bytes();
            steps[(i % 2) as usize].push((k, [(i % 250) as u8 + 1; 16]));
        }
        for k in ["A", "a", "a ", "a  ", "\u{e1}", "Z"] {
            steps[2].push((format!("z{k}").into_bytes(), [9; 16]));
        }
        for step in &steps {
            let mut entries: Vec<(&[u8], &[u8])> = step.iter().map(|(k, h)| (k.as_slice(), h.as_slice())).collect();
            stage(&tx, &store.s, sid, &mut entries).await.expect("a pack staged");
            model.extend(step.iter().cloned());
        }
        // Per key: new hashes for packed keys, new keys, tombstones for packed keys, and keys
        // deleted that no pack covers.
        let (mut upserts, mut gone) = (Vec::new(), Vec::new());
        for i in 0..3_000u32 {
            let k = key(i);
            match i % 3 {
                0 | 1 => upserts.push((k, [0xee; 16])),
                _ => gone.push(k),
            }
        }
        upserts.push((b"zz-new".to_vec(), [7; 16]));
        let sql = format!(
            "INSERT INTO {s}.staging_keys (sid, key, hash) SELECT $1, k, h FROM UNNEST($2::BYTEA[], $3::BYTEA[]) AS u(k, h) \
             ON CONFLICT (sid, key) DO UPDATE SET hash = EXCLUDED.hash",
            s = store.s
        );
        let (keys, hashes): (Vec<Vec<u8>>, Vec<Vec<u8>>) = upserts.iter().map(|(k, h)| (k.clone(), h.to_vec())).unzip();
        tx.execute(&sql, &[&sid, &keys, &hashes]).await.expect("upserts");
        model.extend(upserts.iter().cloned());
        gone.push(b"zz-new".to_vec());
        gone.push(b"~beyond every pack".to_vec());
        let cov = Coverage::of(&tx, &store.s, sid).await.expect("coverage");
        unstage(&tx, &store.s, sid, &cov, &gone).await.expect("deletes");
        for k in &gone {
            model.remove(k);
        }
        tx.commit().await.expect("commit");
        let tombstones: i64 = c
            .query_one(
                &format!("SELECT COUNT(*) FROM {}.staging_keys WHERE hash IS NULL", store.s),
                &[],
            )
            .await
            .expect("count")
            .get(0);
        let per_key: i64 = c
            .query_one(&format!("SELECT COUNT(*) FROM {}.staging_keys", store.s), &[])
            .await
            .expect("count")
            .get(0);

        let ranges = [
            KeyRange::default(),
            KeyRange {
                lo: Some(b"k001000".to_vec()),
                hi: Some(b"k004001".to_vec()),
            },
            KeyRange {
                lo: None,
                hi: Some(b"k000100".to_vec()),
            },
            KeyRange {
                lo: Some(b"z".to_vec()),
                hi: None,
            },
            KeyRange {
                lo: Some(b"za ".to_vec()),
                hi: Some(b"za!".to_vec()),
            },
        ];
        let mut reads = Vec::new();
        for range in &ranges {
            reads.push((read_all(&store, range).await, expected(&model, range)));
        }
        let asked: Vec<Vec<u8>> = [
            key(0),
            key(1),
            key(2),
            b"za ".to_vec(),
            b"zA".to_vec(),
            b"zz-new".to_vec(),
        ]
        .into_iter()
        .chain([b"k000002".to_vec(), b"k000003".to_vec(), b"nowhere".to_vec()])
        .collect();
        let mut found = store.staged_hashes("t", "src", asked.clone()).await.expect("hashes");
        found.sort();
        let mut want: Vec<(Vec<u8>, RowHash)> = asked
            .iter()
            .filter_map(|k| model.get(k).map(|h| (k.clone(), *h)))
            .collect();
        want.sort();
        c.batch_execute(&format!("DROP SCHEMA {} CASCADE", store.s))
            .await
            .expect("drop");

        // The packs span k000000–k017998 and zA–zá: a key deleted there may be packed.
        let covered = gone
            .iter()
            .filter(|k| k.as_slice() <= b"k017998".as_slice() || k.as_slice() == b"zz-new")
            .count() as i64;
        assert!(covered > 800 && covered < 1_001, "{covered}");
        assert_eq!(
            tombstones, covered,
            "a tombstone per deleted key a pack may hold, none for the others"
        );
        assert_eq!(
            per_key,
            2_000 + covered,
            "the overrides and new keys, then the tombstones"
        );
        for ((got, want), range) in reads.iter().zip(&ranges) {
            assert_eq!(got.len(), want.len(), "{range:?}");
            assert!(got == want, "{range:?}: the read differs from what was staged");
        }
        assert_eq!(found, want);
    }
}

#[cfg(test)]
mod compaction_tests {
    use super::*;
    use crate::ports::StagingStore;

    /// Once half as many rows are staged per key as the packs hold, the merge writes the source's
    /// staging again as packs of what is live: no tombstone or override is left, and a read
    /// finds exactly what it found before.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_source_staged_mostly_per_key_is_packed_again() {
        let schema = format!("packs_compact_{}", std::process::id());
        let store = PgStore::connect(&super::super::test_url(), &schema, 2)
            .await
            .expect("store");
        let mut c = store.client().await.expect("a connection");
        let s = store.s.clone();
        let tx = c.transaction().await.expect("a transaction");
        let sid = super::super::staging::sid(&*tx, &s, "t", "src").await.expect("sid");
        let keys: Vec<Vec<u8>> = (0..30_000u32).map(|i| format!("{i:08}").into_bytes()).collect();
        for step in keys.chunks(10_000) {
            let mut entries: Vec<(&[u8], &[u8])> = step.iter().map(|k| (k.as_slice(), [1u8; 16].as_slice())).collect();
            stage(&tx, &s, sid, &mut entries).await.expect("a pack");
        }
        let cov = Coverage::of(&tx, &s, sid).await.expect("coverage");
        let gone: Vec<&Vec<u8>> = keys.iter().step_by(3).collect();
        unstage(&tx, &s, sid, &cov, &gone).await.expect("tombstones");
        tx.execute(
            &format!("INSERT INTO {s}.staging_keys (sid, key, hash) SELECT $1, k, $3 FROM UNNEST($2::BYTEA[]) k"),
            &[
                &sid,
                &keys.iter().skip(1).step_by(3).take(4_000).collect::<Vec<_>>(),
                &vec![2u8; 16],
            ],
        )
        .await
        .expect("overrides");
        let early = compact_if_due(&tx, &s, sid, 10_000).await.expect("not yet due");
        tx.commit().await.expect("commit");
        let before = read(&store).await;

        let tx = c.transaction().await.expect("a transaction");
        // The count is of rows the merges wrote: 15,000 here, half the 30,000 packed.
        let n = compact_if_due(&tx, &s, sid, 5_000).await.expect("compaction");
        tx.commit().await.expect("commit");
        let after = read(&store).await;
        let r = c
            .query_one(
                &format!(
                    "SELECT (SELECT COUNT(*) FROM {s}.staging_keys), (SELECT COUNT(*) FROM {s}.staging_packs), \
                     (SELECT SUM(n) FROM {s}.staging_packs)::BIGINT, (SELECT per_key FROM {s}.sources)"
                ),
                &[],
            )
            .await
            .expect("counts");
        let counts: (i64, i64, i64, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        c.batch_execute(&format!("DROP SCHEMA {s} CASCADE"))
            .await
            .expect("drop");

        assert_eq!(early, 0, "10,000 per key of 30,000 packed is not half");
        assert!(n > 0);
        assert_eq!(before.len(), 20_000);
        assert_eq!(before.iter().filter(|(_, h)| h[0] == 2).count(), 4_000);
        assert!(after == before, "the compacted staging reads as before");
        assert_eq!(counts, (0, 1, 20_000, 0), "one pack of what is live, nothing per key");
    }

    async fn read(store: &PgStore) -> Vec<(Vec<u8>, RowHash)> {
        let mut rx = store.staging("t", "src", &KeyRange::default());
        let mut out = Vec::new();
        while let Some(batch) = rx.recv().await {
            out.extend(batch.expect("a staging read"));
        }
        out
    }
}
