//! Snapshot: plan a run's key-range chunks, then diff each chunk's source rows against staging in
//! one sorted merge join and write only the chunk's delta. Store writes scale with changes.

use super::cursor::Cursor;
use super::run_task;
use crate::ctx::Ctx;
use crate::domain::diff::{check_order, step, Op, Step};
use crate::domain::encoding::{row_hash, RowHash};
use crate::domain::job::{Job, Task};
use crate::domain::json::{write_object, write_value};
use crate::domain::key::{decode_key, encode_key};
use crate::domain::schema::{Drift, TableSchema};
use crate::domain::value::Value;
use crate::errors::{SourceError, StageError};
use crate::ports::{ChunkStats, DeltaRow, KeyRange, Run, RunState};

/// Delta rows written per store call.
const DELTA_FLUSH: usize = 2_000;

async fn chunk_jobs(ctx: &Ctx, job: &Job, run: &Run) -> Result<Vec<Job>, StageError> {
    Ok(ctx
        .store
        .chunks(&run.id)
        .await?
        .into_iter()
        .filter(|c| !c.done)
        .map(|c| {
            job.next(run_task(run, |tenant, source, run_id| Task::Chunk {
                tenant,
                source,
                run_id,
                chunk: c.no,
            }))
        })
        .collect())
}

fn merge_job(job: &Job, run: &Run) -> Job {
    job.next(run_task(run, |tenant, source, run_id| Task::Merge {
        tenant,
        source,
        run_id,
    }))
}

/// Describes the source, checks drift against staging's shape, and cuts chunks.
pub(super) async fn plan(ctx: &Ctx, job: &Job, run: &Run) -> Result<Vec<Job>, StageError> {
    match run.state {
        RunState::Planning => {}
        RunState::Snapshotting => return chunk_jobs(ctx, job, run).await,
        RunState::Snapshotted => return Ok(vec![merge_job(job, run)]),
        _ => return Ok(Vec::new()),
    }
    // Planning reads the latest config: a dead-lettered plan retried after a config fix uses the fix.
    let (version, config) = ctx
        .latest_config()
        .await?
        .ok_or_else(|| StageError::NotFound("no configuration applied".into()))?;
    let (src, spec, ds) = ctx.source_for(&config, &run.tenant, &run.source, version)?;
    let schema = src.describe(&spec).await?;
    let force_all = match ctx.store.staged_schema(&run.tenant, &run.source).await? {
        None => false,
        Some(old) => {
            let drift = Drift::between(&old, &schema);
            if drift.is_empty() {
                false
            } else if ds.accept_drift {
                tracing::warn!(tenant = %run.tenant, source = %run.source, %drift,
                    "schema drift accepted: re-sending every row in the new shape");
                true
            } else {
                return Err(StageError::Drift {
                    tenant: run.tenant.clone(),
                    source_id: run.source.clone(),
                    drift: drift.to_string(),
                });
            }
        }
    };
    let bounds = src.split(&spec, &schema, ds.chunk_rows).await?;
    let mut ranges = Vec::with_capacity(bounds.len() + 1);
    let mut lo = None;
    for b in bounds {
        ranges.push(KeyRange {
            lo: lo.take(),
            hi: Some(b.clone()),
        });
        lo = Some(b);
    }
    ranges.push(KeyRange { lo, hi: None });
    ctx.store.plan_run(run, &schema, force_all, version, &ranges).await?;
    chunk_jobs(ctx, job, run).await
}

/// A source row with its key bytes and hash.
struct Keyed {
    key: Vec<u8>,
    hash: RowHash,
    values: Vec<Value>,
}

fn render_key(values: &[&Value]) -> String {
    let mut s = String::from("[");
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write_value(&mut s, v);
    }
    s.push(']');
    s
}

