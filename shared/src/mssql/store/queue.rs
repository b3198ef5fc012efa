//! The table queue on SQL Server: workers claim with `UPDLOCK, READPAST, ROWLOCK` through an
//! updatable `TOP … ORDER BY` CTE with `OUTPUT`, so many processes share one queue without
//! blocking each other; a claim pushes `visible_at` past the lease, so an expired lease makes the
//! message visible again by itself — the PostgreSQL queue's contract, statement for statement.

use super::session::{int, opt_int, p, placeholders, text, Params};
use super::{now_ms, MssqlStore};
use crate::domain::job::{Job, Stage, PRIORITY_INTERVAL};
use crate::errors::StoreError;
use crate::ports::{Claimed, JobQueue};
use async_trait::async_trait;
use std::time::Duration;

/// Jobs per `INSERT … VALUES` (five parameters each, under the 2,100-parameter limit).
const ENQUEUE_ROWS: usize = 400;

fn parse_handle(h: &str) -> (i64, String) {
    let (id, token) = h.split_once(':').unwrap_or(("0", ""));
    (id.parse().unwrap_or(0), token.to_owned())
}

/// ` AND stage IN (@Pn, …)` for a stage filter (nothing when every stage is wanted).
fn stage_filter(stages: &[Stage], params: &mut Params) -> String {
    if stages.is_empty() {
        return String::new();
    }
    let first = params.len() + 1;
    params.extend(stages.iter().map(|s| p(s.as_str())));
    format!(" AND stage IN ({})", placeholders(first, stages.len()))
}

/// The claim: visible jobs of at least `@P3`'s priority, highest first, skipping rows another
/// claimer holds (`READPAST`) and locking only the rows taken (`ROWLOCK`).
fn claim_sql(stage_cond: &str) -> String {
    format!(
        "WITH next AS ( \
           SELECT TOP (@P1) id, body, attempts, visible_at, lease_token FROM {{s}}.jobs WITH (UPDLOCK, READPAST, ROWLOCK) \
           WHERE visible_at <= @P2 AND priority >= @P3{stage_cond} \
           ORDER BY priority DESC, visible_at, id) \
         UPDATE next SET visible_at = @P4, lease_token = @P5, attempts = attempts + 1 \
         OUTPUT inserted.id, inserted.body, inserted.attempts"
    )
}

impl MssqlStore {
    /// The query KEDA's `mssql` scaler runs (docs/sqlserver.md): visible messages of a stage.
    pub fn depth_query(&self, stage: Stage) -> String {
        format!(
            "SELECT COUNT(*) FROM {}.jobs WHERE stage = '{}' \
             AND visible_at <= DATEDIFF_BIG(millisecond, '1970-01-01', SYSUTCDATETIME())",
            self.s,
            stage.as_str()
        )
    }

    /// Claims visible jobs of at least `min_priority`, highest priority first.
    async fn claim_from(
        &self,
        max: usize,
        lease: Duration,
        stages: &[Stage],
        min_priority: u8,
    ) -> Result<Vec<Claimed>, StoreError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let now = now_ms();
        let mut params = vec![
            p(max as i64),
            p(now),
            p(i32::from(min_priority)),
            p(now + lease.as_millis() as i64),
            p(token.clone()),
        ];
        let cond = stage_filter(stages, &mut params);
        let mut x = self.session("claim").await?;
        let rows = x.rows(&self.q(&claim_sql(&cond)), params).await?;
        x.done();
        self.count(rows.len() as u64);
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    handle: format!("{}:{token}", int(r, 0)?),
                    body: text(r, 1)?,
                    attempts: int(r, 2)? as u32,
                })
            })
            .collect()
    }
}

