//! The table queue on PostgreSQL: workers claim with `FOR UPDATE SKIP LOCKED`, so many processes
//! share one queue without blocking each other; a claim pushes `visible_at` past the lease, so an
//! expired lease makes the message visible again by itself.

use super::prepared;
use super::{now_ms, PgStore};
use crate::domain::job::{Job, Stage, PRIORITY_INTERVAL};
use crate::errors::StoreError;
use crate::ports::{Claimed, JobQueue};
use crate::postgres::pool::pg_err;
use async_trait::async_trait;
use std::time::Duration;

fn parse_handle(h: &str) -> (i64, String) {
    let (id, token) = h.split_once(':').unwrap_or(("0", ""));
    (id.parse().unwrap_or(0), token.to_owned())
}

impl PgStore {
    /// The query KEDA's PostgreSQL scaler runs (docs/operations.md): visible messages of a stage.
    pub fn depth_query(&self, stage: Stage) -> String {
        format!(
            "SELECT COUNT(*) FROM {}.jobs WHERE stage = '{}' AND visible_at <= (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT",
            self.s,
            stage.as_str()
        )
    }
}

#[async_trait]
impl JobQueue for PgStore {
    async fn enqueue(&self, jobs: &[Job], delay: Duration) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let stages: Vec<&str> = jobs.iter().map(|j| j.stage().as_str()).collect();
        let bodies: Vec<String> = jobs.iter().map(Job::encode).collect();
        let priorities: Vec<i32> = jobs.iter().map(|j| i32::from(j.priority)).collect();
        let now = now_ms();
        let sql = format!(
            "INSERT INTO {}.jobs (stage, body, priority, enqueued_at, visible_at) \
             SELECT u.*, $3::BIGINT, $4::BIGINT FROM UNNEST($1::TEXT[], $2::TEXT[], $5::INT4[]) AS u",
            self.s
        );
        let n = prepared::execute(
            &self.client().await?,
            &sql,
            &[&stages, &bodies, &now, &(now + delay.as_millis() as i64), &priorities],
        )
        .await
        .map_err(pg_err("enqueue"))?;
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
        let sql = format!(
            "UPDATE {}.jobs SET visible_at = $3 WHERE id = $1 AND lease_token = $2",
            self.s
        );
        prepared::execute(
            &self.client().await?,
            &sql,
            &[&id, &token, &(now_ms() + lease.as_millis() as i64)],
        )
        .await
        .map_err(pg_err("extend lease"))?;
        Ok(())
    }

    async fn ack(&self, claimed: &Claimed) -> Result<(), StoreError> {
        let (id, token) = parse_handle(&claimed.handle);
        let sql = format!("DELETE FROM {}.jobs WHERE id = $1 AND lease_token = $2", self.s);
        let n = prepared::execute(&self.client().await?, &sql, &[&id, &token])
            .await
            .map_err(pg_err("ack"))?;
        self.count(n);
        Ok(())
    }

    async fn retry_later(&self, claimed: &Claimed, delay: Duration, error: &str) -> Result<(), StoreError> {
        let (id, token) = parse_handle(&claimed.handle);
        let sql = format!(
            "UPDATE {}.jobs SET visible_at = $3, lease_token = NULL, last_error = $4 WHERE id = $1 AND lease_token = $2",
            self.s
        );
        let n = prepared::execute(
            &self.client().await?,
            &sql,
            &[&id, &token, &(now_ms() + delay.as_millis() as i64), &error],
        )
        .await
        .map_err(pg_err("retry later"))?;
        self.count(n);
        Ok(())
    }

    async fn depth(&self, stages: &[Stage]) -> Result<(u64, Option<Duration>), StoreError> {
        let now = now_ms();
        let names: Vec<&str> = stages.iter().map(|s| s.as_str()).collect();
        let sql = format!(
            "SELECT COUNT(*), MIN(CASE WHEN visible_at <= $1 THEN enqueued_at END) FROM {}.jobs \
             WHERE cardinality($2::TEXT[]) = 0 OR stage = ANY($2)",
            self.s
        );
        let r = prepared::query_one(&self.client().await?, &sql, &[&now, &names])
            .await
            .map_err(pg_err("queue depth"))?;
        let oldest: Option<i64> = r.get(1);
        Ok((
            r.get::<_, i64>(0) as u64,
            oldest.map(|o| Duration::from_millis((now - o).max(0) as u64)),
        ))
    }
}

