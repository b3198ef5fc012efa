//! Compares a data source with what a receiver holds, row for row, through the same encoding the
//! pipeline uses.

use crate::domain::json::{write_object, write_value};
use crate::errors::SourceError;
use crate::ports::{KeyRange, SnapshotSource, SourceSpec};
use serde::Serialize;
use std::collections::HashMap;

/// The outcome of one comparison.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct VerifyReport {
    /// Rows in the source.
    pub source_rows: u64,
    /// Rows at the destination.
    pub destination_rows: u64,
    /// Source keys the destination lacks.
    pub missing: u64,
    /// Destination keys the source lacks.
    pub extra: u64,
    /// Keys present on both sides with different rows.
    pub different: u64,
    /// Up to five keys that differ, for the operator.
    pub examples: Vec<String>,
}

impl VerifyReport {
    /// True when both sides are equal.
    pub fn equal(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0
    }
}

/// Compares every data source (or one) of a tenant (or of all tenants) with a receiver database, using
/// the latest config: one report per (tenant, data source).
#[cfg(feature = "receiver")]
pub async fn verify_receiver(
    ctx: &crate::ctx::Ctx,
    receiver: &crate::receiver::db::ReceiverDb,
    tenant: Option<&str>,
    source: Option<&str>,
) -> Result<Vec<(String, String, VerifyReport)>, crate::errors::StageError> {
    let (version, config) = ctx
        .latest_config()
        .await?
        .ok_or_else(|| crate::errors::StageError::NotFound("no configuration applied".into()))?;
    let mut out = Vec::new();
    for (tid, t) in config
        .tenants
        .iter()
        .filter(|(id, _)| tenant.is_none_or(|w| w == id.as_str()))
    {
        for (sid, ds) in t
            .sources
            .iter()
            .filter(|(id, _)| source.is_none_or(|w| w == id.as_str()))
        {
            let (src, spec, _) = ctx.source_for(&config, tid, sid, version)?;
            let rows = receiver
                .rows(tid, ds.dataset_name(sid))
                .map_err(|e| crate::errors::StoreError::Db {
                    context: "read receiver",
                    detail: e.to_string(),
                })?;
            let report = compare(src.as_ref(), &spec, rows.into_iter().collect()).await?;
            out.push((tid.clone(), sid.clone(), report));
        }
    }
    Ok(out)
}

/// Reads the whole source and compares it with `destination` (key text → row JSON).
pub async fn compare(
    source: &dyn SnapshotSource,
    spec: &SourceSpec,
    mut destination: HashMap<String, String>,
) -> Result<VerifyReport, SourceError> {
    let schema = source.describe(spec).await?;
    let key_idx = schema.key_indexes();
    let names: Vec<&str> = schema.column_names().collect();
    let mut report = VerifyReport {
        destination_rows: destination.len() as u64,
        ..Default::default()
    };
    let mut rx = source.read(spec, &schema, &KeyRange::default());
    while let Some(batch) = rx.recv().await {
        for values in batch? {
            report.source_rows += 1;
            let mut key = String::from("[");
            for (i, &k) in key_idx.iter().enumerate() {
                if i > 0 {
                    key.push(',');
                }
                write_value(&mut key, &values[k]);
            }
            key.push(']');
            let mut row = String::new();
            write_object(&mut row, names.iter().copied(), &values);
            match destination.remove(&key) {
                None => {
                    report.missing += 1;
                    if report.examples.len() < 5 {
                        report.examples.push(format!("missing {key}"));
                    }
                }
                Some(dest) => {
                    let a: serde_json::Value = serde_json::from_str(&row).expect("we wrote valid JSON");
                    let b: Option<serde_json::Value> = serde_json::from_str(&dest).ok();
                    if b.as_ref() != Some(&a) {
                        report.different += 1;
                        if report.examples.len() < 5 {
                            report.examples.push(format!("different {key}"));
                        }
                    }
                }
            }
        }
    }
    report.extra = destination.len() as u64;
    for k in destination.keys().take(5usize.saturating_sub(report.examples.len())) {
        report.examples.push(format!("extra {k}"));
    }
    Ok(report)
}
