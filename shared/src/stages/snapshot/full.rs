//! The ordinary diff of one chunk: every source row of the key range, hashed here, merge-joined
//! with staging's (key → hash) for the same range. Store writes scale with changes.

use super::render_key;
use crate::ctx::Ctx;
use crate::domain::diff::{check_order, step, Op, Step};
use crate::domain::encoding::{row_hash, RowHash};
use crate::domain::json::write_object;
use crate::domain::key::encode_key;
use crate::domain::schema::TableSchema;
use crate::domain::value::Value;
use crate::errors::{SourceError, StageError};
use crate::ports::{Batches, ChunkStats, KeyRange, Run};
use crate::stages::cursor::Cursor;

/// A source row with its key bytes and hash.
pub(super) struct Keyed {
    key: Vec<u8>,
    hash: RowHash,
    values: Vec<Value>,
}

pub(super) async fn diff_chunk(
    ctx: &Ctx,
    run: &Run,
    schema: &TableSchema,
    source_rows: Batches<Vec<Value>, SourceError>,
    range: &KeyRange,
    delta: &mut super::DeltaWriter,
) -> Result<ChunkStats, StageError> {
    let key_idx = schema.key_indexes();
    let names: Vec<&str> = schema.column_names().collect();
    let key_names: Vec<&str> = schema.key.iter().map(String::as_str).collect();
    let mut source = Cursor::new(source_rows);
    let mut staging = Cursor::new(ctx.store.staging(&run.tenant, &run.source, range));
    let (mut scratch, mut prev_key): (Vec<u8>, Option<Vec<u8>>) = (Vec::new(), None);
    let mut stats = ChunkStats::default();
    // One buffer for every changed row's JSON, instead of a string per row.
    let mut json = String::with_capacity(512);
    let mut s_head: Option<Keyed> = None;
    // The last row's key buffer serves the next row's key.
    let mut spare_key = Vec::with_capacity(16);
    let mut g_head = staging.next().await?;
    let mut s_done = false;
    loop {
        if s_head.is_none() && !s_done {
            match source.next().await? {
                None => s_done = true,
                Some(values) => {
                    stats.rows_read += 1;
                    let mut key = std::mem::take(&mut spare_key);
                    key.clear();
                    // A single-column key (the usual case) needs no list of references per row.
                    match key_idx.as_slice() {
                        [i] => encode_key(&mut key, &[&values[*i]], &schema.key),
                        idx => encode_key(
                            &mut key,
                            &idx.iter().map(|&i| &values[i]).collect::<Vec<_>>(),
                            &schema.key,
                        ),
                    }
                    .map_err(SourceError::from)?;
                    if let Some(prev) = &mut prev_key {
                        check_order(prev, &key, || {
                            render_key(&key_idx.iter().map(|&i| &values[i]).collect::<Vec<_>>())
                        })?;
                        prev.clear();
                        prev.extend_from_slice(&key);
                    } else {
                        prev_key = Some(key.clone());
                    }
                    let hash = row_hash(&values, &mut scratch);
                    stats.bytes_read += scratch.len() as i64;
                    s_head = Some(Keyed { key, hash, values });
                }
            }
        }
        let st = step(
            s_head.as_ref().map(|k| (k.key.as_slice(), &k.hash)),
            g_head.as_ref().map(|(k, h)| (k.as_slice(), h)),
            run.force_all,
        );
        match st {
            Step::Done => break,
            Step::Insert | Step::Update => {
                let k = s_head.take().expect("step saw a source row");
                let op = if st == Step::Insert { Op::Insert } else { Op::Update };
                if st == Step::Insert {
                    stats.inserts += 1;
                } else {
                    stats.updates += 1;
                    g_head = staging.next().await?;
                }
                json.clear();
                write_object(&mut json, names.iter().copied(), &k.values);
                delta.push_parts(op, &k.key, Some(&k.hash), &json).await?;
                spare_key = k.key;
            }
            Step::Unchanged => {
                if let Some(k) = s_head.take() {
                    spare_key = k.key;
                }
                g_head = staging.next().await?;
            }
            Step::Delete => {
                let (key, _) = g_head.take().expect("step saw a staging row");
                stats.deletes += 1;
                delta.push(super::delete_marker(key, &key_names)?).await?;
                g_head = staging.next().await?;
            }
        }
    }
    Ok(stats)
}
