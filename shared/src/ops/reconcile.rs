//! Reconciliation: compares a data source with staging and with what the destination holds, and
//! repairs drift. The destination side uses its checksum endpoint (bucket counts and XOR hashes,
//! docs/push-protocol.md §Reconciliation), so a destination changed behind our back is found even
//! though staging still agrees with the source — which is why repair never relies on staging.

use super::repair;
use crate::ctx::Ctx;
use crate::domain::checksum::{bucket_of, row_checksum, Bucket};
use crate::domain::diff::{step, Step};
use crate::domain::encoding::row_hash;
use crate::domain::job::Job;
use crate::domain::json::{key_value_from_json, write_object, write_value};
use crate::domain::key::encode_key;
use crate::domain::schema::TableSchema;
use crate::domain::value::Value;
use crate::errors::{SourceError, StageError};
use crate::ports::KeyRange;
use crate::protocol::ChecksumRequest;
use crate::stages::cursor::Cursor;
use serde::Serialize;
use std::collections::HashMap;

/// What one data source's reconciliation found (and did).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Reconciliation {
    /// Tenant id.
    pub tenant: String,
    /// Data source id.
    pub source: String,
    /// Rows in the source.
    pub source_rows: u64,
    /// Rows at the destination.
    pub destination_rows: u64,
    /// Source rows that differ from staging: changes the next run will send (normal between syncs).
    pub staging_pending: u64,
    /// Buckets compared.
    pub buckets: u32,
    /// Buckets whose count or hash differs between source and destination.
    pub drifted_buckets: Vec<u32>,
    /// Source keys the destination lacks.
    pub missing: u64,
    /// Destination keys the source lacks.
    pub extra: u64,
    /// Keys on both sides with different rows.
    pub different: u64,
    /// A few drifted keys, for the operator.
    pub examples: Vec<String>,
    /// Keys scheduled for re-sending (with `repair`).
    pub repaired: u64,
    /// The run opened to send the repair, if one could be opened now.
    pub repair_run: Option<String>,
}

impl Reconciliation {
    /// True when the destination equals the source.
    pub fn in_sync(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0 && self.drifted_buckets.is_empty()
    }
}

struct SourceRow {
    key_text: String,
    key: Vec<u8>,
    checksum: u128,
}

fn describe_row(
    values: &[Value],
    schema: &TableSchema,
    key_idx: &[usize],
    names: &[&str],
) -> Result<SourceRow, StageError> {
    let kv: Vec<&Value> = key_idx.iter().map(|&i| &values[i]).collect();
    let mut key_text = String::from("[");
    for (i, v) in kv.iter().enumerate() {
        if i > 0 {
            key_text.push(',');
        }
        write_value(&mut key_text, v);
    }
    key_text.push(']');
    let mut key = Vec::new();
    encode_key(&mut key, &kv, &schema.key).map_err(SourceError::from)?;
    let mut row = String::new();
    write_object(&mut row, names.iter().copied(), values);
    let parsed: serde_json::Value = serde_json::from_str(&row).expect("we wrote valid JSON");
    Ok(SourceRow {
        key_text,
        key,
        checksum: row_checksum(&parsed),
    })
}

