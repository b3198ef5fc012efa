//! Runs and chunks in SQLite.

use super::{from_ms, now_ms, SqliteStore};
use crate::errors::StoreError;
use crate::ports::{Chunk, KeyRange, Plan, Run, RunKind, RunState, RunStore, StageTiming};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

/// Columns read for a [`Run`], in `map_run` order.
pub(super) const RUN_COLS: &str = "id, tenant, source, kind, state, config_version, created_at, finished_at, \
    chunks_total, chunks_done, rows_read, inserts, updates, deletes, batches_total, batches_delivered, bytes, \
        schema_json, force_all, last_error, \
    (SELECT COUNT(*) FROM dead_letters d WHERE d.run_id = runs.id AND d.state = 'open'), bytes_read, diff_mode";

fn corrupt(what: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, what.to_owned(), rusqlite::types::Type::Text)
}

pub(super) fn map_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    let kind: String = r.get(3)?;
    let state: String = r.get(4)?;
    let schema: Option<String> = r.get(17)?;
    Ok(Run {
        id: r.get(0)?,
        tenant: r.get(1)?,
        source: r.get(2)?,
        kind: if kind == "initial" {
            RunKind::Initial
        } else {
            RunKind::Interval
        },
        state: RunState::parse(&state).ok_or_else(|| corrupt("run state"))?,
        config_version: r.get(5)?,
        created_at: from_ms(r.get(6)?),
        finished_at: r.get::<_, Option<i64>>(7)?.map(from_ms),
        chunks_total: r.get(8)?,
        chunks_done: r.get(9)?,
        rows_read: r.get(10)?,
        inserts: r.get(11)?,
        updates: r.get(12)?,
        deletes: r.get(13)?,
        batches_total: r.get(14)?,
        batches_delivered: r.get(15)?,
        bytes: r.get(16)?,
        schema: match schema {
            Some(s) => Some(serde_json::from_str(&s).map_err(|_| corrupt("run schema"))?),
            None => None,
        },
        force_all: r.get(18)?,
        last_error: r.get(19)?,
        dead_letters: r.get(20)?,
        bytes_read: r.get(21)?,
        mode: r
            .get::<_, Option<String>>(22)?
            .and_then(|m| serde_json::from_str(&m).ok()),
    })
}

