//! Runs and chunks in SQL Server.

use super::session::{flag, int, opt_bytes, opt_int, opt_text, p, placeholders, text, Params, MAX_LIST};
use super::{from_ms, now_ms, MssqlStore};
use crate::errors::StoreError;
use crate::ports::{Chunk, KeyRange, Plan, Run, RunKind, RunState, RunStore, StageTiming};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tiberius::{ColumnData, TokenRow};

/// Columns read for a [`Run`], in `map_run` order (`{s}` is the schema).
const RUN_COLS: &str = "r.id, r.tenant, r.source, r.kind, r.state, r.config_version, r.created_at, r.finished_at, \
    r.chunks_total, r.chunks_done, r.rows_read, r.inserts, r.updates, r.deletes, r.batches_total, r.batches_delivered, \
    r.bytes, r.schema_json, r.force_all, r.last_error, \
    (SELECT COUNT_BIG(*) FROM {s}.dead_letters d WHERE d.run_id = r.id AND d.state = 'open'), r.bytes_read, r.diff_mode";

/// SQL Server's duplicate-key errors (unique index, primary key or unique constraint).
pub(super) fn is_duplicate(e: &tiberius::error::Error) -> bool {
    matches!(e.code(), Some(2601 | 2627))
}

/// `update`, or `insert` when it touched no row, atomically: the update's range lock holds
/// until the insert, so two writers cannot both insert.
pub(super) fn upsert(update: &str, insert: &str) -> String {
    format!("BEGIN TRANSACTION; {update}; IF @@ROWCOUNT = 0 {insert}; COMMIT TRANSACTION;")
}

fn map_run(r: &tiberius::Row) -> Result<Run, StoreError> {
    let corrupt = |what: &'static str, detail: String| StoreError::Corrupt { what, detail };
    let state = text(r, 4)?;
    Ok(Run {
        id: text(r, 0)?,
        tenant: text(r, 1)?,
        source: text(r, 2)?,
        kind: if text(r, 3)? == "initial" {
            RunKind::Initial
        } else {
            RunKind::Interval
        },
        state: RunState::parse(&state).ok_or_else(|| corrupt("run state", state.clone()))?,
        config_version: int(r, 5)?,
        created_at: from_ms(int(r, 6)?),
        finished_at: opt_int(r, 7)?.map(from_ms),
        chunks_total: int(r, 8)?,
        chunks_done: int(r, 9)?,
        rows_read: int(r, 10)?,
        inserts: int(r, 11)?,
        updates: int(r, 12)?,
        deletes: int(r, 13)?,
        batches_total: int(r, 14)?,
        batches_delivered: int(r, 15)?,
        bytes: int(r, 16)?,
        schema: opt_text(r, 17)?
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("run schema", e.to_string())))
            .transpose()?,
        force_all: flag(r, 18)?,
        last_error: opt_text(r, 19)?,
        dead_letters: int(r, 20)?,
        bytes_read: int(r, 21)?,
        mode: opt_text(r, 22)?.and_then(|m| serde_json::from_str(&m).ok()),
    })
}

impl MssqlStore {
    fn run_select(&self, top: &str) -> String {
        format!("SELECT {top}{} FROM {}.runs r", self.q(RUN_COLS), self.s)
    }

    async fn select_runs(&self, context: &'static str, sql: String, params: Params) -> Result<Vec<Run>, StoreError> {
        let mut x = self.session(context).await?;
        let rows = x.rows(&sql, params).await?;
        x.done();
        rows.iter().map(map_run).collect()
    }
}

