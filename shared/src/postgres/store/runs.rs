//! Runs and chunks in PostgreSQL.

use super::prepared;
use super::{from_ms, now_ms, scratch, PgStore};

use crate::errors::StoreError;
use crate::ports::{Chunk, KeyRange, Plan, Run, RunKind, RunState, RunStore, StageTiming};
use crate::postgres::pool::pg_err;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Columns read for a [`Run`], in `map_run` order (`{s}` is the schema).
const RUN_COLS: &str = "id, tenant, source, kind, state, config_version, created_at, finished_at, \
    chunks_total, chunks_done, rows_read, inserts, updates, deletes, batches_total, batches_delivered, bytes, \
    schema_json, force_all, last_error, \
        (SELECT COUNT(*) FROM {s}.dead_letters d WHERE d.run_id = r.id AND d.state = 'open'), bytes_read, diff_mode";

fn map_run(r: &tokio_postgres::Row) -> Result<Run, StoreError> {
    let corrupt = |what: &'static str, detail: String| StoreError::Corrupt { what, detail };
    let state: String = r.get(4);
    let schema: Option<String> = r.get(17);
    Ok(Run {
        id: r.get(0),
        tenant: r.get(1),
        source: r.get(2),
        kind: if r.get::<_, String>(3) == "initial" {
            RunKind::Initial
        } else {
            RunKind::Interval
        },
        state: RunState::parse(&state).ok_or_else(|| corrupt("run state", state.clone()))?,
        config_version: r.get(5),
        created_at: from_ms(r.get(6)),
        finished_at: r.get::<_, Option<i64>>(7).map(from_ms),
        chunks_total: r.get(8),
        chunks_done: r.get(9),
        rows_read: r.get(10),
        inserts: r.get(11),
        updates: r.get(12),
        deletes: r.get(13),
        batches_total: r.get(14),
        batches_delivered: r.get(15),
        bytes: r.get(16),
        schema: schema
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("run schema", e.to_string())))
            .transpose()?,
        force_all: r.get(18),
        last_error: r.get(19),
        dead_letters: r.get(20),
        bytes_read: r.get(21),
        mode: r
            .get::<_, Option<String>>(22)
            .and_then(|m| serde_json::from_str(&m).ok()),
    })
}

impl PgStore {
    pub(super) fn run_select(&self) -> String {
        format!("SELECT {} FROM {}.runs r", RUN_COLS.replace("{s}", &self.s), self.s)
    }
}

