//! `signals status`: run history per tenant and data source.

use crate::app::{open_queue, open_store, StoreSpec};

/// Prints runs newest first (state incl. `blocked`, rows, changes, duration, last error).
pub async fn status(spec: &StoreSpec, tenant: Option<&str>, json: bool, limit: usize) -> anyhow::Result<()> {
    let store = open_store(spec).await?;
    let runs = store.runs(tenant, limit).await?;
    let open_dl = store.dead_letters(true).await?.len();
    // Operator pauses, per tenant: `None` pauses the whole tenant.
    let mut paused: Vec<(String, Option<String>)> = Vec::new();
    let mut tenants: Vec<&str> = runs.iter().map(|r| r.tenant.as_str()).collect();
    tenants.sort_unstable();
    tenants.dedup();
    for t in tenants {
        paused.extend(store.pauses(t).await?.into_iter().map(|s| (t.to_owned(), s)));
    }
    let is_paused = |r: &signals_shared::ports::Run| {
        paused
            .iter()
            .any(|(t, s)| *t == r.tenant && s.as_deref().is_none_or(|s| s == r.source))
    };
    let state = |r: &signals_shared::ports::Run| -> &'static str {
        match r.display_state() {
            "done" | "abandoned" | "blocked" => r.display_state(),
            _ if is_paused(r) => "paused",
            other => other,
        }
    };
    let (depth, oldest) = open_queue(spec, &store).await?.depth(&[]).await?;
    let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    let timings = store.stage_timings(&ids).await?;
    let stages_of = |r: &signals_shared::ports::Run| {
        let id = r.id.clone();
        timings.iter().filter(move |t| t.run_id == id)
    };
    if json {
        let out = serde_json::json!({
            "runs": runs.iter().map(|r| {
                let mut v = serde_json::to_value(r).expect("runs serialise");
                v["state"] = state(r).into();
                if r.finished_at.is_none() {
                    v["progress"] = progress(r).into();
                }
                v.as_object_mut().map(|o| o.remove("schema"));
                v["stages"] = stages_of(r).map(|t| serde_json::json!({
                    "stage": t.stage, "jobs": t.jobs, "failures": t.failures, "busy_ms": t.busy_ms,
                    "wall_ms": (t.last_finished_at - t.first_started_at).num_milliseconds(),
                    "first_started_at": t.first_started_at, "last_finished_at": t.last_finished_at,
                })).collect::<Vec<_>>().into();
                v
            }).collect::<Vec<_>>(),
            "open_dead_letters": open_dl,
            "paused": paused.iter().map(|(t, s)| match s { Some(s) => format!("{t}/{s}"), None => t.clone() }).collect::<Vec<_>>(),
            "queue": { "depth": depth, "oldest_age_secs": oldest.map(|d| d.as_secs_f64()) },
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<12} {:<16} {:<8} {:<12} {:<12} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9} {:>8} {:>23}  last error",
        "tenant",
        "source",
        "kind",
        "mode",
        "state",
        "rows",
        "read MB",
        "inserts",
        "updates",
        "deletes",
        "batches",
        "secs",
        "snap/merge/batch/push s"
    );
    for r in &runs {
        let secs = r
            .finished_at
            .map(|f| (f - r.created_at).num_milliseconds() as f64 / 1000.0);
        let mode = r
            .mode
            .as_ref()
            .map_or("-".to_owned(), |m| match (m.mode.as_str(), m.full) {
                ("watermark", true) => "wm-full".into(),
                ("watermark", false) => "wm-since".into(),
                (other, _) => other.into(),
            });
        println!(
            "{:<12} {:<16} {:<8} {:<12} {:<12} {:>9} {:>9.2} {:>8} {:>8} {:>8} {:>4}/{:<4} {:>8} {:>23}  {}",
            r.tenant,
            r.source,
            r.kind.as_str(),
            mode,
            state(r),
            r.rows_read,
            r.bytes_read as f64 / 1e6,
            r.inserts,
            r.updates,
            r.deletes,
            r.batches_delivered,
            r.batches_total,
            secs.map_or_else(|| progress(r), |s| format!("{s:.1}")),
            busy_by_stage(stages_of(r), r.batches_total > 0),
            r.last_error
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(100)
                .collect::<String>()
        );
    }
    println!(
        "\nqueue: {depth} jobs{}; open dead letters: {open_dl}",
        oldest.map_or(String::new(), |o| format!(", oldest visible {:.0}s", o.as_secs_f64()))
    );
    if !paused.is_empty() {
        let list: Vec<String> = paused
            .iter()
            .map(|(t, s)| s.as_ref().map_or(t.clone(), |s| format!("{t}/{s}")))
            .collect();
        println!("paused: {} (`signals resume` to continue)", list.join(", "));
    }
    if open_dl > 0 {
        println!("blocked runs wait for `signals dlq retry ID` (see `signals dlq list`)");
    }
    Ok(())
}

