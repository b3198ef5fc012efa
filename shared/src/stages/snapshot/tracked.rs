//! Change-tracking reads: the keys the source's change table lists since the stored version,
//! each with its row if the source still has it. Rows are compared with staging by key like a
//! watermark read (a key changed and changed back is not sent); a key the source no longer has
//! is a delete if staging has it.

use super::watermark::compare;
use crate::ctx::Ctx;
use crate::domain::encoding::row_hash;
use crate::domain::key::encode_key;
use crate::domain::schema::TableSchema;
use crate::domain::value::Value;
use crate::errors::{SourceError, StageError};
use crate::ports::{Batches, ChunkStats, Run, TrackedChange};

/// Keys compared with staging per lookup.
const LOOKUP: usize = 500;

/// Writes the delta of the changes `changes` lists.
pub(super) async fn diff_changes(
    ctx: &Ctx,
    run: &Run,
    schema: &TableSchema,
    mut changes: Batches<TrackedChange, SourceError>,
    out: &mut super::DeltaWriter,
) -> Result<ChunkStats, StageError> {
    let key_idx = schema.key_indexes();
    let names: Vec<&str> = schema.column_names().collect();
    let key_names: Vec<&str> = schema.key.iter().map(String::as_str).collect();
    let (mut stats, mut delta, mut rows, mut gone, mut scratch) =
        (ChunkStats::default(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let key_of = |values: &[&Value]| -> Result<Vec<u8>, StageError> {
        let mut key = Vec::with_capacity(16);
        encode_key(&mut key, values, &schema.key).map_err(SourceError::from)?;
        Ok(key)
    };
    while let Some(batch) = changes.recv().await {
        for change in batch? {
            match change {
                TrackedChange::Row(values) => {
                    stats.rows_read += 1;
                    let hash = row_hash(&values, &mut scratch);
                    stats.bytes_read += scratch.len() as i64;
                    let key = key_of(&key_idx.iter().map(|&i| &values[i]).collect::<Vec<_>>())?;
                    rows.push((key, hash, values));
                }
                TrackedChange::Gone(key_values) => gone.push(key_of(&key_values.iter().collect::<Vec<_>>())?),
            }
            if rows.len() >= LOOKUP {
                compare(ctx, run, &names, &mut rows, &mut stats, &mut delta).await?;
            }
            if gone.len() >= LOOKUP {
                deletes(ctx, run, &key_names, &mut gone, &mut stats, &mut delta).await?;
            }
            out.extend(&mut delta).await?;
        }
    }
    compare(ctx, run, &names, &mut rows, &mut stats, &mut delta).await?;
    deletes(ctx, run, &key_names, &mut gone, &mut stats, &mut delta).await?;
    out.extend(&mut delta).await?;
    Ok(stats)
}

/// Delete markers for the keys staging has (a key inserted and deleted between two runs was
/// never sent, so there is nothing to delete).
async fn deletes(
    ctx: &Ctx,
    run: &Run,
    key_names: &[&str],
    gone: &mut Vec<Vec<u8>>,
    stats: &mut ChunkStats,
    delta: &mut Vec<crate::ports::DeltaRow>,
) -> Result<(), StageError> {
    if gone.is_empty() {
        return Ok(());
    }
    let staged = ctx
        .store
        .staged_hashes(&run.tenant, &run.source, std::mem::take(gone))
        .await?;
    for (key, _) in staged {
        stats.deletes += 1;
        delta.push(super::delete_marker(key, key_names)?);
    }
    Ok(())
}
