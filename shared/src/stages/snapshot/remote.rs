//! Push-down hashing: the source sends (key, its own row hash) for the chunk's key range; the
//! merge join with staging finds what changed, and only those rows are fetched, by key, in
//! bounded batches. Staging holds the source's hashes for such data sources.

use super::render_key;
use crate::ctx::Ctx;
use crate::domain::diff::{check_order, step, Op, Step};
use crate::domain::encoding::{encode_row, RowHash};
use crate::domain::json::write_object;
use crate::domain::key::encode_key;
use crate::domain::schema::TableSchema;
use crate::domain::value::Value;
use crate::errors::{SourceError, StageError};
use crate::ports::{ChunkStats, DeltaRow, KeyRange, Run, SnapshotSource, SourceSpec};
use crate::stages::cursor::Cursor;
use std::collections::HashMap;

/// Changed rows fetched per query.
const FETCH: usize = 500;

/// Bytes the server's hash (SHA-256 cut to 16 bytes in SQL) adds to each key on the wire.
const HASH_BYTES: i64 = 16;

struct Pending {
    key_values: Vec<Value>,
    key: Vec<u8>,
    hash: RowHash,
    op: Op,
}

/// Fetches the pending rows by key and turns them into delta rows.
async fn fetch(
    src: &dyn SnapshotSource,
    spec: &SourceSpec,
    schema: &TableSchema,
    pending: &mut Vec<Pending>,
    stats: &mut ChunkStats,
    delta: &mut Vec<DeltaRow>,
) -> Result<(), StageError> {
    if pending.is_empty() {
        return Ok(());
    }
    let keys: Vec<Vec<Value>> = pending.iter().map(|p| p.key_values.clone()).collect();
    let rows = src.read_keys(spec, schema, &keys).await?;
    let key_idx = schema.key_indexes();
    let names: Vec<&str> = schema.column_names().collect();
    let mut by_key: HashMap<Vec<u8>, Vec<Value>> = HashMap::with_capacity(rows.len());
    let mut scratch = Vec::new();
    for values in rows {
        scratch.clear();
        encode_row(&mut scratch, &values);
        stats.bytes_read += scratch.len() as i64;
        let kv: Vec<&Value> = key_idx.iter().map(|&i| &values[i]).collect();
        let mut key = Vec::new();
        encode_key(&mut key, &kv, &schema.key).map_err(SourceError::from)?;
        by_key.insert(key, values);
    }
    for p in pending.drain(..) {
        match by_key.remove(&p.key) {
            Some(values) => {
                let mut payload = String::with_capacity(256);
                write_object(&mut payload, names.iter().copied(), &values);
                match p.op {
                    Op::Insert => stats.inserts += 1,
                    _ => stats.updates += 1,
                }
                delta.push(DeltaRow {
                    key: p.key,
                    op: p.op,
                    hash: Some(p.hash),
                    payload,
                });
            }
            // Deleted between the hash read and the fetch: a delete if staging had it.
            None if p.op == Op::Update => {
                let mut payload = String::new();
                write_object(&mut payload, schema.key.iter().map(String::as_str), &p.key_values);
                stats.deletes += 1;
                delta.push(DeltaRow {
                    key: p.key,
                    op: Op::Delete,
                    hash: None,
                    payload,
                });
            }
            None => {}
        }
    }
    Ok(())
}