/// The claim: the visible jobs' ids first, by the claim index, then each by its primary key.
/// The store's statements run on generic plans once prepared (decision 0028), and this form has
/// no plan but those lookups whatever the statistics say. As `id IN (subquery)` its generic plan
/// joined the subquery to the queue: a hash join over every queued job (decision 0024, on 3,000
/// of them), or a nested loop over a hash of the ids (session 28, on 5,000).
fn claim_sql(s: &str) -> String {
    format!(
        "UPDATE {s}.jobs SET visible_at = $1, lease_token = $2, attempts = attempts + 1 WHERE id = ANY(ARRAY( \
           SELECT id FROM {s}.jobs WHERE visible_at <= $3 AND (cardinality($4::TEXT[]) = 0 OR stage = ANY($4)) AND priority >= $6 \
           ORDER BY priority DESC, visible_at, id LIMIT $5 FOR UPDATE SKIP LOCKED)) \
         RETURNING id, body, attempts"
    )
}

impl PgStore {
    /// Claims visible jobs of at least `min_priority`, highest priority first.
    async fn claim_from(
        &self,
        max: usize,
        lease: Duration,
        stages: &[Stage],
        min_priority: u8,
    ) -> Result<Vec<Claimed>, StoreError> {
        let names: Vec<&str> = stages.iter().map(|s| s.as_str()).collect();
        let token = uuid::Uuid::new_v4().simple().to_string();
        let now = now_ms();
        let rows = prepared::query(
            &self.client().await?,
            &claim_sql(&self.s),
            &[
                &(now + lease.as_millis() as i64),
                &token,
                &now,
                &names,
                &(max as i64),
                &i32::from(min_priority),
            ],
        )
        .await
        .map_err(pg_err("claim"))?;
        self.count(rows.len() as u64);
        Ok(rows
            .iter()
            .map(|r| Claimed {
                handle: format!("{}:{token}", r.get::<_, i64>(0)),
                body: r.get(1),
                attempts: r.get::<_, i32>(2) as u32,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The claim's generic plan — what a pooled session runs once a statement has been run five
    /// times — reads the claim index and looks each job up by its key, on a deep queue too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_claims_generic_plan_reads_the_claim_index_and_the_primary_key_only() {
        let schema = format!("queue_plan_{}", std::process::id());
        let store = PgStore::connect(&super::super::test_url(), &schema, 2)
            .await
            .expect("store");
        let c = store.client().await.expect("a connection");
        c.batch_execute(&format!(
            "INSERT INTO {s}.jobs (stage, body, priority, enqueued_at, visible_at) \
             SELECT (ARRAY['push', 'snapshot'])[1 + g % 2], repeat('x', 300), (g % 2) * 5, g, g \
             FROM generate_series(1, 5000) g; ANALYZE {s}.jobs; SET plan_cache_mode = force_generic_plan; \
             PREPARE claim (BIGINT, TEXT, BIGINT, TEXT[], BIGINT, INT4) AS {claim}",
            s = store.s,
            claim = claim_sql(&store.s)
        ))
        .await
        .expect("a deep queue and the claim prepared");
        let mut plans = Vec::new();
        for (stages, min_priority) in [("{}", 0), ("{push}", 0), ("{snapshot}", 5)] {
            let sql = format!("EXPLAIN EXECUTE claim(99999999999999, 't', 4000, '{stages}', 4, {min_priority})");
            let plan: Vec<String> = c
                .query(&sql, &[])
                .await
                .expect("explain")
                .iter()
                .map(|r| r.get(0))
                .collect();
            plans.push(plan.join("\n"));
        }
        c.batch_execute(&format!("DROP SCHEMA {} CASCADE", store.s))
            .await
            .expect("drop");
        for plan in plans {
            assert!(plan.contains("Index Scan using jobs_claim"), "{plan}");
            assert!(plan.contains("Index Scan using jobs_pkey"), "{plan}");
            // Nothing joined (a nested loop, a hash or merge join), nothing scanned whole.
            for joined in ["Loop", "Join", "Hash", "Seq Scan"] {
                assert!(!plan.contains(joined), "{joined}: {plan}");
            }
        }
    }
}
