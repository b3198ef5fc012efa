//! Watermark reads: only rows whose cursor column is at or past the last cursor (minus the
//! overlap) are read; each is compared with staging by key, so a row re-read inside the overlap
//! and unchanged is not sent again. Deletes are left to the periodic full diff.

use crate::ctx::Ctx;
use crate::domain::diff::Op;
use crate::domain::encoding::row_hash;
use crate::domain::json::{key_value_from_json, write_object};
use crate::domain::key::encode_key;
use crate::domain::schema::TableSchema;
use crate::domain::value::Value;
use crate::errors::{SourceError, StageError};
use crate::ports::{ChunkStats, DeltaRow, Run, SnapshotSource, SourceSpec};
use std::collections::HashMap;

/// Rows compared with staging per lookup.
const LOOKUP: usize = 500;

pub(super) async fn compare(
    ctx: &Ctx,
    run: &Run,
    names: &[&str],
    rows: &mut Vec<(Vec<u8>, [u8; 16], Vec<Value>)>,
    stats: &mut ChunkStats,
    delta: &mut Vec<DeltaRow>,
) -> Result<(), StageError> {
    if rows.is_empty() {
        return Ok(());
    }
    let keys: Vec<Vec<u8>> = rows.iter().map(|r| r.0.clone()).collect();
    let staged: HashMap<Vec<u8>, [u8; 16]> = ctx
        .store
        .staged_hashes(&run.tenant, &run.source, keys)
        .await?
        .into_iter()
        .collect();
    for (key, hash, values) in rows.drain(..) {
        let op = match staged.get(&key) {
            None => Op::Insert,
            Some(h) if *h != hash || run.force_all => Op::Update,
            Some(_) => continue,
        };
        match op {
            Op::Insert => stats.inserts += 1,
            _ => stats.updates += 1,
        }
        let mut payload = String::with_capacity(256);
        write_object(&mut payload, names.iter().copied(), &values);
        delta.push(DeltaRow {
            key,
            op,
            hash: Some(hash),
            payload,
        });
    }
    Ok(())
}

/// Reads the rows changed since the cursor and writes their delta.
#[allow(clippy::too_many_arguments)]
pub(super) async fn diff_since(
    ctx: &Ctx,
    run: &Run,
    schema: &TableSchema,
    src: &dyn SnapshotSource,
    spec: &SourceSpec,
    column: &str,
    from_json: Option<&str>,
    out: &mut super::DeltaWriter,
) -> Result<ChunkStats, StageError> {
    let ty = schema.columns.iter().find(|c| c.name == column).map(|c| c.ty);
    let from = from_json
        .and_then(|j| serde_json::from_str(j).ok())
        .zip(ty)
        .and_then(|(j, ty)| key_value_from_json(&j, ty))
        .ok_or_else(|| StageError::NotFound(format!("run `{}` has no usable watermark", run.id)))?;
    let key_idx = schema.key_indexes();
    let names: Vec<&str> = schema.column_names().collect();
    let mut rx = src.read_since(spec, schema, column, &from);
    let (mut stats, mut delta, mut batch, mut scratch) = (ChunkStats::default(), Vec::new(), Vec::new(), Vec::new());
    while let Some(rows) = rx.recv().await {
        for values in rows? {
            stats.rows_read += 1;
            let hash = row_hash(&values, &mut scratch);
            stats.bytes_read += scratch.len() as i64;
            let kv: Vec<&Value> = key_idx.iter().map(|&i| &values[i]).collect();
            let mut key = Vec::with_capacity(16);
            encode_key(&mut key, &kv, &schema.key).map_err(SourceError::from)?;
            batch.push((key, hash, values));
            if batch.len() >= LOOKUP {
                compare(ctx, run, &names, &mut batch, &mut stats, &mut delta).await?;
            }
            out.extend(&mut delta).await?;
        }
    }
    compare(ctx, run, &names, &mut batch, &mut stats, &mut delta).await?;
    out.extend(&mut delta).await?;
    Ok(stats)
}