/// Diffs one chunk through the source's own hashes.
pub(super) async fn diff_chunk(
    ctx: &Ctx,
    run: &Run,
    schema: &TableSchema,
    src: &dyn SnapshotSource,
    spec: &SourceSpec,
    range: &KeyRange,
    out: &mut super::DeltaWriter,
) -> Result<ChunkStats, StageError> {
    let mut hashes = Cursor::new(src.read_hashes(spec, schema, range));
    let mut staging = Cursor::new(ctx.store.staging(&run.tenant, &run.source, range));
    let key_names: Vec<&str> = schema.key.iter().map(String::as_str).collect();
    let (mut stats, mut delta, mut pending) = (ChunkStats::default(), Vec::new(), Vec::new());
    let mut prev: Option<Vec<u8>> = None;
    let mut s_head: Option<(Vec<Value>, Vec<u8>, RowHash)> = None;
    let mut g_head = staging.next().await?;
    if g_head.is_none() && src.reads_with_hashes() {
        return all_inserts(schema, src.read_with_hashes(spec, schema, range), out).await;
    }
    let mut s_done = false;
    loop {
        if s_head.is_none() && !s_done {
            match hashes.next().await? {
                None => s_done = true,
                Some((key_values, hash)) => {
                    stats.rows_read += 1;
                    let refs: Vec<&Value> = key_values.iter().collect();
                    let mut key = Vec::with_capacity(16);
                    encode_key(&mut key, &refs, &schema.key).map_err(SourceError::from)?;
                    stats.bytes_read += key.len() as i64 + HASH_BYTES;
                    if let Some(p) = &prev {
                        check_order(p, &key, || render_key(&refs))?;
                    }
                    prev = Some(key.clone());
                    s_head = Some((key_values, key, hash));
                }
            }
        }
        let st = step(
            s_head.as_ref().map(|(_, k, h)| (k.as_slice(), h)),
            g_head.as_ref().map(|(k, h)| (k.as_slice(), h)),
            run.force_all,
        );
        match st {
            Step::Done => break,
            Step::Insert | Step::Update => {
                let (key_values, key, hash) = s_head.take().expect("step saw a source row");
                let op = if st == Step::Insert { Op::Insert } else { Op::Update };
                if st == Step::Update {
                    g_head = staging.next().await?;
                }
                pending.push(Pending {
                    key_values,
                    key,
                    hash,
                    op,
                });
                if pending.len() >= FETCH {
                    fetch(src, spec, schema, &mut pending, &mut stats, &mut delta).await?;
                }
            }
            Step::Unchanged => {
                s_head = None;
                g_head = staging.next().await?;
            }
            Step::Delete => {
                let (key, _) = g_head.take().expect("step saw a staging row");
                stats.deletes += 1;
                delta.push(super::delete_marker(key, &key_names)?);
                g_head = staging.next().await?;
            }
        }
        out.extend(&mut delta).await?;
    }
    fetch(src, spec, schema, &mut pending, &mut stats, &mut delta).await?;
    out.extend(&mut delta).await?;
    Ok(stats)
}

/// A range staging holds nothing of (an initial run): every source row is an insert, so each is
/// read once, with the source's hash, instead of its hash first and then itself by key.
async fn all_inserts(
    schema: &TableSchema,
    rows: crate::ports::Batches<(Vec<Value>, RowHash), SourceError>,
    out: &mut super::DeltaWriter,
) -> Result<ChunkStats, StageError> {
    let key_idx = schema.key_indexes();
    let names: Vec<&str> = schema.column_names().collect();
    let mut rows = Cursor::new(rows);
    let (mut stats, mut first) = (ChunkStats::default(), true);
    // Two key buffers, swapped per row: this row's and the one before, for the order check.
    let (mut key, mut prev) = (Vec::with_capacity(16), Vec::with_capacity(16));
    let (mut json, mut encoded) = (String::with_capacity(512), Vec::new());
    while let Some((values, hash)) = rows.next().await? {
        let refs: Vec<&Value> = key_idx.iter().map(|&i| &values[i]).collect();
        key.clear();
        encode_key(&mut key, &refs, &schema.key).map_err(SourceError::from)?;
        if !first {
            check_order(&prev, &key, || render_key(&refs))?;
        }
        first = false;
        encoded.clear();
        encode_row(&mut encoded, &values);
        stats.rows_read += 1;
        stats.inserts += 1;
        stats.bytes_read += encoded.len() as i64 + HASH_BYTES;
        json.clear();
        write_object(&mut json, names.iter().copied(), &values);
        out.push_parts(Op::Insert, &key, Some(&hash), &json).await?;
        std::mem::swap(&mut key, &mut prev);
    }
    Ok(stats)
}