/// Diffs one chunk and writes its delta; the last chunk to finish emits the merge job.
pub(super) async fn chunk(ctx: &Ctx, job: &Job, run: &Run, chunk_no: u32) -> Result<Vec<Job>, StageError> {
    match run.state {
        RunState::Snapshotting => {}
        RunState::Snapshotted => return Ok(vec![merge_job(job, run)]),
        _ => return Ok(Vec::new()), // a late duplicate: the run has moved on
    }
    let chunk = ctx
        .store
        .chunks(&run.id)
        .await?
        .into_iter()
        .find(|c| c.no == chunk_no)
        .ok_or_else(|| StageError::NotFound(format!("run `{}` has no chunk {chunk_no}", run.id)))?;
    if chunk.done {
        return Ok(Vec::new());
    }
    let schema = run
        .schema
        .clone()
        .ok_or_else(|| StageError::NotFound(format!("run `{}` was not planned", run.id)))?;
    let config = ctx.config(run.config_version).await?;
    let (src, spec, _) = ctx.source_for(&config, &run.tenant, &run.source, run.config_version)?;

    // A chunk replaces only its own delta: clear what an interrupted attempt left.
    ctx.store.reset_chunk(&run.id, &chunk).await?;
    let stats = diff_chunk(
        ctx,
        run,
        &schema,
        src.read(&spec, &schema, &chunk.range),
        &chunk.range,
        chunk_no,
    )
    .await?;
    let all_done = ctx.store.finish_chunk(&run.id, chunk_no, stats).await?;
    crate::crash::point("after_chunk_delta");
    Ok(if all_done {
        vec![merge_job(job, run)]
    } else {
        Vec::new()
    })
}

async fn diff_chunk(
    ctx: &Ctx,
    run: &Run,
    schema: &TableSchema,
    source_rows: crate::ports::Batches<Vec<Value>, SourceError>,
    range: &KeyRange,
    chunk_no: u32,
) -> Result<ChunkStats, StageError> {
    let key_idx = schema.key_indexes();
    let names: Vec<&str> = schema.column_names().collect();
    let key_names: Vec<&str> = schema.key.iter().map(String::as_str).collect();
    let mut source = Cursor::new(source_rows);
    let mut staging = Cursor::new(ctx.store.staging(&run.tenant, &run.source, range));
    let (mut scratch, mut prev_key): (Vec<u8>, Option<Vec<u8>>) = (Vec::new(), None);
    let mut stats = ChunkStats::default();
    let mut delta: Vec<DeltaRow> = Vec::new();
    let mut s_head: Option<Keyed> = None;
    let mut g_head = staging.next().await?;
    let mut s_done = false;
    loop {
        if s_head.is_none() && !s_done {
            match source.next().await? {
                None => s_done = true,
                Some(values) => {
                    stats.rows_read += 1;
                    let kv: Vec<&Value> = key_idx.iter().map(|&i| &values[i]).collect();
                    let mut key = Vec::with_capacity(16);
                    encode_key(&mut key, &kv, &schema.key).map_err(SourceError::from)?;
                    if let Some(prev) = &prev_key {
                        check_order(prev, &key, || render_key(&kv))?;
                    }
                    prev_key = Some(key.clone());
                    let hash = row_hash(&values, &mut scratch);
                    s_head = Some(Keyed { key, hash, values });
                }
            }
        }
        let st = step(
            s_head.as_ref().map(|k| (k.key.as_slice(), &k.hash)),
            g_head.as_ref().map(|(k, h)| (k.as_slice(), h)),
            run.force_all,
        );
        let row_json = |k: &Keyed| {
            let mut s = String::with_capacity(256);
            write_object(&mut s, names.iter().copied(), &k.values);
            s
        };
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
                let payload = row_json(&k);
                delta.push(DeltaRow {
                    key: k.key,
                    op,
                    hash: Some(k.hash),
                    payload,
                });
            }
            Step::Unchanged => {
                s_head = None;
                g_head = staging.next().await?;
            }
            Step::Delete => {
                let (key, _) = g_head.take().expect("step saw a staging row");
                stats.deletes += 1;
                let values = decode_key(&key).map_err(SourceError::from)?;
                let mut payload = String::new();
                write_object(&mut payload, key_names.iter().copied(), &values);
                delta.push(DeltaRow {
                    key,
                    op: Op::Delete,
                    hash: None,
                    payload,
                });
                g_head = staging.next().await?;
            }
        }
        if delta.len() >= DELTA_FLUSH {
            ctx.store
                .write_delta(&run.id, chunk_no, std::mem::take(&mut delta))
                .await?;
        }
    }
    if !delta.is_empty() {
        ctx.store.write_delta(&run.id, chunk_no, delta).await?;
    }
    Ok(stats)
}