/// Job time per stage (seconds, summed over the stage's jobs), snapshot/merge/batch/push. A run
/// whose merge job cut its batches beside the merge (decision 0019) has no batch job: its cut is
/// in the merge's figure, and the batch column says so rather than `-`, which reads as "not yet".
fn busy_by_stage<'a>(
    timings: impl Iterator<Item = &'a signals_shared::ports::StageTiming> + Clone,
    batched: bool,
) -> String {
    let merged = timings.clone().any(|t| t.stage == "merge");
    ["snapshot", "merge", "batch", "push"]
        .iter()
        .map(|stage| match timings.clone().find(|t| t.stage == *stage) {
            Some(t) => format!("{:.1}", t.busy_ms as f64 / 1000.0),
            None if *stage == "batch" && batched && merged => "in merge".to_owned(),
            None => "-".to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// For a run still going: chunks done, rows per second so far, and the time left at that pace.
pub fn progress(r: &signals_shared::ports::Run) -> String {
    let elapsed = (chrono::Utc::now() - r.created_at).num_milliseconds().max(1) as f64 / 1000.0;
    if r.chunks_total == 0 || r.chunks_done == 0 {
        return format!("{elapsed:.0}s…");
    }
    if r.chunks_done < r.chunks_total {
        let eta = elapsed / r.chunks_done as f64 * (r.chunks_total - r.chunks_done) as f64;
        return format!(
            "{}/{} chunks {:.0} rows/s ETA {eta:.0}s",
            r.chunks_done,
            r.chunks_total,
            r.rows_read as f64 / elapsed
        );
    }
    format!("pushing {}/{}", r.batches_delivered, r.batches_total)
}

#[cfg(test)]
mod tests {
    use super::busy_by_stage;
    use signals_shared::ports::StageTiming;

    fn timing(stage: &str, busy_ms: i64) -> StageTiming {
        let at = chrono::Utc::now();
        StageTiming {
            run_id: "r".into(),
            stage: stage.into(),
            jobs: 1,
            failures: 0,
            busy_ms,
            first_started_at: at,
            last_finished_at: at,
        }
    }

    #[test]
    fn a_cut_beside_the_merge_is_shown_in_the_merge_not_missing() {
        let beside = [timing("snapshot", 2_000), timing("merge", 2_500), timing("push", 1_600)];
        assert_eq!(busy_by_stage(beside.iter(), true), "2.0/2.5/in merge/1.6");
        let apart = [
            timing("snapshot", 2_000),
            timing("merge", 1_300),
            timing("batch", 1_600),
        ];
        assert_eq!(busy_by_stage(apart.iter(), true), "2.0/1.3/1.6/-");
        // Merged, not cut yet: nothing to show for the batch stage.
        assert_eq!(busy_by_stage(apart[..2].iter(), false), "2.0/1.3/-/-");
        assert_eq!(busy_by_stage(apart[..1].iter(), false), "2.0/-/-/-");
    }
}