/// Compares one data source with staging and the destination; with `repair`, schedules exactly
/// the drifted keys for re-sending and opens a run to send them (its plan job is returned for
/// the caller to enqueue).
pub async fn reconcile(
    ctx: &Ctx,
    tenant: &str,
    source: &str,
    buckets: u32,
    repair: bool,
) -> Result<(Reconciliation, Vec<Job>), StageError> {
    let (version, config) = ctx
        .latest_config()
        .await?
        .ok_or_else(|| StageError::NotFound("no configuration applied".into()))?;
    let (src, spec, ds) = ctx.source_for(&config, tenant, source, version)?;
    let (dest_id, dest) = ctx.destination(&config, tenant, version)?;
    let pusher = ctx.connectors.pusher(dest_id, dest)?;
    let schema = src.describe(&spec).await?;
    let key_idx = schema.key_indexes();
    let names: Vec<&str> = schema.column_names().collect();
    let n = buckets.max(1);
    let mut out = Reconciliation {
        tenant: tenant.into(),
        source: source.into(),
        buckets: n,
        ..Default::default()
    };

    // Pass 1: bucket checksums of the source, and source vs staging in one merge join.
    let mut mine = vec![Bucket::default(); n as usize];
    let mut rows = src.read(&spec, &schema, &KeyRange::default());
    let mut staged = Cursor::new(ctx.store.staging(tenant, source, &KeyRange::default()));
    let mut scratch = Vec::new();
    let mut g_head = staged.next().await?;
    while let Some(batch) = rows.recv().await {
        for values in batch? {
            out.source_rows += 1;
            let r = describe_row(&values, &schema, &key_idx, &names)?;
            mine[bucket_of(&r.key_text, n) as usize].add(r.checksum);
            let h = row_hash(&values, &mut scratch);
            loop {
                match step(
                    Some((&r.key, &h)),
                    g_head.as_ref().map(|(k, gh)| (k.as_slice(), gh)),
                    false,
                ) {
                    Step::Delete => {
                        out.staging_pending += 1;
                        g_head = staged.next().await?;
                    }
                    Step::Insert => {
                        out.staging_pending += 1;
                        break;
                    }
                    Step::Update => {
                        out.staging_pending += 1;
                        g_head = staged.next().await?;
                        break;
                    }
                    _ => {
                        g_head = staged.next().await?;
                        break;
                    }
                }
            }
        }
    }
    while g_head.is_some() {
        out.staging_pending += 1;
        g_head = staged.next().await?;
    }

    // The destination's side.
    let dataset = ds.dataset_name(source).to_owned();
    let mut req = ChecksumRequest {
        tenant: tenant.into(),
        dataset,
        key: schema.key.clone(),
        buckets: n,
        detail: Vec::new(),
    };
    let theirs = pusher.checksums(&req).await?.ok_or_else(|| {
        StageError::NotFound(format!(
            "destination `{dest_id}` offers no checksum endpoint: it cannot be reconciled"
        ))
    })?;
    out.destination_rows = theirs.rows;
    out.drifted_buckets = (0..n)
        .filter(|&b| theirs.buckets.get(b as usize) != Some(&mine[b as usize]))
        .collect();
    if out.drifted_buckets.is_empty() {
        return Ok((out, Vec::new()));
    }

    // Pass 2, only for drifted buckets: key by key.
    req.detail = out.drifted_buckets.clone();
    let detail = pusher
        .checksums(&req)
        .await?
        .map(|r| r.rows_of_detail)
        .unwrap_or_default();
    let mut dest: HashMap<String, (String, Vec<serde_json::Value>)> = detail
        .into_iter()
        .map(|r| {
            (
                serde_json::to_string(&r.key).expect("JSON values serialise"),
                (r.hash, r.key),
            )
        })
        .collect();
    let mut keys = Vec::new();
    let mut rows = src.read(&spec, &schema, &KeyRange::default());
    while let Some(batch) = rows.recv().await {
        for values in batch? {
            let r = describe_row(&values, &schema, &key_idx, &names)?;
            if !out.drifted_buckets.contains(&bucket_of(&r.key_text, n)) {
                continue;
            }
            let verdict = match dest.remove(&r.key_text) {
                None => Some(("missing", &mut out.missing)),
                Some((h, _)) if h != format!("{:032x}", r.checksum) => Some(("different", &mut out.different)),
                Some(_) => None,
            };
            if let Some((what, count)) = verdict {
                *count += 1;
                if out.examples.len() < 10 {
                    out.examples.push(format!("{what} {}", r.key_text));
                }
                keys.push(r.key);
            }
        }
    }
    for (key_text, (_, key_values)) in dest {
        out.extra += 1;
        if out.examples.len() < 10 {
            out.examples.push(format!("extra {key_text}"));
        }
        let typed = key_idx
            .iter()
            .zip(&key_values)
            .map(|(&i, v)| key_value_from_json(v, schema.columns[i].ty))
            .collect::<Option<Vec<_>>>();
        if let Some(values) = typed {
            let mut key = Vec::new();
            if encode_key(&mut key, &values.iter().collect::<Vec<_>>(), &schema.key).is_ok() {
                keys.push(key);
            }
        }
    }
    let mut jobs = Vec::new();
    if repair {
        out.repaired = repair::schedule(ctx.store.as_ref(), tenant, source, keys).await?;
        (out.repair_run, jobs) = repair::open_run_now(ctx.store.as_ref(), tenant, source, version).await?;
    }
    Ok((out, jobs))
}
