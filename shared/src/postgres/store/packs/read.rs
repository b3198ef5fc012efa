//! Reads of packed staging: a range in key order, merged from the packs and the per-key rows,
//! and key look-ups.

use super::Pack;
use crate::domain::encoding::RowHash;
use crate::errors::StoreError;
use crate::ports::{Batches, KeyRange};
use crate::postgres::pool::{pg_err, pool_err};
use crate::postgres::store::staging::{range_sql, Params};
use crate::postgres::store::{spawn_batches, PgStore, STREAM_BATCH};
use deadpool_postgres::Object;
use std::cmp::Ordering;
use std::collections::VecDeque;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

/// Per-key rows fetched from a read's portal at a time.
const KEY_PAGE: i32 = 2_000;
/// Packs fetched from a read's portal at a time: each is a step's keys, decoded as it is fetched.
const PACK_PAGE: i32 = 2;

/// The staged hashes of `keys` that are staged: per-key rows first, then the packs that may
/// hold the rest.
pub(in crate::postgres::store) async fn staged_hashes(
    store: &PgStore,
    tenant: &str,
    source: &str,
    keys: Vec<Vec<u8>>,
) -> Result<Vec<(Vec<u8>, RowHash)>, StoreError> {
    let (s, err) = (&store.s, pg_err("staged hashes"));
    let mut c = store.client().await?;
    let tx = snapshot(&mut c).await.map_err(&err)?;
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
pub(in crate::postgres::store) fn read(
    store: &PgStore,
    tenant: &str,
    source: &str,
    range: &KeyRange,
) -> Batches<(Vec<u8>, RowHash), StoreError> {
    let (pool, s) = (store.pool.clone(), store.s.clone());
    let (tenant, source, range) = (tenant.to_owned(), source.to_owned(), range.clone());
    spawn_batches(STREAM_BATCH, move |mut out| async move {
        let mut c = pool.get().await.map_err(pool_err("read staging", &pool))?;
        let t = snapshot(&mut c).await.map_err(pg_err("read staging"))?;
        let Some(sid) = source_id(&t, &s, &tenant, &source).await? else {
            return Ok(());
        };
        let mut merged = Merged::open(&t, &s, sid, &range).await?;
        while let Some(entry) = merged.next(&t).await? {
            out.gather([entry]);
            if !out.send_full().await {
                return Ok(());
            }
        }
        out.finish().await;
        Ok(())
    })
}

/// A read-only transaction whose statements all see one snapshot: the per-key rows and the
/// packs of one moment, read through separate statements.
async fn snapshot(c: &mut Object) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    c.build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

/// The merge of one source's packs and per-key rows, each read through a portal of its own.
pub(super) struct Merged {
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
    pub(super) async fn open(t: &Transaction<'_>, s: &str, sid: i32, range: &KeyRange) -> Result<Merged, StoreError> {
        let err = pg_err("read staging");
        let mut kp: Params = vec![Box::new(sid)];
        let kc = range_sql(range, &mut kp);
        // A pack overlaps the range when it ends at or after its start and begins before its end.
        let mut pp: Params = vec![Box::new(sid)];
        let mut pc = String::new();
        if let Some(lo) = &range.lo {
            pp.push(Box::new(lo.clone()));
            pc.push_str(&format!(" AND hi >= ${}", pp.len()));
        }
        if let Some(hi) = &range.hi {
            pp.push(Box::new(hi.clone()));
            pc.push_str(&format!(" AND lo < ${}", pp.len()));
        }
        let bind = |sql: String, p: Params| async move {
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
    pub(super) async fn next(&mut self, t: &Transaction<'_>) -> Result<Option<(Vec<u8>, RowHash)>, StoreError> {
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