#[async_trait]
impl RunStore for PgStore {
    async fn open_run(
        &self,
        tenant: &str,
        source: &str,
        kind: RunKind,
        config_version: i64,
    ) -> Result<Option<Run>, StoreError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let c = self.client().await?;
        let n = c
            .execute(
                &format!(
                    "INSERT INTO {}.runs (id, tenant, source, kind, state, config_version, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, 'planning', $5, $6, $6) ON CONFLICT DO NOTHING",
                    self.s
                ),
                &[&id, &tenant, &source, &kind.as_str(), &config_version, &now_ms()],
            )
            .await
            .map_err(pg_err("open run"))?;
        if n == 0 {
            return Ok(None);
        }
        self.count(1);
        let row = c
            .query_one(&format!("{} WHERE r.id = $1", self.run_select()), &[&id])
            .await
            .map_err(pg_err("open run"))?;
        map_run(&row).map(Some)
    }

    async fn run(&self, tenant: &str, run_id: &str) -> Result<Option<Run>, StoreError> {
        let sql = format!("{} WHERE r.id = $1 AND r.tenant = $2", self.run_select());
        let row = prepared::query_opt(&self.client().await?, &sql, &[&run_id, &tenant])
            .await
            .map_err(pg_err("load run"))?;
        row.as_ref().map(map_run).transpose()
    }

    async fn runs(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<Run>, StoreError> {
        let sql = format!(
            "{} WHERE ($1::TEXT IS NULL OR r.tenant = $1) ORDER BY r.created_at DESC, r.id DESC LIMIT $2",
            self.run_select()
        );
        let rows = prepared::query(&self.client().await?, &sql, &[&tenant, &(limit as i64)])
            .await
            .map_err(pg_err("list runs"))?;
        rows.iter().map(map_run).collect()
    }

    async fn source_clocks(&self, tenant: &str) -> Result<Vec<(String, DateTime<Utc>, bool)>, StoreError> {
        let sql = format!(
            "SELECT source, MAX(created_at), BOOL_OR(state NOT IN ('done', 'abandoned')) FROM {}.runs WHERE tenant = $1 GROUP BY source",
            self.s
        );
        let rows = prepared::query(&self.client().await?, &sql, &[&tenant])
            .await
            .map_err(pg_err("source clocks"))?;
        Ok(rows.iter().map(|r| (r.get(0), from_ms(r.get(1)), r.get(2))).collect())
    }

    async fn plan_run(&self, run: &Run, plan: &Plan, chunks: &[KeyRange]) -> Result<bool, StoreError> {
        let s = &self.s;
        let schema = serde_json::to_string(&plan.schema).expect("schemas serialise");
        let mode = serde_json::to_string(&plan.mode).expect("modes serialise");
        let (force_all, config_version) = (plan.force_all, plan.config_version);
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg_err("plan run"))?;
        let n = tx
            .execute(
                &format!(
                    "UPDATE {s}.runs SET state = 'snapshotting', schema_json = $2, force_all = $3, config_version = $4, \
                                          chunks_total = $5, updated_at = $6, diff_mode = $7 WHERE id = $1 AND state = 'planning'"
                ),
                &[&run.id, &schema, &force_all, &config_version, &(chunks.len() as i64), &now_ms(), &mode],
            )
            .await
            .map_err(pg_err("plan run"))?;
        if n == 0 {
            return Ok(false);
        }
        let ins = tx
            .prepare(&format!(
                "INSERT INTO {s}.chunks (run_id, chunk_no, lo, hi) VALUES ($1, $2, $3, $4)"
            ))
            .await
            .map_err(pg_err("plan run"))?;
        for (i, ch) in chunks.iter().enumerate() {
            tx.execute(&ins, &[&run.id, &(i as i32), &ch.lo, &ch.hi])
                .await
                .map_err(pg_err("plan run"))?;
        }
        if run.kind == RunKind::Initial || force_all {
            let nothing_staged: bool = tx
                .query_one(&super::staging::nothing_staged(self), &[&run.tenant, &run.source])
                .await
                .map_err(pg_err("plan run"))?
                .get(0);
            scratch::create(&tx, s, &run.id, nothing_staged).await?;
        }
        tx.commit().await.map_err(pg_err("plan run"))?;
        self.count(1 + chunks.len() as u64);
        Ok(true)
    }

    async fn chunks(&self, run_id: &str) -> Result<Vec<Chunk>, StoreError> {
        let sql = format!(
            "SELECT chunk_no, lo, hi, done, resume_key FROM {}.chunks WHERE run_id = $1 ORDER BY chunk_no",
            self.s
        );
        let rows = prepared::query(&self.client().await?, &sql, &[&run_id])
            .await
            .map_err(pg_err("list chunks"))?;
        Ok(rows
            .iter()
            .map(|r| Chunk {
                no: r.get::<_, i32>(0) as u32,
                range: KeyRange {
                    lo: r.get(1),
                    hi: r.get(2),
                },
                done: r.get(3),
                resume: r.get(4),
            })
            .collect())
    }

    async fn record_verification(
        &self,
        tenant: &str,
        source: &str,
        report_json: &str,
        in_sync: Option<bool>,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {}.verifications (tenant, source, at, in_sync, report_json) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant, source) DO UPDATE SET at = EXCLUDED.at, in_sync = EXCLUDED.in_sync, report_json = EXCLUDED.report_json",
            self.s
        );
        prepared::execute(
            &self.client().await?,
            &sql,
            &[&tenant, &source, &now_ms(), &in_sync, &report_json],
        )
        .await
        .map_err(pg_err("record verification"))?;
        self.count(1);
        Ok(())
    }

    async fn last_verifications(&self, tenant: &str) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let sql = format!("SELECT source, at FROM {}.verifications WHERE tenant = $1", self.s);
        let rows = prepared::query(&self.client().await?, &sql, &[&tenant])
            .await
            .map_err(pg_err("last verifications"))?;
        Ok(rows.iter().map(|r| (r.get(0), from_ms(r.get(1)))).collect())
    }

    async fn abandon_run(&self, run_id: &str, reason: &str) -> Result<(), StoreError> {
        let (s, err) = (&self.s, pg_err("abandon run"));
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(&err)?;
        tx.execute(
            &format!(
                "UPDATE {s}.runs SET state = 'abandoned', last_error = $2, finished_at = $3, updated_at = $3 \
                 WHERE id = $1 AND state NOT IN ('done', 'abandoned')"
            ),
            &[&run_id, &reason, &now_ms()],
        )
        .await
        .map_err(&err)?;
        scratch::retire(&tx, s, run_id).await?;
        tx.commit().await.map_err(&err)?;
        self.count(1);
        Ok(())
    }

    async fn defer_run(&self, run_id: &str, reason: &str, until: DateTime<Utc>) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE {}.runs SET last_error = $2, updated_at = $3, \
             resumes_at = GREATEST(COALESCE(resumes_at, 0), $4) WHERE id = $1",
            self.s
        );
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
            [&run_id, &reason, &now_ms(), &until.timestamp_millis()];
        prepared::execute(&self.client().await?, &sql, &args)
            .await
            .map_err(pg_err("defer run"))?;
        self.count(1);
        Ok(())
    }

    async fn touch_run(&self, run_id: &str) -> Result<(), StoreError> {
        let sql = format!(
            "UPDATE {}.runs SET updated_at = $2 WHERE id = $1 AND state NOT IN ('done', 'abandoned')",
            self.s
        );
        prepared::execute(&self.client().await?, &sql, &[&run_id, &now_ms()])
            .await
            .map_err(pg_err("touch run"))?;
        self.count(1);
        Ok(())
    }

    async fn quiet_runs(&self, since: DateTime<Utc>) -> Result<Vec<Run>, StoreError> {
        let sql = format!(
            "{} WHERE r.state NOT IN ('done', 'abandoned') AND r.updated_at < $1 \
             AND COALESCE(r.resumes_at, 0) < $1 \
             AND NOT EXISTS (SELECT 1 FROM {}.run_stages t WHERE t.run_id = r.id AND t.last_at >= $1) \
             ORDER BY r.created_at",
            self.run_select(),
            self.s
        );
        let rows = prepared::query(&self.client().await?, &sql, &[&since.timestamp_millis()])
            .await
            .map_err(pg_err("quiet runs"))?;
        rows.iter().map(map_run).collect()
    }

    async fn queued_for_run(&self, run_id: &str) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {}.jobs WHERE strpos(body, $1) > 0)",
            self.s
        );
        Ok(prepared::query_one(
            &self.client().await?,
            &sql,
            &[&crate::domain::job::run_id_field(run_id)],
        )
        .await
        .map_err(pg_err("jobs of a run"))?
        .get(0))
    }

    async fn record_stage(
        &self,
        run_id: &str,
        stage: &str,
        started_at: DateTime<Utc>,
        busy: std::time::Duration,
        failed: bool,
    ) -> Result<(), StoreError> {
        let sql = format!(
            "INSERT INTO {s}.run_stages AS t (run_id, stage, jobs, failures, busy_ms, first_at, last_at) \
             VALUES ($1, $2, 1, $3, $4, $5, $6) ON CONFLICT (run_id, stage) DO UPDATE SET \
             jobs = t.jobs + 1, failures = t.failures + EXCLUDED.failures, busy_ms = t.busy_ms + EXCLUDED.busy_ms, \
             first_at = LEAST(t.first_at, EXCLUDED.first_at), last_at = GREATEST(t.last_at, EXCLUDED.last_at)",
            s = self.s
        );
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
            &run_id,
            &stage,
            &i64::from(failed),
            &(busy.as_millis() as i64),
            &started_at.timestamp_millis(),
            &now_ms(),
        ];
        prepared::execute(&self.client().await?, &sql, &params)
            .await
            .map_err(pg_err("record stage timing"))?;
        self.count(1);
        Ok(())
    }

    async fn stage_timings(&self, run_ids: &[String]) -> Result<Vec<StageTiming>, StoreError> {
        let sql = format!(
            "SELECT run_id, stage, jobs, failures, busy_ms, first_at, last_at FROM {}.run_stages \
             WHERE run_id = ANY($1) ORDER BY run_id, first_at",
            self.s
        );
        let rows = prepared::query(&self.client().await?, &sql, &[&run_ids])
            .await
            .map_err(pg_err("stage timings"))?;
        Ok(rows
            .iter()
            .map(|r| StageTiming {
                run_id: r.get(0),
                stage: r.get(1),
                jobs: r.get(2),
                failures: r.get(3),
                busy_ms: r.get(4),
                first_started_at: from_ms(r.get(5)),
                last_finished_at: from_ms(r.get(6)),
            })
            .collect())
    }
}
