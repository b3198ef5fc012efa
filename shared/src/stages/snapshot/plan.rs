//! Planning a run: describe the source, check the shape against staging's, decide how changes
//! are found (a watermark read or a full diff), and cut key-range chunks.

use super::{chunk_jobs, merge_job};
use crate::ctx::Ctx;
use crate::domain::config::{in_window, parse_hours, DataSource, DiffMode};
use crate::domain::job::Job;
use crate::domain::json::{key_value_from_json, write_value};
use crate::domain::schema::{ColumnType, Drift, TableSchema};
use crate::domain::value::Value;
use crate::errors::StageError;
use crate::ports::{KeyRange, Plan, Run, RunKind, RunMode, RunState, SnapshotSource, SourceSpec};
use chrono::{Duration, Timelike, Utc};

/// Plans the run; outside the connection's heavy hours an initial sync or full diff waits.
pub(in crate::stages) async fn plan(ctx: &Ctx, job: &Job, run: &Run) -> Result<Vec<Job>, StageError> {
    match run.state {
        RunState::Planning => {}
        RunState::Snapshotting => {
            // A revived run numbered at commit may have saved batches whose pushes were lost.
            let mut jobs = chunk_jobs(ctx, job, run).await?;
            if run.mode.as_ref().is_some_and(|m| m.numbered) {
                jobs.extend(crate::stages::batch::pushes(ctx, job, run).await?);
            }
            return Ok(jobs);
        }
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
    let mut force_all = false;
    if let Some(old) = ctx.store.staged_schema(&run.tenant, &run.source).await? {
        let drift = Drift::between(&old, &schema);
        // Excluding or masking columns changes the shape on purpose: a controlled resync.
        let privacy: Vec<&String> = old
            .excluded
            .iter()
            .chain(&old.masked)
            .chain(&schema.excluded)
            .chain(&schema.masked)
            .collect();
        let planned = (old.excluded != schema.excluded || old.masked != schema.masked)
            && drift.added.iter().chain(&drift.dropped).all(|c| privacy.contains(&c))
            && drift
                .retyped
                .iter()
                .all(|r| privacy.iter().any(|p| r.starts_with(&format!("{p}:"))))
            && !drift.key_changed;
        if !drift.is_empty() && !ds.accept_drift && !planned {
            return Err(StageError::Drift {
                tenant: run.tenant.clone(),
                source_id: run.source.clone(),
                drift: drift.to_string(),
            });
        }
        if planned {
            tracing::warn!(tenant = %run.tenant, source = %run.source, "excluded or masked columns changed: re-sending every row once");
            ctx.store
                .note_error(&run.id, "excluded or masked columns changed: every row is re-sent once")
                .await?;
            force_all = true;
        } else if !drift.is_empty() {
            tracing::warn!(tenant = %run.tenant, source = %run.source, %drift,
                "schema drift accepted: re-sending every row in the new shape");
            force_all = true;
        }
    }
    let mut mode = choose_mode(ctx, run, &ds, src.as_ref(), &spec, &schema).await?;
    mode.numbered = mode.full && ctx.number_at_commit && nothing_staged(ctx, run).await?;
    if mode.full {
        let conn = config.tenant(&run.tenant, version)?.connections.get(&ds.connection);
        if let Some((start, end)) = conn.and_then(|c| c.heavy_hours.as_deref()).and_then(parse_hours) {
            let now = Utc::now();
            if !in_window(now.hour(), (start, end)) {
                let hours = (24 + start - now.hour()) % 24;
                let at = (now + Duration::hours(hours as i64))
                    .with_minute(0)
                    .and_then(|t| t.with_second(0))
                    .unwrap_or(now);
                tracing::info!(tenant = %run.tenant, source = %run.source, %at, "heavy work waits for the sync window");
                ctx.store
                    .defer_run(
                        &run.id,
                        &format!("waiting for the sync window (heavy hours {start}-{end} UTC)"),
                        at,
                    )
                    .await?;
                let mut again = job.next(job.task.clone());
                again.not_before = Some(at);
                return Ok(vec![again]);
            }
        }
    }
    let ranges = if matches!(mode.mode, DiffMode::Watermark | DiffMode::ChangeTracking) && !mode.full {
        vec![KeyRange::default()] // a watermark or change-table read is one small query
    } else {
        KeyRange::cut_at(src.split(&spec, &schema, ds.chunk_rows).await?)
    };
    let plan = Plan {
        schema,
        force_all,
        config_version: version,
        mode,
    };
    ctx.store.plan_run(run, &plan, &ranges).await?;
    chunk_jobs(ctx, job, run).await
}

/// Whether staging holds nothing of the run's data source: then every change of a whole-table
/// read is an insert, and its chunks can number their own batches (decision 0025). A staged
/// schema answers at once for a data source synced before; the key read covers one whose runs
/// never finished (a key staged before its run was abandoned).
async fn nothing_staged(ctx: &Ctx, run: &Run) -> Result<bool, StageError> {
    if ctx.store.staged_schema(&run.tenant, &run.source).await?.is_some() {
        return Ok(false);
    }
    let mut keys = ctx.store.staging(&run.tenant, &run.source, &KeyRange::default());
    while let Some(batch) = keys.recv().await {
        if !batch?.is_empty() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Decides how this run finds changes and notes a change of diff mode (a controlled resync:
/// staging's hashes of one mode match no row of the other, so every row is re-sent once).
async fn choose_mode(
    ctx: &Ctx,
    run: &Run,
    ds: &DataSource,
    src: &dyn SnapshotSource,
    spec: &SourceSpec,
    schema: &TableSchema,
) -> Result<RunMode, StageError> {
    let previous = ctx
        .store
        .runs(Some(&run.tenant), 100)
        .await?
        .into_iter()
        .filter(|r| r.source == run.source && r.id != run.id && r.display_state() == "done")
        .find_map(|r| r.mode);
    let hashes_of = |m: DiffMode| {
        if m == DiffMode::RemoteHash {
            "remote"
        } else {
            "canonical"
        }
    };
    if let Some(prev) = previous.as_ref().filter(|p| hashes_of(p.mode) != hashes_of(ds.diff)) {
        tracing::warn!(tenant = %run.tenant, source = %run.source, from = prev.mode.as_str(), to = ds.diff.as_str(),
            "diff mode changed: a controlled resync re-sends every row once");
        ctx.store
            .note_error(
                &run.id,
                &format!(
                    "diff mode changed from {} to {}: every row is re-sent once",
                    prev.mode.as_str(),
                    ds.diff.as_str()
                ),
            )
            .await?;
    }
    if ds.diff == DiffMode::ChangeTracking {
        // The next version is taken before reading, so changes committed meanwhile are read again.
        let (current, min_valid) = src.change_versions(spec).await?;
        let (cursor, _) = ctx.store.cursor(&run.tenant, &run.source).await?;
        let start = tracking_start(run.kind == RunKind::Initial, cursor.as_deref(), min_valid);
        if let Err(Some(reason)) = &start {
            tracing::warn!(tenant = %run.tenant, source = %run.source, %reason, "change tracking: full snapshot diff instead");
            ctx.store.note_error(&run.id, reason).await?;
        }
        return Ok(RunMode {
            mode: DiffMode::ChangeTracking,
            full: start.is_err(),
            from: start.ok().map(|v| v.to_string()),
            next: Some(format!("{TRACKED}{current}")),
            numbered: false,
        });
    }
    if ds.diff != DiffMode::Watermark {
        return Ok(RunMode {
            mode: ds.diff,
            full: true,
            from: None,
            next: None,
            numbered: false,
        });
    }
    let column = ds.watermark_column.as_deref().unwrap_or_default();
    let ty = schema
        .columns
        .iter()
        .find(|c| c.name == column)
        .map(|c| c.ty)
        .ok_or_else(|| {
            StageError::NotFound(format!(
                "tenant `{}`, data source `{}`: watermark column `{column}` is not in the source",
                run.tenant, run.source
            ))
        })?;
    // The next cursor is taken before reading, so rows changed during the read are read again.
    let next = src.max_of(spec, schema, column).await?.map(|v| {
        let mut s = String::new();
        write_value(&mut s, &v);
        s
    });
    let (cursor, last_full) = ctx.store.cursor(&run.tenant, &run.source).await?;
    let full_due = last_full.is_none_or(|t| Utc::now() - t >= Duration::seconds(ds.full_diff_interval_secs as i64));
    let from = cursor.as_deref().and_then(|c| back_off(c, ty, ds.watermark_overlap));
    let full = run.kind == RunKind::Initial || full_due || from.is_none();
    Ok(RunMode {
        mode: DiffMode::Watermark,
        full,
        from: if full { None } else { from },
        next,
        numbered: false,
    })
}

/// How a stored change-tracking version is marked, so neither it nor a watermark is ever read
/// as the other after the data source's diff mode changes.
const TRACKED: &str = "ct:";

/// Where a change-tracking run starts: `Ok(version)` reads the changes since it; `Err(reason)`
/// is a full snapshot diff, with the reason the run history shows (`None` for the expected
/// first run: there is no version to start from).
fn tracking_start(initial: bool, cursor: Option<&str>, min_valid: Option<i64>) -> Result<i64, Option<String>> {
    let Some(min_valid) = min_valid else {
        return Err(Some(
            "change tracking is not enabled for the table (ALTER TABLE … ENABLE CHANGE_TRACKING): \
             a full snapshot diff instead"
                .into(),
        ));
    };
    // Only a version this mode stored counts: a watermark left by an earlier diff mode is not one.
    match cursor.and_then(|c| c.strip_prefix(TRACKED)?.parse::<i64>().ok()) {
        _ if initial => Err(None),
        None => Err(None),
        Some(v) if v < min_valid => Err(Some(format!(
            "change tracking: the stored version {v} is older than CHANGE_TRACKING_MIN_VALID_VERSION {min_valid} \
             (its changes were cleaned up): a full snapshot diff instead"
        ))),
        Some(v) => Ok(v),
    }
}

/// The cursor minus the overlap, as protocol JSON.
fn back_off(cursor_json: &str, ty: ColumnType, overlap: i64) -> Option<String> {
    let v = key_value_from_json(&serde_json::from_str(cursor_json).ok()?, ty)?;
    let back = match v {
        Value::Int(i) => Value::Int(i.saturating_sub(overlap)),
        Value::Timestamp(t) => Value::Timestamp(t - Duration::seconds(overlap)),
        Value::TimestampTz(t) => Value::TimestampTz(t - Duration::seconds(overlap)),
        Value::Date(d) => Value::Date(d - Duration::days(overlap.div_euclid(86_400) + 1)),
        _ => return None,
    };
    let mut s = String::new();
    write_value(&mut s, &back);
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_back_off_by_the_overlap() {
        assert_eq!(back_off("100", ColumnType::Int, 10).as_deref(), Some("90"));
        assert_eq!(
            back_off("\"2025-01-01T00:01:00+00:00\"", ColumnType::Timestamptz, 60).as_deref(),
            Some("\"2025-01-01T00:00:00+00:00\"")
        );
        assert_eq!(back_off("\"x\"", ColumnType::Int, 1), None);
    }

    #[test]
    fn change_tracking_falls_back_to_a_full_diff_and_says_why() {
        assert_eq!(tracking_start(false, Some("ct:42"), Some(40)), Ok(42));
        assert_eq!(tracking_start(false, Some("ct:40"), Some(40)), Ok(40));
        assert_eq!(
            tracking_start(true, Some("ct:42"), Some(40)),
            Err(None),
            "an initial sync reads everything"
        );
        assert_eq!(tracking_start(false, None, Some(0)), Err(None), "no stored version yet");
        let stale = tracking_start(false, Some("ct:7"), Some(40)).unwrap_err().unwrap();
        assert!(
            stale.contains("stored version 7 is older than CHANGE_TRACKING_MIN_VALID_VERSION 40"),
            "{stale}"
        );
        let off = tracking_start(false, Some("ct:7"), None).unwrap_err().unwrap();
        assert!(off.contains("not enabled"), "{off}");
        assert!(
            tracking_start(true, None, None).unwrap_err().is_some(),
            "said even on the first run"
        );
        assert_eq!(
            tracking_start(false, Some("42"), Some(0)),
            Err(None),
            "a watermark is not a version"
        );
        assert_eq!(
            back_off("ct:42", ColumnType::Int, 0),
            None,
            "and a version is not a watermark"
        );
    }
}