pub(super) fn load_run(c: &rusqlite::Connection, run_id: &str) -> rusqlite::Result<Option<Run>> {
    c.query_row(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"), [run_id], map_run)
        .optional()
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn open_run(
        &self,
        tenant: &str,
        source: &str,
        kind: RunKind,
        config_version: i64,
    ) -> Result<Option<Run>, StoreError> {
        let (tenant, source) = (tenant.to_owned(), source.to_owned());
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.db
            .write("open run", move |tx| {
                let now = now_ms();
                let n = tx.execute(
                    "INSERT INTO runs (id, tenant, source, kind, state, config_version, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, 'planning', ?5, ?6, ?6) ON CONFLICT DO NOTHING",
                    params![id, tenant, source, kind.as_str(), config_version, now],
                )?;
                if n == 0 {
                    return Ok(None);
                }
                load_run(tx, &id)
            })
            .await
    }

    async fn run(&self, tenant: &str, run_id: &str) -> Result<Option<Run>, StoreError> {
        let (tenant, run_id) = (tenant.to_owned(), run_id.to_owned());
        let run = self.db.read("load run", move |c| load_run(c, &run_id)).await?;
        // Scoped by tenant: one tenant's job can never see another's run.
        Ok(run.filter(|r| r.tenant == tenant))
    }

    async fn runs(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<Run>, StoreError> {
        let tenant = tenant.map(str::to_owned);
        self.db
            .read("list runs", move |c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {RUN_COLS} FROM runs WHERE (?1 IS NULL OR tenant = ?1) \
                     ORDER BY created_at DESC, rowid DESC LIMIT ?2"
                ))?;
                let rows = stmt.query_map(params![tenant, limit as i64], map_run)?;
                rows.collect()
            })
            .await
    }

    async fn source_clocks(&self, tenant: &str) -> Result<Vec<(String, DateTime<Utc>, bool)>, StoreError> {
        let tenant = tenant.to_owned();
        self.db
            .read("source clocks", move |c| {
                let mut stmt = c.prepare(
                    "SELECT source, MAX(created_at), MAX(state NOT IN ('done', 'abandoned')) FROM runs WHERE tenant = ?1 GROUP BY source",
                )?;
                let rows = stmt.query_map([tenant], |r| Ok((r.get(0)?, from_ms(r.get(1)?), r.get(2)?)))?;
                rows.collect()
            })
            .await
    }

    async fn plan_run(&self, run: &Run, plan: &Plan, chunks: &[KeyRange]) -> Result<bool, StoreError> {
        let run_id = run.id.clone();
        let schema = serde_json::to_string(&plan.schema).expect("schemas serialise");
        let mode = serde_json::to_string(&plan.mode).expect("modes serialise");
        let (force_all, config_version) = (plan.force_all, plan.config_version);
        let chunks = chunks.to_vec();
        self.db
            .write("plan run", move |tx| {
                let n = tx.execute(
                    "UPDATE runs SET state = 'snapshotting', schema_json = ?2, force_all = ?3, config_version = ?4, \
                     chunks_total = ?5, updated_at = ?6, diff_mode = ?7 WHERE id = ?1 AND state = 'planning'",
                    params![
                        run_id,
                        schema,
                        force_all,
                        config_version,
                        chunks.len() as i64,
                        now_ms(),
                        mode
                    ],
                )?;
                if n == 0 {
                    return Ok(false);
                }
                let mut ins = tx.prepare("INSERT INTO chunks (run_id, chunk_no, lo, hi) VALUES (?1, ?2, ?3, ?4)")?;
                for (i, c) in chunks.iter().enumerate() {
                    ins.execute(params![run_id, i as i64, c.lo, c.hi])?;
                }
                Ok(true)
            })
            .await
    }

    async fn chunks(&self, run_id: &str) -> Result<Vec<Chunk>, StoreError> {
        let run_id = run_id.to_owned();
        self.db
            .read("list chunks", move |c| {
                let mut stmt = c.prepare(
                    "SELECT chunk_no, lo, hi, done, resume_key FROM chunks WHERE run_id = ?1 ORDER BY chunk_no",
                )?;
                let rows = stmt.query_map([run_id], |r| {
                    Ok(Chunk {
                        no: r.get(0)?,
                        range: KeyRange {
                            lo: r.get(1)?,
                            hi: r.get(2)?,
                        },
                        done: r.get(3)?,
                        resume: r.get(4)?,
                    })
                })?;
                rows.collect()
            })
            .await
    }

    async fn record_verification(
        &self,
        tenant: &str,
        source: &str,
        report_json: &str,
        in_sync: Option<bool>,
    ) -> Result<(), StoreError> {
        let (tenant, source, report) = (tenant.to_owned(), source.to_owned(), report_json.to_owned());
        self.db
            .write("record verification", move |tx| {
                tx.execute(
                    "INSERT INTO verifications (tenant, source, at, in_sync, report_json) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (tenant, source) DO UPDATE SET at = excluded.at, in_sync = excluded.in_sync, \
                     report_json = excluded.report_json",
                    params![tenant, source, now_ms(), in_sync, report],
                )?;
                Ok(())
            })
            .await
    }

    async fn last_verifications(&self, tenant: &str) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let tenant = tenant.to_owned();
        self.db
            .read("last verifications", move |c| {
                let mut stmt = c.prepare("SELECT source, at FROM verifications WHERE tenant = ?1")?;
                let rows = stmt.query_map([tenant], |r| Ok((r.get(0)?, from_ms(r.get(1)?))))?;
                rows.collect()
            })
            .await
    }

    async fn abandon_run(&self, run_id: &str, reason: &str) -> Result<(), StoreError> {
        let (run_id, reason) = (run_id.to_owned(), reason.to_owned());
        self.db
            .write("abandon run", move |tx| {
                tx.execute(
                    "UPDATE runs SET state = 'abandoned', last_error = ?2, finished_at = ?3, updated_at = ?3 \
                     WHERE id = ?1 AND state NOT IN ('done', 'abandoned')",
                    params![run_id, reason, now_ms()],
                )?;
                tx.execute("DELETE FROM deltas WHERE run_id = ?1", [&run_id])?;
                tx.execute("DELETE FROM delta_segments WHERE run_id = ?1", [&run_id])?;
                tx.execute("DELETE FROM chunks WHERE run_id = ?1", [&run_id])?;
                tx.execute("UPDATE batches SET body = NULL WHERE run_id = ?1", [&run_id])?;
                Ok(())
            })
            .await
    }

    async fn defer_run(&self, run_id: &str, reason: &str, until: DateTime<Utc>) -> Result<(), StoreError> {
        let (run_id, reason) = (run_id.to_owned(), reason.to_owned());
        self.db
            .write("defer run", move |tx| {
                tx.execute(
                    "UPDATE runs SET last_error = ?2, updated_at = ?3, \
                     resumes_at = MAX(COALESCE(resumes_at, 0), ?4) WHERE id = ?1",
                    params![run_id, reason, now_ms(), until.timestamp_millis()],
                )?;
                Ok(())
            })
            .await
    }

    async fn touch_run(&self, run_id: &str) -> Result<(), StoreError> {
        let run_id = run_id.to_owned();
        self.db
            .write("touch run", move |tx| {
                tx.execute(
                    "UPDATE runs SET updated_at = ?2 WHERE id = ?1 AND state NOT IN ('done', 'abandoned')",
                    params![run_id, now_ms()],
                )?;
                Ok(())
            })
            .await
    }

    async fn quiet_runs(&self, since: DateTime<Utc>) -> Result<Vec<Run>, StoreError> {
        self.db
            .read("quiet runs", move |c| {
                let mut stmt = c.prepare(&format!(
                    "SELECT {RUN_COLS} FROM runs WHERE state NOT IN ('done', 'abandoned') AND updated_at < ?1 \
                     AND COALESCE(resumes_at, 0) < ?1 \
                     AND NOT EXISTS (SELECT 1 FROM run_stages t WHERE t.run_id = runs.id AND t.last_at >= ?1) \
                     ORDER BY created_at"
                ))?;
                let rows = stmt.query_map([since.timestamp_millis()], map_run)?;
                rows.collect()
            })
            .await
    }

    async fn queued_for_run(&self, run_id: &str) -> Result<bool, StoreError> {
        let field = crate::domain::job::run_id_field(run_id);
        self.db
            .read("jobs of a run", move |c| {
                c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM jobs WHERE instr(body, ?1) > 0)",
                    [field],
                    |r| r.get(0),
                )
            })
            .await
    }

    async fn record_stage(
        &self,
        run_id: &str,
        stage: &str,
        started_at: DateTime<Utc>,
        busy: std::time::Duration,
        failed: bool,
    ) -> Result<(), StoreError> {
        let row = (
            run_id.to_owned(),
            stage.to_owned(),
            i64::from(failed),
            busy.as_millis() as i64,
            started_at.timestamp_millis(),
        );
        self.db
            .write("record stage timing", move |tx| {
                tx.execute(
                    "INSERT INTO run_stages (run_id, stage, jobs, failures, busy_ms, first_at, last_at) \
                     VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6) ON CONFLICT (run_id, stage) DO UPDATE SET \
                     jobs = jobs + 1, failures = failures + excluded.failures, busy_ms = busy_ms + excluded.busy_ms, \
                     first_at = MIN(first_at, excluded.first_at), last_at = MAX(last_at, excluded.last_at)",
                    params![row.0, row.1, row.2, row.3, row.4, now_ms()],
                )?;
                Ok(())
            })
            .await
    }

    async fn stage_timings(&self, run_ids: &[String]) -> Result<Vec<StageTiming>, StoreError> {
        let ids = serde_json::to_string(run_ids).expect("strings serialise");
        self.db
            .read("stage timings", move |c| {
                let mut st = c.prepare(
                    "SELECT run_id, stage, jobs, failures, busy_ms, first_at, last_at FROM run_stages \
                     WHERE run_id IN (SELECT value FROM json_each(?1)) ORDER BY run_id, first_at",
                )?;
                let rows = st.query_map([ids], |r| {
                    Ok(StageTiming {
                        run_id: r.get(0)?,
                        stage: r.get(1)?,
                        jobs: r.get(2)?,
                        failures: r.get(3)?,
                        busy_ms: r.get(4)?,
                        first_started_at: from_ms(r.get(5)?),
                        last_finished_at: from_ms(r.get(6)?),
                    })
                })?;
                rows.collect()
            })
            .await
    }
}