#[async_trait]
impl RunStore for MssqlStore {
    async fn open_run(
        &self,
        tenant: &str,
        source: &str,
        kind: RunKind,
        config_version: i64,
    ) -> Result<Option<Run>, StoreError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let sql = self.q(
            "INSERT INTO {s}.runs (id, tenant, source, kind, state, config_version, created_at, updated_at) \
             SELECT @P1, @P2, @P3, @P4, 'planning', @P5, @P6, @P6 WHERE NOT EXISTS ( \
               SELECT 1 FROM {s}.runs WITH (UPDLOCK, HOLDLOCK) \
               WHERE tenant = @P2 AND source = @P3 AND state <> 'done' AND state <> 'abandoned')",
        );
        let params = vec![
            p(id.clone()),
            p(tenant.to_owned()),
            p(source.to_owned()),
            p(kind.as_str()),
            p(config_version),
            p(now_ms()),
        ];
        let mut x = self.session("open run").await?;
        let n = match x.try_exec(&sql, params).await {
            Ok(n) => n,
            // Another process opened one between the check and the insert: the index said no.
            Err(e) if is_duplicate(&e) => 0,
            Err(e) => return Err(crate::mssql::errors::store_error("open run")(e)),
        };
        if n == 0 {
            x.done();
            return Ok(None);
        }
        self.count(1);
        let row = x
            .row(&format!("{} WHERE r.id = @P1", self.run_select("")), vec![p(id)])
            .await?;
        x.done();
        row.as_ref().map(map_run).transpose()
    }

    async fn run(&self, tenant: &str, run_id: &str) -> Result<Option<Run>, StoreError> {
        let sql = format!("{} WHERE r.id = @P1 AND r.tenant = @P2", self.run_select(""));
        let runs = self
            .select_runs("load run", sql, vec![p(run_id.to_owned()), p(tenant.to_owned())])
            .await?;
        Ok(runs.into_iter().next())
    }

    async fn runs(&self, tenant: Option<&str>, limit: usize) -> Result<Vec<Run>, StoreError> {
        let sql = format!(
            "{} WHERE (@P1 IS NULL OR r.tenant = @P1) ORDER BY r.created_at DESC, r.id DESC",
            self.run_select("TOP (@P2) ")
        );
        self.select_runs("list runs", sql, vec![p(tenant.map(str::to_owned)), p(limit as i64)])
            .await
    }

    async fn source_clocks(&self, tenant: &str) -> Result<Vec<(String, DateTime<Utc>, bool)>, StoreError> {
        let sql = self.q(
            "SELECT source, MAX(created_at), MAX(CASE WHEN state <> 'done' AND state <> 'abandoned' THEN 1 ELSE 0 END) \
             FROM {s}.runs WHERE tenant = @P1 GROUP BY source",
        );
        let mut x = self.session("source clocks").await?;
        let rows = x.rows(&sql, vec![p(tenant.to_owned())]).await?;
        x.done();
        rows.iter()
            .map(|r| Ok((text(r, 0)?, from_ms(int(r, 1)?), flag(r, 2)?)))
            .collect()
    }

    async fn plan_run(&self, run: &Run, plan: &Plan, chunks: &[KeyRange]) -> Result<bool, StoreError> {
        let schema = serde_json::to_string(&plan.schema).expect("schemas serialise");
        let mode = serde_json::to_string(&plan.mode).expect("modes serialise");
        let mut x = self.session("plan run").await?;
        x.begin().await?;
        let n = x
            .exec(
                &self.q(
                    "UPDATE {s}.runs SET state = 'snapshotting', schema_json = @P2, force_all = @P3, config_version = @P4, \
                     chunks_total = @P5, updated_at = @P6, diff_mode = @P7 WHERE id = @P1 AND state = 'planning'",
                ),
                vec![
                    p(run.id.clone()),
                    p(schema),
                    p(plan.force_all),
                    p(plan.config_version),
                    p(chunks.len() as i64),
                    p(now_ms()),
                    p(mode),
                ],
            )
            .await?;
        if n == 0 {
            x.rollback().await?;
            return Ok(false);
        }
        let rows = chunks.iter().enumerate().map(|(i, ch)| {
            let mut row = TokenRow::new();
            row.push(ColumnData::String(Some(run.id.clone().into())));
            row.push(ColumnData::I32(Some(i as i32)));
            row.push(ColumnData::Binary(ch.lo.clone().map(Into::into)));
            row.push(ColumnData::Binary(ch.hi.clone().map(Into::into)));
            // Explicit: a bulk load's omitted columns need not take their defaults.
            row.push(ColumnData::Bit(Some(false)));
            row
        });
        let rows: Vec<TokenRow<'static>> = rows.collect();
        let table = format!("{}.chunks", self.s);
        x.bulk(&table, &["run_id", "chunk_no", "lo", "hi", "done"], rows)
            .await?;
        x.commit().await?;
        self.count(1 + chunks.len() as u64);
        Ok(true)
    }

    async fn chunks(&self, run_id: &str) -> Result<Vec<Chunk>, StoreError> {
        let sql =
            self.q("SELECT chunk_no, lo, hi, done, resume_key FROM {s}.chunks WHERE run_id = @P1 ORDER BY chunk_no");
        let mut x = self.session("list chunks").await?;
        let rows = x.rows(&sql, vec![p(run_id.to_owned())]).await?;
        x.done();
        rows.iter()
            .map(|r| {
                Ok(Chunk {
                    no: int(r, 0)? as u32,
                    range: KeyRange {
                        lo: opt_bytes(r, 1)?,
                        hi: opt_bytes(r, 2)?,
                    },
                    done: flag(r, 3)?,
                    resume: opt_bytes(r, 4)?,
                })
            })
            .collect()
    }

    async fn record_verification(
        &self,
        tenant: &str,
        source: &str,
        report_json: &str,
        in_sync: Option<bool>,
    ) -> Result<(), StoreError> {
        let sql = self.q(&upsert(
            "UPDATE {s}.verifications WITH (UPDLOCK, SERIALIZABLE) SET at = @P3, in_sync = @P4, report_json = @P5 \
             WHERE tenant = @P1 AND source = @P2",
            "INSERT INTO {s}.verifications (tenant, source, at, in_sync, report_json) VALUES (@P1, @P2, @P3, @P4, @P5)",
        ));
        let mut x = self.session("record verification").await?;
        x.exec(
            &sql,
            vec![
                p(tenant.to_owned()),
                p(source.to_owned()),
                p(now_ms()),
                p(in_sync),
                p(report_json.to_owned()),
            ],
        )
        .await?;
        x.done();
        self.count(1);
        Ok(())
    }

    async fn last_verifications(&self, tenant: &str) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let sql = self.q("SELECT source, at FROM {s}.verifications WHERE tenant = @P1");
        let mut x = self.session("last verifications").await?;
        let rows = x.rows(&sql, vec![p(tenant.to_owned())]).await?;
        x.done();
        rows.iter().map(|r| Ok((text(r, 0)?, from_ms(int(r, 1)?)))).collect()
    }

    async fn abandon_run(&self, run_id: &str, reason: &str) -> Result<(), StoreError> {
        let mut x = self.session("abandon run").await?;
        x.begin().await?;
        x.exec(
            &self.q(
                "UPDATE {s}.runs SET state = 'abandoned', last_error = @P2, finished_at = @P3, updated_at = @P3 \
                 WHERE id = @P1 AND state <> 'done' AND state <> 'abandoned'",
            ),
            vec![p(run_id.to_owned()), p(reason.to_owned()), p(now_ms())],
        )
        .await?;
        x.exec(&self.q(super::batches::DROP_SCRATCH), vec![p(run_id.to_owned())])
            .await?;
        x.commit().await?;
        self.count(1);
        Ok(())
    }

    async fn defer_run(&self, run_id: &str, reason: &str, until: DateTime<Utc>) -> Result<(), StoreError> {
        let sql = self.q("UPDATE {s}.runs SET last_error = @P2, updated_at = @P3, \
             resumes_at = CASE WHEN resumes_at > @P4 THEN resumes_at ELSE @P4 END WHERE id = @P1");
        let mut x = self.session("defer run").await?;
        let args = vec![
            p(run_id.to_owned()),
            p(reason.to_owned()),
            p(now_ms()),
            p(until.timestamp_millis()),
        ];
        x.exec(&sql, args).await?;
        x.done();
        self.count(1);
        Ok(())
    }

    async fn touch_run(&self, run_id: &str) -> Result<(), StoreError> {
        let sql =
            self.q("UPDATE {s}.runs SET updated_at = @P2 WHERE id = @P1 AND state <> 'done' AND state <> 'abandoned'");
        let mut x = self.session("touch run").await?;
        x.exec(&sql, vec![p(run_id.to_owned()), p(now_ms())]).await?;
        x.done();
        self.count(1);
        Ok(())
    }

    async fn quiet_runs(&self, since: DateTime<Utc>) -> Result<Vec<Run>, StoreError> {
        let sql = format!(
            "{} WHERE r.state <> 'done' AND r.state <> 'abandoned' AND r.updated_at < @P1 \
             AND (r.resumes_at IS NULL OR r.resumes_at < @P1) \
             AND NOT EXISTS (SELECT 1 FROM {}.run_stages t WHERE t.run_id = r.id AND t.last_at >= @P1) \
             ORDER BY r.created_at",
            self.run_select(""),
            self.s
        );
        self.select_runs("quiet runs", sql, vec![p(since.timestamp_millis())])
            .await
    }

    async fn queued_for_run(&self, run_id: &str) -> Result<bool, StoreError> {
        let sql =
            self.q("SELECT CASE WHEN EXISTS (SELECT 1 FROM {s}.jobs WHERE CHARINDEX(@P1, body) > 0) THEN 1 ELSE 0 END");
        let mut x = self.session("jobs of a run").await?;
        let row = x.row(&sql, vec![p(crate::domain::job::run_id_field(run_id))]).await?;
        x.done();
        row.map(|r| flag(&r, 0)).transpose().map(|f| f.unwrap_or(false))
    }

    async fn record_stage(
        &self,
        run_id: &str,
        stage: &str,
        started_at: DateTime<Utc>,
        busy: std::time::Duration,
        failed: bool,
    ) -> Result<(), StoreError> {
        let sql = self.q(&upsert(
            "UPDATE {s}.run_stages WITH (UPDLOCK, SERIALIZABLE) SET jobs = jobs + 1, failures = failures + @P3, \
             busy_ms = busy_ms + @P4, first_at = CASE WHEN first_at < @P5 THEN first_at ELSE @P5 END, \
             last_at = CASE WHEN last_at > @P6 THEN last_at ELSE @P6 END WHERE run_id = @P1 AND stage = @P2",
            "INSERT INTO {s}.run_stages (run_id, stage, jobs, failures, busy_ms, first_at, last_at) \
             VALUES (@P1, @P2, 1, @P3, @P4, @P5, @P6)",
        ));
        let mut x = self.session("record stage timing").await?;
        x.exec(
            &sql,
            vec![
                p(run_id.to_owned()),
                p(stage.to_owned()),
                p(i64::from(failed)),
                p(busy.as_millis() as i64),
                p(started_at.timestamp_millis()),
                p(now_ms()),
            ],
        )
        .await?;
        x.done();
        self.count(1);
        Ok(())
    }

    async fn stage_timings(&self, run_ids: &[String]) -> Result<Vec<StageTiming>, StoreError> {
        let mut out = Vec::new();
        let mut x = self.session("stage timings").await?;
        for ids in run_ids.chunks(MAX_LIST) {
            let sql = self.q(&format!(
                "SELECT run_id, stage, jobs, failures, busy_ms, first_at, last_at FROM {{s}}.run_stages \
                 WHERE run_id IN ({}) ORDER BY run_id, first_at",
                placeholders(1, ids.len())
            ));
            for r in x.rows(&sql, ids.iter().map(|i| p(i.clone())).collect()).await? {
                out.push(StageTiming {
                    run_id: text(&r, 0)?,
                    stage: text(&r, 1)?,
                    jobs: int(&r, 2)?,
                    failures: int(&r, 3)?,
                    busy_ms: int(&r, 4)?,
                    first_started_at: from_ms(int(&r, 5)?),
                    last_finished_at: from_ms(int(&r, 6)?),
                });
            }
        }
        x.done();
        out.sort_by(|a, b| (&a.run_id, a.first_started_at).cmp(&(&b.run_id, b.first_started_at)));
        Ok(out)
    }
}