#[async_trait]
impl JobQueue for MssqlStore {
    async fn enqueue(&self, jobs: &[Job], delay: Duration) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let visible = now + delay.as_millis() as i64;
        let mut x = self.session("enqueue").await?;
        // One transaction: a scheduler's fan-out is all queued or none of it is.
        x.begin().await?;
        let mut n = 0;
        for part in jobs.chunks(ENQUEUE_ROWS) {
            let values = (0..part.len())
                .map(|i| format!("({})", placeholders(i * 5 + 1, 5)))
                .collect::<Vec<_>>()
                .join(", ");
            let mut params = Vec::with_capacity(part.len() * 5);
            for j in part {
                params.extend([
                    p(j.stage().as_str()),
                    p(j.encode()),
                    p(i32::from(j.priority)),
                    p(now),
                    p(visible),
                ]);
            }
            let sql = self.q(&format!(
                "INSERT INTO {{s}}.jobs (stage, body, priority, enqueued_at, visible_at) VALUES {values}"
            ));
            n += x.exec(&sql, params).await?;
        }
        x.commit().await?;
        self.count(n);
        Ok(())
    }

    async fn claim(&self, max: usize, lease: Duration, stages: &[Stage]) -> Result<Vec<Claimed>, StoreError> {
        self.claim_from(max, lease, stages, 0).await
    }

    async fn claim_urgent(&self, max: usize, lease: Duration, stages: &[Stage]) -> Result<Vec<Claimed>, StoreError> {
        self.claim_from(max, lease, stages, PRIORITY_INTERVAL).await
    }

    async fn extend(&self, claimed: &Claimed, lease: Duration) -> Result<(), StoreError> {
        let (id, token) = parse_handle(&claimed.handle);
        let sql = self.q("UPDATE {s}.jobs SET visible_at = @P3 WHERE id = @P1 AND lease_token = @P2");
        let mut x = self.session("extend lease").await?;
        x.exec(&sql, vec![p(id), p(token), p(now_ms() + lease.as_millis() as i64)])
            .await?;
        x.done();
        Ok(())
    }

    async fn ack(&self, claimed: &Claimed) -> Result<(), StoreError> {
        let (id, token) = parse_handle(&claimed.handle);
        let sql = self.q("DELETE FROM {s}.jobs WHERE id = @P1 AND lease_token = @P2");
        let mut x = self.session("ack").await?;
        let n = x.exec(&sql, vec![p(id), p(token)]).await?;
        x.done();
        self.count(n);
        Ok(())
    }

    async fn retry_later(&self, claimed: &Claimed, delay: Duration, error: &str) -> Result<(), StoreError> {
        let (id, token) = parse_handle(&claimed.handle);
        let sql = self.q(
            "UPDATE {s}.jobs SET visible_at = @P3, lease_token = NULL, last_error = @P4 WHERE id = @P1 AND lease_token = @P2",
        );
        let mut x = self.session("retry later").await?;
        let n = x
            .exec(
                &sql,
                vec![
                    p(id),
                    p(token),
                    p(now_ms() + delay.as_millis() as i64),
                    p(error.to_owned()),
                ],
            )
            .await?;
        x.done();
        self.count(n);
        Ok(())
    }

    async fn depth(&self, stages: &[Stage]) -> Result<(u64, Option<Duration>), StoreError> {
        let now = now_ms();
        let mut params = vec![p(now)];
        let cond = stage_filter(stages, &mut params);
        let sql = self.q(&format!(
            "SELECT COUNT_BIG(*), MIN(CASE WHEN visible_at <= @P1 THEN enqueued_at END) FROM {{s}}.jobs WHERE 1 = 1{cond}"
        ));
        let mut x = self.session("queue depth").await?;
        let row = x.row(&sql, params).await?;
        x.done();
        let (count, oldest) = match row {
            Some(r) => (int(&r, 0)?, opt_int(&r, 1)?),
            None => (0, None),
        };
        Ok((
            count as u64,
            oldest.map(|o| Duration::from_millis((now - o).max(0) as u64)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_skip_locked_rows_and_take_the_highest_priority_first() {
        let mut params = vec![p(1i64), p(2i64), p(0i32), p(3i64), p("t".to_owned())];
        let cond = stage_filter(&[Stage::Snapshot, Stage::Push], &mut params);
        let sql = claim_sql(&cond);
        assert!(sql.contains("WITH (UPDLOCK, READPAST, ROWLOCK)"), "{sql}");
        assert!(sql.contains("ORDER BY priority DESC, visible_at, id"), "{sql}");
        assert!(
            sql.contains("OUTPUT inserted.id, inserted.body, inserted.attempts"),
            "{sql}"
        );
        assert!(sql.contains(" AND stage IN (@P6, @P7)"), "stages are parameters: {sql}");
        assert_eq!(params.len(), 7);
        assert!(
            !sql.contains("snapshot") && !sql.contains("push"),
            "no value is pasted: {sql}"
        );
        assert_eq!(stage_filter(&[], &mut params), "");
    }

    #[test]
    fn handles_that_are_not_ours_match_no_row() {
        assert_eq!(parse_handle("42:abc"), (42, "abc".to_owned()));
        assert_eq!(parse_handle("garbage"), (0, String::new()));
    }
}
